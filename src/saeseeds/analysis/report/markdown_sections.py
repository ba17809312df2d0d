"""report.md's sections on stability over training (the trajectory over the snapshots) and on the
functional agreement of matched features: the table across conditions, and per group its
trajectory table, its lead and convergence sentences and its agreement lines. Each says plainly
when the runs lack what it needs (no snapshots, no held-out codes). It reads results only.
"""

from __future__ import annotations

import math
from typing import Any

STATISTIC_NAMES = {"decoder_median": "median matched cosine", "mmcs": "MMCS"}


def number(value: Any, digits: int = 3) -> str:
    """``value`` to ``digits`` decimals; "–" for None, NaN and infinities."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def p_text(value: Any) -> str:
    """A p-value for a sentence: "p = 0.012", "p < 0.001" (never "p = 0.000"), "p = –"."""
    if isinstance(value, int | float) and math.isfinite(value) and value < 0.001:
        return "p < 0.001"
    return f"p = {number(value)}"


def with_interval(entry: dict[str, float] | None, digits: int = 3) -> str:
    if not entry:
        return "–"
    text = number(entry.get("value"), digits)
    low, high = entry.get("ci_low"), entry.get("ci_high")
    if low is not None and high is not None and math.isfinite(low) and math.isfinite(high):
        text += f" [{number(low, digits)}, {number(high, digits)}]"
    return text


def signed_interval(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "–"
    low, high = entry["difference_ci"]
    text = f"{entry['difference']:+.3f}"
    if low is not None and high is not None and math.isfinite(low) and math.isfinite(high):
        text += f" [{low:+.3f}, {high:+.3f}]"
    return text


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _percent(fraction: float) -> str:
    return f"{fraction:.0%}"


def overview_table(reports: list[Any]) -> tuple[list[str], list[list[str]], list[str]]:
    """Each condition with a geometry control, at each fraction of training: its headline
    statistic and the control's, the lead with its interval and the beyond-geometry share, as
    (header, rows, one lead sentence per condition); no rows when no condition has a trajectory
    beside a control. report.md and report.html show it."""
    by_label = {report.label: report for report in reports}
    rows, sentences, statistic = [], [], "decoder_median"
    for report in reports:
        trajectory = report.extras.get("trajectory") or {}
        led = [row for row in trajectory.get("rows", []) if "lead" in row]
        if not led:
            continue
        statistic = trajectory["statistic"]
        control = by_label[led[0]["lead"]["control"]].extras["trajectory"]["rows"]
        controls = {row["fraction"]: row for row in control}
        for row in led:
            rows.append(
                [
                    report.label,
                    _percent(row["fraction"]),
                    str(row.get("step") if row.get("step") is not None else "–"),
                    with_interval(row.get(statistic)),
                    with_interval(controls[row["fraction"]].get(statistic)),
                    signed_interval(row["lead"]),
                    number(row.get("beyond_geometry_fraction")),
                ]
            )
        if trajectory.get("lead_change"):
            sentences.append(f"**{report.label}**: {trajectory['lead_change']['sentence']}")
    name = STATISTIC_NAMES.get(statistic, statistic)
    header = ["condition", "training", "step", f"{name} [95% CI]", "geometry control"]
    header += ["lead [95% CI]", "beyond geometry"]
    return header, rows, sentences


OVERVIEW_NOTE = (
    "Each condition and its geometry control at each snapshot of training and at the end "
    "(seed-bootstrap intervals; the lead's is the jackknife-t interval of the difference)."
)


def overview(reports: list[Any]) -> list[str]:
    """report.md's "Stability over training" section; empty without a row."""
    header, rows, sentences = overview_table(reports)
    if not rows:
        return []
    lines = ["## Stability over training", "", OVERVIEW_NOTE, "", *table(header, rows), ""]
    return lines + [f"- {sentence}" for sentence in sentences] + [""]


