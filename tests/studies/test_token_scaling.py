"""The token-scaling study's verdicts and table, on constructed groups whose pair values are known:
a trend the geometry control shows as much is "not beyond geometry"; Song et al.'s 0.80 is judged
on the PW-MCC interval and against the control's PW-MCC.

The study end to end (train, analyse, page) is
``test_token_scaling_study_end_to_end`` (slow: ``pytest -m slow tests/studies``)."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import pytest

from saeseeds.studies.claims import (
    INCONCLUSIVE,
    NOT_BEYOND_GEOMETRY,
    NOT_REPRODUCED,
    REPRODUCED,
)
from saeseeds.studies.summaries import Groups
from saeseeds.studies.token_scaling import token_scaling_claims, token_scaling_section
from tests.studies.tiny_study import run_tiny_study

SEEDS = [1, 2, 3]
SIZES, BUDGETS = (64, 256), (2048, 8192)


def group(label: str, values: dict[str, float], control: str | None) -> dict:
    """A group whose every seed pair has ``values`` plus a small spread (so intervals exist)."""
    pairs = [
        {"seed_a": a, "seed_b": b, **{k: v + 0.002 * (a + b) for k, v in values.items()}}
        for a, b in combinations(SEEDS, 2)
    ]
    statistics = {k: {"value": v + 0.006, "ci_low": v, "ci_high": v + 0.01}
                  for k, v in values.items()}  # fmt: skip
    controls = {"gaussian": {"label": control}} if control else {}
    return {"label": label, "seeds": SEEDS, "pairs": pairs, "statistics": statistics,
            "controls": controls}  # fmt: skip


def constructed_groups(real_slope: float, control_slope: float, pwmcc: float) -> Groups:
    """Median cosine and shared rising with tokens at the given slopes, for the trained model and
    its geometry control; PW-MCC at ``pwmcc`` (0.1 above the control's)."""
    groups = Groups({"groups": {}})
    for n_features in SIZES:
        for n_tokens in BUDGETS:
            step = BUDGETS.index(n_tokens)
            for control, slope in (("none", real_slope), ("gaussian", control_slope)):
                label = f"{n_features}-{n_tokens}-{control}"
                values = {
                    "decoder_median": 0.2 + slope * step,
                    "shared": 0.01 + slope * step,
                    "pwmcc": pwmcc + slope * step - (0.1 if control == "gaussian" else 0.0),
                }
                partner = None if control == "gaussian" else f"{n_features}-{n_tokens}-gaussian"
                groups.entries[label] = group(label, values, partner)
                groups.conditions[label] = {
                    "sae.n_features": n_features, "data.n_tokens": n_tokens, "sae.k": 8,
                    "hook.layer": 6, "data.control": control, "model.init": "pretrained",
                }  # fmt: skip
    return groups


def by_key(groups: Groups) -> dict:
    return {claim.key: claim for claim in token_scaling_claims(groups)}


def test_a_token_trend_the_control_shares_is_not_beyond_geometry():
    claims = by_key(constructed_groups(real_slope=0.05, control_slope=0.05, pwmcc=0.5))
    grows = claims["tokens_beyond_geometry"]
    assert len(grows.findings) == 2 * 2  # sizes x {median cosine, PW-MCC}
    assert grows.raw_verdict == REPRODUCED and grows.verdict == NOT_BEYOND_GEOMETRY
    assert claims["tokens_shared_once"].verdict == NOT_BEYOND_GEOMETRY
    # Twice the control's slope: beyond geometry.
    claims = by_key(constructed_groups(real_slope=0.1, control_slope=0.05, pwmcc=0.5))
    assert claims["tokens_beyond_geometry"].verdict == REPRODUCED


def test_a_budget_run_for_one_size_only_leaves_the_other_sizes_trend_in_the_verdict():
    """The largest budget may have been trained for the small dictionary only: each size is
    judged between its own fewest and most tokens."""
    groups = constructed_groups(real_slope=0.1, control_slope=0.05, pwmcc=0.5)
    step = BUDGETS[-1] * 4
    for control, slope in (("none", 0.1), ("gaussian", 0.05)):
        label = f"{SIZES[0]}-{step}-{control}"
        values = {"decoder_median": 0.2 + 2 * slope, "shared": 0.01 + 2 * slope,
                  "pwmcc": 0.5 + 2 * slope - (0.1 if control == "gaussian" else 0.0)}  # fmt: skip
        partner = None if control == "gaussian" else f"{SIZES[0]}-{step}-gaussian"
        groups.entries[label] = group(label, values, partner)
        groups.conditions[label] = {**groups.conditions[f"{SIZES[0]}-{BUDGETS[0]}-{control}"],
                                    "data.n_tokens": step}  # fmt: skip
    settings = [f.setting for f in by_key(groups)["tokens_beyond_geometry"].findings]
    assert len(settings) == 2 * 2
    assert f"{SIZES[0]} features, {step:,} − {BUDGETS[0]:,} tokens (PW-MCC)" in settings
    assert f"{SIZES[1]} features, {BUDGETS[-1]:,} − {BUDGETS[0]:,} tokens (PW-MCC)" in settings


def test_song_et_al_pwmcc_is_judged_on_its_interval_and_against_the_control():
    below = by_key(constructed_groups(0.05, 0.05, pwmcc=0.5))["pwmcc_080"]
    assert len(below.findings) == len(SIZES) * len(BUDGETS)
    assert below.verdict == NOT_REPRODUCED
    above = by_key(constructed_groups(0.0, 0.0, pwmcc=0.85))["pwmcc_080"]
    assert above.verdict == REPRODUCED  # above 0.80, and 0.1 above the control in every setting
    assert all(f.control["verdict"] == REPRODUCED for f in above.findings)


def test_an_analysis_without_pwmcc_says_how_to_get_it():
    groups = constructed_groups(0.05, 0.05, pwmcc=0.5)
    for entry in groups.entries.values():
        entry["statistics"].pop("pwmcc")
    claim = by_key(groups)["pwmcc_080"]
    assert claim.verdict == INCONCLUSIVE and not claim.findings
    assert "--only token_scaling --stages analyze,page" in claim.note


def test_the_section_shows_condition_and_control_with_intervals(tmp_path):
    study = {"groups": constructed_groups(0.05, 0.05, pwmcc=0.5)}
    lines = token_scaling_section(study, None, tmp_path / "results.md")
    text = "\n".join(lines)
    assert "seen once" in text
    row = next(line for line in lines if line.startswith("| PW-MCC | 8,192 |"))
    # 64 features at the larger budget: 0.55 [0.55, 0.56], its control 0.1 lower.
    assert "0.556 [0.550, 0.560]<br>control: 0.456 [0.450, 0.460]" in row


@pytest.mark.slow
def test_token_scaling_study_end_to_end(tmp_path):
    """--tiny --only token_scaling on synthetic data: 3 budgets x 2 sizes x 2 kinds, 3 seeds per
    job; the page gets the section, its verdicts and the figure, with the analysis's PW-MCC (at
    least the mean signed matched cosine of the same matching)."""
    result, out = run_tiny_study(tmp_path, "token_scaling", "sae.n_features=16,32", "sae.k=2",
                                 "sae.lr=0.01", "sae.warmup_steps=2")  # fmt: skip
    runs = sorted((out / "token_scaling").glob("sweep/*/COMPLETE"))
    assert len(runs) == 3 * 2 * 2 * 3
    page = (out / "page" / "results.md").read_text()
    assert "## 5. Stability against training tokens, each seen once" in page
    for text in (
        "Stability grows with training tokens beyond geometry",
        "Top-K SAEs reach a PW-MCC of 0.80",
        "rises with training tokens (each seen",
    ):
        assert text in page  # fmt: skip
    assert (out / "page" / "results_token_scaling.png").stat().st_size > 1000
    # PW-MCC is the analysis's, on the page for every trained-model group.
    summary = json.loads((out / "token_scaling" / "analysis" / "summary.json").read_text())
    for entry in summary["groups"].values():
        for pair in entry["pairs"]:
            assert pair["decoder_mean"] - 1e-6 <= pair["pwmcc"] <= 1.0
    assert page.count("| PW-MCC |") == 3 and "No group has PW-MCC" not in page
    timings = json.loads(Path(out / "token_scaling" / "timings.json").read_text())
    assert timings["train"] > 0 and "token_scaling:" in result.stdout
