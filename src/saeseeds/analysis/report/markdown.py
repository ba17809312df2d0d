"""report.md: the human-readable report.

It opens with one plain sentence per condition saying which controls it beats and by how much,
then each condition beside its controls (difference with a 95% seed-bootstrap interval and a
p-value), the published-style table (one row per group: median matched cosine, full and
live-only, stability at each τ, shared, isotropic chance level), then per group the detailed
statistics with intervals, the functional agreement of matched features, convergence, stability
over training (:mod:`.markdown_sections`), the figures, and example matched pairs with both
features' top-activating contexts side by side (escaped: corpus text never becomes markup, and the
firing token keeps its visible ⟦ ⟧ marker). Skipped runs and groups that could not be
analysed are listed with their reasons. It reads results only; it computes nothing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from saeseeds.analysis.controls import CONTROL_NAMES, control_title, subspace_sentence, verdict
from saeseeds.analysis.examples import marked_text
from saeseeds.analysis.group_analysis import GroupReport
from saeseeds.analysis.grouping import Group
from saeseeds.analysis.loading import SkippedRun
from saeseeds.analysis.report.ground_truth import ground_truth_lines
from saeseeds.analysis.report.markdown_sections import (
    convergence_lines,
    functional_lines,
    overview,
    trajectory_lines,
)
from saeseeds.analysis.report.markdown_sections import number as _number
from saeseeds.analysis.report.markdown_sections import table as _table

FIGURE_TITLES = {
    "median_heatmap": "Median matched cosine, seed × seed",
    "mmcs_heatmap": "MMCS (mean max cosine), seed × seed",
    "shared_heatmap": "Shared fraction, seed × seed",
    "cosine_histograms": "Matched cosines (all and live-only) vs random dictionaries",
    "reappearance_vs_frequency": "Reappearance vs firing frequency",
    "matched_cosine_vs_frequency": "Matched cosine vs firing frequency",
    "overlap_vs_seeds": "Overlap vs number of seeds",
    "beyond_geometry": "Best-match cosine per feature vs the geometry control",
    "trajectory": "Stability over training, beside the geometry control",
    "functional_agreement": "Activation correlation vs decoder cosine of matched features",
}
SIDE_BY_SIDE = (
    ("decoder_median", "median"),
    ("live_decoder_median", "live-only"),
    ("decoder_stability@0.7", "stability@0.7"),
    ("decoder_stability@0.9", "stability@0.9"),
    ("shared", "shared"),
    ("mmcs", "MMCS"),
    ("stable_share", "stable share"),
)
NOT_COMPUTED = "n/a"
"""A statistic that needs an assignment, in a group analysed with argmax matching."""
STATISTIC_NAMES = {"decoder_median": "median", "mmcs": "MMCS"}


def _not_computed(report: GroupReport) -> set[str]:
    return set(report.extras.get("matching", {}).get("not_computed", {}).get("statistics", []))


def _stat(report: GroupReport, metric: str, interval: bool = False) -> str:
    entry = report.statistics.get(metric)
    if entry is None:
        return NOT_COMPUTED if metric in _not_computed(report) else "–"
    text = _number(entry["value"])
    if interval and not math.isnan(entry["ci_low"]):
        text += f" [{_number(entry['ci_low'])}, {_number(entry['ci_high'])}]"
    return text


def published_table(reports: list[GroupReport], thresholds: list[float]) -> list[str]:
    header = ["group", "median matched cosine", "live-only"]
    header += [f"stability@{tau:g}" for tau in thresholds] + ["shared", "isotropic chance"]
    header += ["MMCS", "matching"]
    rows = []
    for report in reports:
        chance = report.extras.get("baseline", {}).get("chance", {}).get("decoder_median")
        chance_text = NOT_COMPUTED if "decoder_median" in _not_computed(report) else _number(chance)
        rows.append(
            [report.label, _stat(report, "decoder_median"), _stat(report, "live_decoder_median")]
            + [_stat(report, f"decoder_stability@{tau:g}") for tau in thresholds]
            + [_stat(report, "shared"), chance_text, _stat(report, "mmcs"), report.matching]
        )
    return _table(header, rows)


def _cell(values: dict[str, Any], name: str, absent: set[str]) -> str:
    return NOT_COMPUTED if name in absent else _number(values.get(name))


def controls_table(reports: list[GroupReport]) -> list[str]:
    """Each condition on one row, each of its controls on the rows below it."""
    header = ["group", "role"] + [title for _, title in SIDE_BY_SIDE]
    header += ["difference [95% CI]", "p-value"]
    rows = []
    for report in reports:
        controls = report.extras.get("controls", {})
        if report.extras.get("role") == "control":
            continue
        absent = _not_computed(report)
        own = {name: report.statistics.get(name, {}).get("value") for name, _ in SIDE_BY_SIDE}
        own["stable_share"] = report.extras.get("reappearance", {}).get("stable_share")
        rows.append(
            [f"**{report.label}**", "condition"]
            + [_cell(own, n, absent) for n, _ in SIDE_BY_SIDE]
            + ["", ""]
        )
        for name in CONTROL_NAMES:
            control = controls.get(name)
            if control is None:
                continue
            low, high = control["difference_ci"]
            values = control["side_by_side"]
            statistic = STATISTIC_NAMES.get(control["statistic"], control["statistic"])
            rows.append(
                [control["label"], control_title(name)]
                + [_cell(values, n, absent) for n, _ in SIDE_BY_SIDE]
                + [
                    f"{statistic} {control['difference']:+.3f} [{low:+.3f}, {high:+.3f}]",
                    _number(control["p_value"]),
                ]
            )
    return _table(header, rows)


def _details(report: GroupReport, thresholds: list[float]) -> list[str]:
    names = ["decoder_median", "decoder_mean", "live_decoder_median", "live_decoder_mean"]
    names += [
        f"{prefix}stability@{tau:g}"
        for prefix in ("decoder_", "live_decoder_")
        for tau in thresholds
    ]
    names += ["encoder_median", "encoder_mean", "shared", "live_shared", "agreement", "pwmcc"]
    names += ["mmcs", "activation_correlation_median"]
    chance = report.extras.get("baseline", {}).get("chance", {})
    rows = [
        [name, _stat(report, name, interval=True), _number(chance.get(name.removeprefix("live_")))]
        for name in names
        if name in report.statistics or name in _not_computed(report)
    ]
    return _table(["metric", "group value [95% seed-bootstrap CI]", "chance"], rows)


def _matching(report: GroupReport) -> list[str]:
    entry = report.extras.get("matching", {})
    if report.matching != "argmax":
        return ["- Matching: Hungarian (one-to-one assignment maximising the total cosine)."]
    reason = (
        f"n_features={report.group.runs[0].n_features} > argmax_above={entry['argmax_above']}"
        if entry.get("requested") == "auto"
        else "matching=argmax"
    )
    absent = entry.get("not_computed", {})
    return [
        f"- Matching: **argmax only** ({reason}): each feature's best partner in the other seed, "
        "with no one-to-one assignment. Reported: MMCS, reappearance, best-match cosines, "
        "subspaces. **Not computed** (they need an assignment; `n/a` in the tables): "
        + ", ".join(
            f"`{name}`" for name in absent.get("statistics", []) + absent.get("results", [])
        )
        + "."
    ]


def _findings(report: GroupReport) -> list[str]:
    extras = report.extras
    lines = []
    if "baseline" in extras:
        baseline = extras["baseline"]
        statistic = STATISTIC_NAMES.get(baseline["statistic"], baseline["statistic"])
        lines.append(
            f"- Monte Carlo p-value of the group {statistic} against {baseline['n_samples']} "
            "groups of random dictionaries (isotropic null, the weakest): "
            f"{_number(baseline['p_value'])} "
            f"(smallest possible: {_number(1 / (baseline['n_samples'] + 1))})"
        )
    if "reappearance" in extras:
        summary = extras["reappearance"]
        rho = summary["spearman_vs_firing_frequency"]["rho"]
        lines.append(
            f"- Reappearance: {summary['stable_share']:.1%} of features stable, "
            f"{summary['unstable_share']:.1%} unstable "
            f"(mean p = {summary['mean_reappearance']:.3f}); "
            f"Spearman ρ with firing frequency {_number(rho)}"
        )
    if "matched_cosine_vs_firing_frequency" in extras:
        rho = extras["matched_cosine_vs_firing_frequency"]["rho"]
        lines.append(f"- Matched cosine vs firing frequency: Spearman ρ = {_number(rho)}")
    if "overlap_vs_seeds" in extras:
        curve = ", ".join(f"m={m}: {v:.3f}" for m, v in extras["overlap_vs_seeds"].items())
        lines.append(f"- Share of latents shared with none of m other seeds: {curve}")
    subspaces = extras.get("subspaces")
    if subspaces and subspaces["mean_overlap"] is not None:
        lines.append(
            f"- Unstable-feature subspace overlap: {subspaces['mean_overlap']:.3f} "
            f"(random expectation r/d_in = {subspaces['mean_random_expectation']:.3f})"
        )
    compared = subspace_sentence(report)
    if compared:
        lines.append(f"- {compared}")
    redundancy = extras.get("redundancy")
    if redundancy and redundancy["near_duplicate_share"] is not None:
        lines.append(
            f"- Near-duplicates inside a dictionary: {redundancy['near_duplicate_share']:.1%} of "
            f"live features have another feature of their own dictionary at decoder cosine ≥ "
            f"{redundancy['threshold']:g} (median nearest-neighbour cosine "
            f"{redundancy['median_nearest_neighbour']:.3f}; mean over seeds)"
            + _distinct_clause(redundancy.get("distinct"))
        )
    return lines


def _distinct_clause(distinct: dict[str, Any] | None) -> str:
    if not distinct or distinct.get("decoder_median") is None:
        return ""
    clause = "; over the distinct features only: median matched cosine "
    clause += f"{distinct['decoder_median']:.3f}"
    if distinct.get("shared") is not None:
        clause += f", shared {distinct['shared']:.3f}"
    return clause


_HTML_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
# Inside a table cell nothing sits at a line start, so these are all that can start markup there.
_MARKDOWN_PUNCTUATION = set("\\`*_[]|~$")


def escape_markdown(text: str) -> str:
    """Corpus text as literal Markdown: HTML's ``&<>`` as entities (no tag can open), Markdown's
    punctuation backslash-escaped (no emphasis, link, code or table cell can start), line breaks as
    spaces."""
    pieces = []
    for character in text.replace("\r", " ").replace("\n", " "):
        if character in _HTML_ENTITIES:
            pieces.append(_HTML_ENTITIES[character])
        elif character in _MARKDOWN_PUNCTUATION:
            pieces.append("\\" + character)
        else:
            pieces.append(character)
    return "".join(pieces)


def _context(example: dict[str, Any]) -> str:
    text = escape_markdown(marked_text(example))
    return f"{text} ({_number(example.get('activation'), 2)})"


def _example(example: dict[str, Any]) -> list[str]:
    lines = [
        f"**{example['kind']}**: seed {example['seed_a']} feature {example['feature_a']} ↔ "
        f"seed {example['seed_b']} feature {example['feature_b']} — decoder cosine "
        f"{example['decoder_cosine']:.3f}, encoder cosine {example['encoder_cosine']:.3f}, "
        f"firing frequency {example['firing_frequency_a']:.2e} / "
        f"{example['firing_frequency_b']:.2e}",
        "",
    ]
    left, right = example["top_examples_a"], example["top_examples_b"]
    if left or right:
        header = [
            f"seed {example['seed_a']} feature {example['feature_a']}",
            f"seed {example['seed_b']} feature {example['feature_b']}",
        ]
        rows = [
            [
                _context(left[i]) if i < len(left) else "",
                _context(right[i]) if i < len(right) else "",
            ]
            for i in range(max(len(left), len(right)))
        ]
        lines += _table(header, rows) + [""]
    else:
        lines += ["(no top_examples.json in these runs: the data had no text)", ""]
    return lines


def matching_line(reports: list[GroupReport]) -> str:
    argmax = [report.label for report in reports if report.matching == "argmax"]
    if not argmax:
        return "Matching: Hungarian (one-to-one assignment) for every group."
    hungarian = len(reports) - len(argmax)
    which = "every group" if not hungarian else ", ".join(f"**{label}**" for label in argmax)
    rest = f"; Hungarian for the other {hungarian}" if hungarian else ""
    return (
        f"Matching: **argmax only** (no one-to-one assignment) for {which}{rest}. Argmax groups "
        "are judged on MMCS (mean max cosine); their matched-cosine statistics are not computed."
    )


def render_report(
    roots: list[Path],
    reports: list[GroupReport],
    not_analysed: list[Group],
    skipped: list[SkippedRun],
    figures: dict[str, dict[str, Path]],
    report_dir: Path,
    thresholds: list[float],
) -> str:
    lines = ["# Seed-stability report", ""]
    lines += [f"Inputs: {', '.join(f'`{root}`' for root in roots)}", ""]
    conditions = [r for r in reports if r.extras.get("role") != "control"]
    lines += ["## Verdict", ""] + [f"- {verdict(report)}" for report in conditions] + [""]
    lines += [matching_line(reports), ""]
    lines += [
        "Each condition is judged against its strongest control: SAEs trained with the same "
        "config and seeds on Gaussian data with the activations' mean and covariance "
        "(`data.control=gaussian`), then on a randomly initialised model (`model=random`), and "
        "only last against random unit-norm dictionaries, which anisotropic activations beat "
        "easily.",
        "",
        "## Conditions and their controls",
        "",
    ]
    lines += controls_table(reports) + [""]
    lines += ["## All groups", ""]
    lines += published_table(reports, thresholds) + [""]
    lines += overview(reports)
    lines += ground_truth_lines(reports)
    if any(report.matching == "argmax" for report in reports):
        lines += [
            f"`{NOT_COMPUTED}`: not computed; the group was analysed with argmax matching (no "
            "one-to-one assignment), see its section.",
            "",
        ]
    if skipped:
        lines += ["## Runs not used", ""]
        lines += _table(
            ["folder", "status", "reason"],
            [[f"`{entry.path}`", entry.status, entry.reason] for entry in skipped],
        ) + [""]
    if not_analysed:
        lines += ["## Groups not analysed", ""]
        lines += [
            f"- **{group.label}** (seeds {group.seeds}): {group.problem}" for group in not_analysed
        ]
        lines += [""]
    for report in reports:
        run = report.group.runs[0]
        lines += [f"## {report.label}", ""]
        lines += [f"> {note}" for note in getattr(report.group, "notes", [])]
        lines += [""] if getattr(report.group, "notes", []) else []
        lines += [
            f"Seeds {report.pairs.seeds}; n_features={run.n_features}, d_in={run.d_in}, "
            f"k={run.cfg.get('k')}, hook `{run.hook_name}`, model `{run.cfg.get('model_name')}`.",
            "",
        ]
        lines += _details(report, thresholds) + [""] + _matching(report) + _findings(report)
        lines += functional_lines(report) + convergence_lines(report.extras.get("convergence"))
        lines += [""] + trajectory_lines(report)
        for name, path in figures.get(report.label, {}).items():
            lines += [f"![{FIGURE_TITLES.get(name, name)}]({path.relative_to(report_dir)})", ""]
        if report.examples:
            lines += ["### Example matched pairs", ""]
            for example in report.examples:
                lines += _example(example)
    for name, path in figures.get("all", {}).items():
        lines += [
            f"## {FIGURE_TITLES.get(name, name)}",
            "",
            f"![{name}]({path.relative_to(report_dir)})",
            "",
        ]
    return "\n".join(lines) + "\n"
