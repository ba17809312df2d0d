"""Reappearance, overlap vs number of seeds and unstable subspaces on constructed seeds."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest

from saeseeds.analysis.group_stats import GroupPairs
from saeseeds.analysis.pair_metrics import ComputeSettings, compare_pair, pair_statistics
from saeseeds.analysis.reappearance import (
    overlap_vs_seeds,
    reappearance_by_seed,
    reappearance_summary,
)
from saeseeds.analysis.subspaces import (
    projection_overlap,
    top_subspace,
    unstable_subspace_overlap,
)
from tests.analysis.run_folders import random_directions
from tests.analysis.test_pair_metrics import run

BASIS = np.eye(32, dtype=np.float32)
# Features 0-3 are in every seed; feature 4 in seeds 1 and 2 only; feature 5 differs everywhere.
ROWS_BY_SEED = {1: [0, 1, 2, 3, 4, 5], 2: [3, 2, 1, 0, 4, 6], 3: [0, 1, 2, 3, 10, 7]}


def constructed_group() -> GroupPairs:
    group = GroupPairs(runs=[run(seed, BASIS[rows]) for seed, rows in ROWS_BY_SEED.items()])
    for run_a, run_b in combinations(group.runs, 2):
        pair = compare_pair(run_a, run_b, ComputeSettings(block_size=4))
        group.pairs[(run_a.seed, run_b.seed)] = pair
        group.statistics[(run_a.seed, run_b.seed)] = pair_statistics(pair, [0.7], 0.7)
    return group


def test_reappearance_counts_the_seeds_where_a_feature_has_a_close_match():
    group = constructed_group()
    reappearance = reappearance_by_seed(group, threshold=0.7)
    np.testing.assert_allclose(reappearance[1], [1, 1, 1, 1, 0.5, 0])
    np.testing.assert_allclose(reappearance[2], [1, 1, 1, 1, 0.5, 0])
    np.testing.assert_allclose(reappearance[3], [1, 1, 1, 1, 0, 0])
    summary = reappearance_summary(group, reappearance, epsilon=0.05)
    assert summary["stable_share"] == pytest.approx(12 / 18)
    assert summary["unstable_share"] == pytest.approx(4 / 18)
    assert summary["distribution"] == {"0": 4, "0.5": 2, "1": 12}


def test_overlap_vs_seeds_counts_latents_shared_with_none_of_m_seeds():
    curve = overlap_vs_seeds(constructed_group(), threshold=0.7)
    # Base seed 1: not shared with seed 2 -> {5}, with 3 -> {4, 5}, with neither -> {5}.
    expected_m1 = np.mean([(1 + 2) / 2 / 6, (1 + 2) / 2 / 6, (2 + 2) / 2 / 6])
    expected_m2 = np.mean([1 / 6, 1 / 6, 2 / 6])
    assert curve == {1: pytest.approx(expected_m1), 2: pytest.approx(expected_m2)}


def test_subspace_overlap_is_one_for_the_same_plane_and_r_over_d_for_random_ones():
    plane = np.stack([BASIS[20], BASIS[21]])
    turned = np.stack([BASIS[20] + BASIS[21], BASIS[20] - BASIS[21]]) / np.sqrt(2)
    assert projection_overlap(top_subspace(plane, 2), top_subspace(turned, 2)) == pytest.approx(1)
    overlaps = [
        projection_overlap(
            top_subspace(random_directions(8, 64, seed), 8),
            top_subspace(random_directions(8, 64, seed + 1000), 8),
        )
        for seed in range(100)
    ]
    assert np.mean(overlaps) == pytest.approx(8 / 64, rel=0.15)


def test_unstable_subspaces_of_the_constructed_group_are_orthogonal():
    group = constructed_group()
    unstable = {seed: p <= 0.05 for seed, p in reappearance_by_seed(group, 0.7).items()}
    result = unstable_subspace_overlap(group, unstable, max_rank=4)
    assert result["n_unstable_by_seed"] == {"1": 1, "2": 1, "3": 2}
    assert [pair["rank"] for pair in result["pairs"]] == [1, 1, 1]
    assert result["mean_overlap"] == pytest.approx(0.0, abs=1e-12)
    assert result["mean_random_expectation"] == pytest.approx(1 / 32)
