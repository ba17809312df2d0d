"""The token-scaling study's part of the results page: its claims (stability grows with training
tokens beyond geometry; Song et al.'s PW-MCC of 0.80; Paulo & Belrose's token trend), its table
of statistics against tokens and its figure. Reads the study's groups as the analysis wrote them
(PW-MCC is the analysis's ``pwmcc``); judges with :mod:`saeseeds.studies.claims`'s rule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saeseeds.studies import figures
from saeseeds.studies.claims import (
    Claim,
    Finding,
    add_token_findings,
    control_group,
    real,
    verdict,
)
from saeseeds.studies.published import PAULO_BELROSE, SONG
from saeseeds.studies.summaries import Groups, difference, statistic

PWMCC = "pwmcc"
SONG_PWMCC = 0.80
OPEN_QUESTION = "this project's open question (README)"
# Statistic, its name on the page; the first four have seed-bootstrap intervals.
STATISTICS = (
    ("decoder_median", "median matched cosine"),
    (PWMCC, "PW-MCC"),
    ("shared", "shared fraction"),
    ("decoder_stability@0.9", "stability@0.9"),
    ("beyond_geometry_fraction", "beyond-geometry share"),
)


def token_scaling_claims(groups: Groups) -> list[Claim]:
    grows = Claim(
        "tokens_beyond_geometry", "Stability grows with training tokens beyond geometry",
        OPEN_QUESTION, f"decoder_median and {PWMCC}", "most − fewest training tokens",
        "the geometry control's own token difference", 1,
    )  # fmt: skip
    for metric, name in STATISTICS[:2]:
        add_token_findings(groups, grows, metric, f" ({name})")
    shared = Claim(
        "tokens_shared_once", "The shared fraction rises with training tokens (each seen once)",
        PAULO_BELROSE, "shared", "most − fewest training tokens",
        "the geometry control's own token difference", 1,
    )  # fmt: skip
    add_token_findings(groups, shared, "shared")
    return [claim for claim in (grows, pwmcc_claim(groups), shared)
            if claim.findings or claim.note]  # fmt: skip


def pwmcc_claim(
    groups: Groups,
    settings: list[tuple[str, dict | None]] | None = None,
    study: str = "token_scaling",
) -> Claim:
    """Song et al.'s level as a claim: PW-MCC − 0.80 ≥ 0 on the seed-bootstrap interval, per
    setting (name, trained-model group; by default every size and budget of the token-scaling
    study); against the control, the condition's PW-MCC minus its geometry control's."""
    claim = Claim(
        "pwmcc_080", f"Top-K SAEs reach a PW-MCC of {SONG_PWMCC:.2f}", SONG, PWMCC,
        f"PW-MCC − {SONG_PWMCC:.2f}", "the geometry control's PW-MCC (condition − control)", 1,
    )  # fmt: skip
    if settings is None:
        settings = [
            (f"{n_features} features, {n_tokens:,} tokens",
             real(groups, sae__n_features=n_features, data__n_tokens=n_tokens))
            for n_tokens in groups.values("data.n_tokens")
            for n_features in groups.values("sae.n_features")
        ]  # fmt: skip
    for setting, group in settings:
        entry = statistic(group, PWMCC)
        if entry["value"] is None:
            continue
        interval = [None if v is None else v - SONG_PWMCC
                    for v in (entry["ci_low"], entry["ci_high"])]  # fmt: skip
        found = Finding(
            setting, entry["value"], SONG_PWMCC, entry["value"] - SONG_PWMCC, interval,
            verdict(interval, 1),
        )  # fmt: skip
        control = control_group(groups, group, "gaussian")
        if statistic(control, PWMCC)["value"] is not None:
            beyond = difference(group, control, PWMCC)
            found.control = {
                "name": "gaussian (condition − control)",
                "difference": beyond["difference"],
                "interval": list(beyond["difference_ci"]),
                "verdict": verdict(beyond["difference_ci"], 1),
            }
        claim.findings.append(found)
    if not claim.findings and groups.entries:
        claim.note = (
            "No group has PW-MCC (`pwmcc`) in its summary.json: an analysis older than PW-MCC. "
            f"Re-run `python scripts/run_studies.py --only {study} --stages analyze,page`."
        )
    return claim


def _cell(group: dict | None, metric: str, fmt: Any, fmt_ci: Any) -> str:
    entry = statistic(group, metric)
    if entry["value"] is None:
        return "n/a"
    if entry["ci_low"] is None:
        return fmt(entry["value"])
    return f"{fmt(entry['value'])} {fmt_ci([entry['ci_low'], entry['ci_high']])}"


def token_scaling_section(study: dict[str, Any], figure: Path | None, page: Path) -> list[str]:
    from saeseeds.studies.page import _convergence, _relative, _seeds, fmt, fmt_ci

    groups: Groups = study["groups"]
    sizes = groups.values("sae.n_features")
    lines = [
        "## 5. Stability against training tokens, each seen once", "",
        "Top-K SAEs with k = "
        f"{', '.join(str(k) for k in groups.values('sae.k'))} on layer "
        f"{', '.join(str(layer) for layer in groups.values('hook.layer'))} of the embedded model, "
        "on the Python standard library's source (`data=pysource`), at nested budgets (each "
        "budget's tokens are the first ones of the next) and **one epoch: every token is seen "
        f"once**; {_seeds(groups)} seeds that share one batch order (`order_seed=0`). Each cell: "
        "the trained model [seed-bootstrap 95% CI]; below it, its geometry control. PW-MCC is "
        "Song et al.'s mean |cosine| of the Hungarian-matched decoder directions; the "
        "beyond-geometry share (features whose best-match cosine exceeds the geometry control's "
        "95th percentile) is one pooled share, without an interval.", "",
        "| statistic | training tokens | " + " | ".join(f"{n} features" for n in sizes) + " |",
        "| --- | --- |" + " --- |" * len(sizes),
    ]  # fmt: skip
    for metric, name in STATISTICS:
        for n_tokens in groups.values("data.n_tokens"):
            row = f"| {name} | {n_tokens:,} |"
            for n_features in sizes:
                group = real(groups, sae__n_features=n_features, data__n_tokens=n_tokens)
                control = control_group(groups, group, "gaussian")
                shown = _cell(group, metric, fmt, fmt_ci)
                if metric != "beyond_geometry_fraction":
                    shown += f"<br>control: {_cell(control, metric, fmt, fmt_ci)}"
                row += f" {shown} |"
            lines.append(row)
    if figure is not None:
        lines += ["", f"![Stability against training tokens]({_relative(figure, page)})"]
    return lines + _convergence(groups)


def token_scaling_figure(groups: Groups, path: Path) -> Path | None:
    return figures.token_figure(groups, STATISTICS, path)