def trajectory_lines(report: Any) -> list[str]:
    """The group's trajectory table (or why it has none) and its notes."""
    trajectory = report.extras.get("trajectory")
    if trajectory is None:
        return []
    if "unavailable" in trajectory:
        return [f"- Stability over training: not available; {trajectory['unavailable']}.", ""]
    statistic, stability = trajectory["statistic"], trajectory["stability_statistic"]
    header = ["training", "step", "held-out FVU", STATISTIC_NAMES.get(statistic, statistic)]
    header += ["PW-MCC", stability.removeprefix("decoder_"), "shared"]
    # Only a condition with a geometry control has a beyond-geometry share.
    beyond = any("beyond_geometry_fraction" in row for row in trajectory["rows"])
    header += ["beyond geometry"] if beyond else []
    rows = [
        [
            _percent(row["fraction"]),
            str(row.get("step") if row.get("step") is not None else "–"),
            number(row.get("heldout_fvu")),
            with_interval(row.get(statistic)),
            with_interval(row.get("pwmcc")),
            with_interval(row.get(stability)),
            with_interval(row.get("shared")),
        ]
        + ([number(row.get("beyond_geometry_fraction"))] if beyond else [])
        for row in trajectory["rows"]
    ]
    lines = ["### Stability over training", "", *table(header, rows), ""]
    if trajectory.get("lead_change"):
        lines += [trajectory["lead_change"]["sentence"], ""]
    cost = trajectory.get("cost")
    if cost:
        lines += [
            f"Snapshots cost each run {cost['bytes'] / 1e6:.2f} MB on disk ({cost['count']:g} "
            f"files) and {cost['seconds']:.2f} s to write ({cost['share_of_fit']:.1%} of its "
            "fit time).",
            "",
        ]
    lines += [f"> {note}" for note in trajectory.get("notes", [])]
    return lines + ([""] if trajectory.get("notes") else [])


def convergence_lines(entry: dict[str, Any] | None) -> list[str]:
    """The FVU criterion per seed and the stability criterion (:mod:`convergence`)."""
    if not entry:
        return ["- Convergence: no held-out FVU curve and no snapshots in these runs."]
    lines = []
    if "last_quarter_relative_fvu_drop" in entry:
        changes = entry["last_quarter_relative_fvu_drop"]
        drops = ", ".join(
            f"seed {seed}: {'fell' if drop >= 0 else 'rose'} {abs(drop):.1%}"
            for seed, drop in changes.items()
        )
        if entry["fvu_still_improving"]:
            state = "**still improving** — train longer before trusting these numbers"
        elif all(drop < 0 for drop in changes.values()):
            state = "not improving by this criterion, but **getting worse**, not levelled off"
        else:
            state = "converged by this criterion"
        lines.append(
            f"- Convergence: over the last quarter of training the held-out FVU {drops}; "
            f"{state} (threshold {entry['threshold']:.0%})."
        )
    stability = entry.get("stability")
    if stability:
        name = STATISTIC_NAMES.get(stability["statistic"], stability["statistic"])
        state = "**still rising**" if stability["still_rising"] else "not rising beyond its margin"
        lines.append(
            f"- Stability: the {name} went from {number(stability['value_from'])} at "
            f"{_percent(stability['from_fraction'])} of training to "
            f"{number(stability['value_to'])} at the end (rise {stability['rise']:+.3f}, noise "
            f"margin {stability['margin']:.3f}); {state}."
        )
    return lines


def functional_lines(report: Any) -> list[str]:
    """The group's functional agreement (or why it has none), beside its control's."""
    entry = report.extras.get("functional")
    if entry is None:
        return []
    if "unavailable" in entry:
        return [f"- Functional agreement: not measured; {entry['unavailable']}."]
    rho = entry["spearman_vs_decoder_cosine"]["rho"]
    lines = [
        f"- Functional agreement: Pearson correlation of matched features' activations on "
        f"{entry['n_tokens']} shared held-out tokens, median {with_interval(entry['median'])} "
        f"(random partners: {number(entry['random_partner_median'])}; Spearman ρ with the "
        f"matched decoder cosine {number(rho)}; "
        f"{entry['undefined_share']:.1%} of matched pairs undefined: a latent constant there)."
    ]
    if "stable" in entry:
        stable, unstable = entry["stable"], entry["unstable"]
        lines.append(
            f"- Activation correlation of stable features {number(stable['median'])} "
            f"({stable['n']} matched pairs) vs unstable ones {number(unstable['median'])} "
            f"({unstable['n']})."
        )
    control = entry.get("control")
    if control and "unavailable" in control:
        lines.append(
            f"- Its geometry control ({control['label']}) has no functional agreement: "
            f"{control['unavailable']}."
        )
    elif control:
        lines.append(
            f"- Geometry control ({control['label']}): median {number(control['median'])}; "
            f"difference {signed_interval(control)}, {p_text(control['p_value'])} "
            f"(its stable features {number((control.get('stable') or {}).get('median'))}, "
            f"unstable {number((control.get('unstable') or {}).get('median'))})."
        )
    lines += [f"  - {note}" for note in entry.get("notes", [])]
    return lines
