"""The stability trajectory on constructed snapshots whose answer is known: a row per fraction,
the lead over the geometry control growing, flat or shrinking as built, stability still rising
flagged, and folders without snapshots stated, not crashed on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from saeseeds.analysis.app import run_analysis
from saeseeds.analysis.group_stats import change_of_groups, jackknife_se
from saeseeds.analysis.trajectory import lead_sentence
from tests.analysis.run_folders import (
    hydra_config,
    random_directions,
    unit,
    write_run_folder,
    write_snapshots,
)
from tests.helpers import offline_wandb_run

N_FEATURES, D_IN, SEEDS = 24, 16, (1, 2, 3, 4)
FRACTIONS = (0.25, 0.5, 0.75)
# Share of each seed's features that are noisy copies of one common dictionary, by fraction.
SHARES = {
    "growing": {0.25: 0.1, 0.5: 0.2, 0.75: 0.3, 1.0: 0.9},
    "shrinking": {0.25: 0.9, 0.5: 0.9, 0.75: 0.5, 1.0: 0.2},
}
COMMON = random_directions(N_FEATURES, D_IN, seed=7)


def dictionary(share: float, seed: int, salt: int) -> np.ndarray:
    """``share`` of the rows are noisy copies of the common dictionary, the rest random."""
    shared = int(round(share * N_FEATURES))
    rng = np.random.default_rng([seed, salt])
    copies = unit(COMMON[:shared] + 0.05 * rng.standard_normal((shared, D_IN)) / np.sqrt(D_IN))
    own = random_directions(N_FEATURES - shared, D_IN, seed=1000 * salt + seed)
    return np.vstack([copies, own])[rng.permutation(N_FEATURES)]


def write_condition(sweep: Path, shares: dict[float, float] | None, snapshots: bool = True):
    """A condition (``shares`` by fraction) and its geometry control (random dictionaries)."""
    for seed in SEEDS:
        for control in ("none", "gaussian"):
            by_fraction = {
                f: dictionary(
                    shares[f] if shares and control == "none" else 0.0, seed, int(f * 100)
                )
                for f in (*FRACTIONS, 1.0)
            }
            folder = write_run_folder(
                sweep / f"data.control={control},seed={seed}", by_fraction[1.0], seed=seed,
                config=hydra_config(N_FEATURES, D_IN, 4, seed, data__control=control),
            )  # fmt: skip
            metrics = json.loads((folder / "metrics.json").read_text())
            (folder / "metrics.json").write_text(json.dumps({**metrics, "steps": 100}))
            if snapshots:
                write_snapshots(folder, {f: by_fraction[f] for f in FRACTIONS})
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    return sweep


def analyse(sweep: Path, tmp_path: Path, analysis_config, **changes) -> tuple[dict, str]:
    cfg = analysis_config(
        str(sweep), **{"metrics.baseline": False, "metrics.subspaces": False,
                       "metrics.redundancy": False, **changes},
    )  # fmt: skip
    outcome = run_analysis(cfg, tmp_path / "report")
    groups = outcome.summary["groups"]
    return groups, (tmp_path / "report" / "report.md").read_text()


@pytest.mark.parametrize("trend", ["growing", "shrinking"])
def test_the_lead_over_the_geometry_control_follows_the_construction(
    tmp_path, analysis_config, trend
):
    groups, report = analyse(write_condition(tmp_path / "sweep", SHARES[trend]), tmp_path,
                             analysis_config)  # fmt: skip
    condition, control = groups["data.control=none"], groups["data.control=gaussian"]
    rows = condition["trajectory"]["rows"]
    assert [row["fraction"] for row in rows] == [0.25, 0.5, 0.75, 1.0]
    assert [row["step"] for row in rows] == [25, 50, 75, 100]
    assert [row["fraction"] for row in control["trajectory"]["rows"]] == [0.25, 0.5, 0.75, 1.0]
    # At each point the lead is the difference of the two groups' medians at that point.
    for row, other in zip(rows, control["trajectory"]["rows"], strict=True):
        median, control_median = row["decoder_median"]["value"], other["decoder_median"]["value"]
        assert row["lead"]["difference"] == pytest.approx(median - control_median)
        assert 0.0 <= row["beyond_geometry_fraction"] <= 1.0
        assert set(row) >= {"pwmcc", "shared", "decoder_stability@0.9", "heldout_fvu"}
    # The final point is the final weights' own statistics.
    assert rows[-1]["decoder_median"] == condition["statistics"]["decoder_median"]
    # More shared features, more reproduced beyond geometry.
    beyond = [row["beyond_geometry_fraction"] for row in rows]
    assert (beyond[-1] > beyond[1]) == (trend == "growing")

    change = condition["trajectory"]["lead_change"]
    assert change["trend"] == trend and change["from_fraction"] == 0.5
    assert change["change"] == pytest.approx(change["lead_to"] - change["lead_from"])
    sentence = f"Its lead over the geometry control is {trend} over the last half of training"
    assert sentence in change["sentence"]
    verdict = report.split("## Verdict\n\n- ")[1].splitlines()[0]
    assert sentence in verdict
    assert "## Stability over training" in report and "### Stability over training" in report
    rising = condition["convergence"]["stability"]
    assert rising["from_fraction"] == 0.75 and rising["still_rising"] == (trend == "growing")
    assert ("Its stability was still rising" in verdict) == (trend == "growing")
    assert (tmp_path / "report" / condition["figures"]["trajectory"]).is_file()
    page = (tmp_path / "report" / "report.html").read_text()
    section = page.split('<section id="over-training">')[1].split("</section>")[0]
    assert section.count("<tr>") == 1 + 4 and sentence in section  # header, 4 points


def test_a_lead_that_does_not_move_is_flat(tmp_path, analysis_config):
    """The condition at every point is the same dictionaries as at the end: no change at all."""
    sweep = write_condition(tmp_path / "sweep", {f: 0.6 for f in (*FRACTIONS, 1.0)})
    for folder in sweep.glob("data.control=*"):
        final = (folder / "sae_weights.safetensors").read_bytes()
        for fraction in FRACTIONS:
            (folder / "snapshots" / f"fraction={fraction:g}.safetensors").write_bytes(final)
    # With the offline W&B analysis run: the trajectory is logged as a table and the change.
    offline = {"logger.enabled": True, "logger.mode": "offline"}
    groups, _ = analyse(sweep, tmp_path, analysis_config, **offline)
    change = groups["data.control=none"]["trajectory"]["lead_change"]
    assert change["change"] == pytest.approx(0.0, abs=1e-12) and change["trend"] == "flat"
    assert "is flat" in change["sentence"]
    assert not groups["data.control=none"]["convergence"]["stability"]["still_rising"]
    (run_folder,) = (tmp_path / "report" / "wandb").glob("offline-run-*")
    logged = offline_wandb_run(run_folder)
    assert "trajectory/_type" in logged["history_keys"]
    assert logged["summary"]["data.control=none/trajectory/lead_change"] == pytest.approx(0.0)


def test_without_snapshots_the_report_says_so(tmp_path, analysis_config):
    groups, report = analyse(write_condition(tmp_path / "sweep", None, snapshots=False), tmp_path,
                             analysis_config)  # fmt: skip
    for group in groups.values():
        assert "no snapshots" in group["trajectory"]["unavailable"]
        assert [row["fraction"] for row in group["trajectory"]["rows"]] == [1.0]
        assert "stability" not in group["convergence"]
    assert "- Stability over training: not available; these runs have no snapshots" in report
    assert "## Stability over training" not in report
    assert 'id="over-training"' not in (tmp_path / "report" / "report.html").read_text()


def test_paired_change_cancels_what_the_two_points_share():
    """The same pair values shifted by a constant at the later point: the change is that constant
    with no uncertainty, although each point alone has a wide jackknife interval."""
    rng = np.random.default_rng(0)
    early = rng.uniform(0.2, 0.8, size=(5, 5))
    early = np.triu(early, 1) + np.triu(early, 1).T
    np.fill_diagonal(early, np.nan)
    late = early + 0.1
    change = change_of_groups([late], [early], [1], "decoder_mean", 0.95)
    assert change["difference"] == pytest.approx(0.1)
    assert change["standard_error"] == pytest.approx(0.0, abs=1e-12)
    assert jackknife_se(early, "decoder_mean") > 0.01


@pytest.mark.parametrize(
    ("leads", "trend", "opening"),
    [
        ([0.02, 0.05], "growing", "Its lead over the geometry control is growing"),
        ([-0.05, -0.03], "growing", "It trails the geometry control, and the gap is narrowing"),
        ([-0.03, -0.05], "shrinking", "It trails the geometry control, and the gap is widening"),
        ([-0.03, -0.03], "flat", "It trails the geometry control, and the gap holds"),
        (
            [0.01, -0.02],
            "shrinking",
            "Its difference from the geometry control (condition − control) fell",
        ),
    ],
)
def test_the_lead_sentence_fits_the_sign_of_the_lead(leads, trend, opening):
    change = {"difference": leads[1] - leads[0], "difference_ci": (-0.1, 0.1)}
    sentence = lead_sentence(trend, 0.5, leads, change)
    assert sentence.startswith(opening) and " over the last half of training: " in sentence
    assert f"{leads[0]:+.3f} at 50% of training, {leads[1]:+.3f} at the end" in sentence
    assert ("lead" in sentence) == (min(leads) >= 0)
