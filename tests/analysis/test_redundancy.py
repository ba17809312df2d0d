"""Near-duplicate features inside one dictionary, and the warning they earn in the verdict."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from saeseeds.analysis.app import run_analysis
from saeseeds.analysis.group_stats import GroupPairs
from saeseeds.analysis.pair_metrics import ComputeSettings, compare_pair
from saeseeds.analysis.redundancy import nearest_neighbour_cosines, redundancy
from tests.analysis.conftest import noisy_permuted_copy
from tests.analysis.run_folders import random_directions, unit, write_sweep
from tests.analysis.test_pair_metrics import run

D_IN = 16


def test_nearest_neighbour_is_the_best_other_row_across_blocks():
    directions = random_directions(10, D_IN, seed=0)
    directions[7] = unit(directions[2:3] + 0.05 * random_directions(1, D_IN, seed=1))[0]
    cosines = directions @ directions.T
    np.fill_diagonal(cosines, -np.inf)
    for block_size in (3, 10, 64):  # rows split over blocks, one block, a block larger than n
        nearest = nearest_neighbour_cosines(directions, block_size=block_size)
        np.testing.assert_allclose(nearest, cosines.max(axis=1), rtol=1e-6)
    assert nearest[2] == nearest[7] > 0.99


def group_of(*runs) -> GroupPairs:
    group = GroupPairs(runs=list(runs))
    for run_a, run_b in combinations(runs, 2):
        group.pairs[(run_a.seed, run_b.seed)] = compare_pair(run_a, run_b, ComputeSettings())
    return group


def test_share_counts_live_features_with_a_copy_and_ignores_dead_ones():
    base = random_directions(8, D_IN, seed=3)
    # Rows 0-2 are one direction (3 copies); row 7 copies row 6 but is dead.
    decoder = np.vstack([base[0], base[0], base[0], base[3:6], base[6], base[6]])
    fire = np.array([5, 5, 5, 5, 5, 5, 5, 0])
    group = group_of(run(1, decoder, fire=fire), run(2, base, fire=np.full(8, 5)))
    result = redundancy(group, 0.9, 0.7)
    assert result["per_seed"]["1"] == {
        "n_live": 7,
        "n_distinct": 4,
        "near_duplicate_share": pytest.approx(3 / 7),
        "median_nearest_neighbour": pytest.approx(
            float(np.median(nearest_neighbour_cosines(decoder[:7])))
        ),
    }
    assert result["per_seed"]["2"]["near_duplicate_share"] == 0.0
    assert result["near_duplicate_share"] == pytest.approx(3 / 14)
    one_live = redundancy(group_of(run(1, base[:2], fire=[5, 0])), 0.9, 0.7)["per_seed"]["1"]
    assert one_live["near_duplicate_share"] is None


def test_distinct_features_are_matched_without_their_copies():
    # Seed 1: features 0-3 are one direction (which seed 2 has once), 4-7 seed 2's own features.
    base = random_directions(8, D_IN, seed=5)
    copies = np.vstack([base[0]] * 4 + [base[4:8]])
    other = np.vstack([base[0], random_directions(3, D_IN, seed=6), base[4:8]])
    group = group_of(run(1, copies), run(2, other))
    distinct = redundancy(group, 0.9, 0.7)["distinct"]
    # Distinct: features 4-7 of seed 1 (all matched exactly) and all 8 of seed 2, of which the
    # 3 random ones match seed 1's spare copies at low cosine; seed 2's feature 0 matches a copy.
    pooled = np.concatenate([np.ones(4), np.ones(5), np.zeros(3)])  # shared or not
    assert distinct["shared"] == pytest.approx(pooled.mean())
    assert distinct["decoder_median"] == pytest.approx(1.0, abs=1e-5)


def collapsed(seed: int, n_features: int) -> np.ndarray:
    """Half the features are noisy copies of one direction shared by every seed; the rest are the
    seed's own random directions."""
    rng = np.random.default_rng(seed)
    outlier = np.eye(D_IN, dtype=np.float32)[0]
    copies = unit(outlier + 0.05 * rng.standard_normal((n_features // 2, D_IN)))
    return np.vstack([copies, random_directions(n_features - n_features // 2, D_IN, seed + 100)])


def test_a_collapsed_group_is_flagged_in_summary_and_verdict(tmp_path: Path, analysis_config):
    dictionaries = {(24, seed): collapsed(seed, 24) for seed in (1, 2, 3)}
    base = random_directions(40, D_IN, seed=40)
    dictionaries |= {(40, seed): noisy_permuted_copy(base, seed, 0.3) for seed in (1, 2, 3)}
    sweep = write_sweep(tmp_path / "sweep", dictionaries)
    report_dir = tmp_path / "report"
    run_analysis(analysis_config(str(sweep)), report_dir)

    groups = json.loads((report_dir / "summary.json").read_text())["groups"]
    flagged, clean = groups["sae.n_features=24"], groups["sae.n_features=40"]
    assert flagged["redundancy"]["near_duplicate_share"] >= 0.5
    assert clean["redundancy"]["near_duplicate_share"] < 0.1
    # The copies matched each other; without them the collapsed group has little left.
    distinct = flagged["redundancy"]["distinct"]
    assert distinct["decoder_median"] < flagged["statistics"]["decoder_median"]["value"]
    assert clean["redundancy"]["distinct"]["shared"] > 0.8
    report = (report_dir / "report.md").read_text()
    verdict = report.split("## Verdict")[1].split("\n## ")[0]
    lines = {line.split("**")[1]: line for line in verdict.splitlines() if line.startswith("- **")}
    assert "near-duplicate in their own dictionary" in lines["sae.n_features=24"]
    assert "near-duplicate" not in lines["sae.n_features=40"]
    assert "Near-duplicates inside a dictionary" in report


def test_redundancy_can_be_switched_off(stable_sweep, tmp_path, analysis_config):
    cfg = analysis_config(str(stable_sweep), **{"metrics.redundancy": False})
    outcome = run_analysis(cfg, tmp_path / "report")
    assert all("redundancy" not in group for group in outcome.summary["groups"].values())


def test_a_condition_without_a_trained_control_is_not_called_a_result(
    tmp_path: Path, analysis_config
):
    """Beating random dictionaries alone is no result: the verdict says so and gives the command
    that adds the geometry control to the same sweep folder."""
    base = random_directions(40, D_IN, seed=40)
    dictionaries = {(40, seed): noisy_permuted_copy(base, seed, 0.3) for seed in (1, 2, 3)}
    sweep = write_sweep(tmp_path / "sweep", dictionaries)
    run_analysis(analysis_config(str(sweep)), tmp_path / "report")
    verdict = (tmp_path / "report" / "report.md").read_text().split("## Verdict")[1]
    line = next(line for line in verdict.splitlines() if line.startswith("- **"))
    assert "beats the isotropic null" in line
    assert "No trained control yet" in line
    assert f"data.control=gaussian hydra.sweep.dir={sweep.resolve()}" in line
