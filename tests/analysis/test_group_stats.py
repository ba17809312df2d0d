"""Group values over seed pairs and their seed-bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest

from saeseeds.analysis.group_stats import (
    GroupPairs,
    aggregate,
    bootstrap_interval,
    group_statistics,
    spearman,
)
from tests.analysis.test_pair_metrics import run


def group_with(values: dict[tuple[int, int], float]) -> GroupPairs:
    seeds = sorted({seed for pair in values for seed in pair})
    group = GroupPairs(runs=[run(seed, np.eye(2)) for seed in seeds])
    group.statistics = {
        pair: {"decoder_median": value, "decoder_stability@0.7": value / 2}
        for pair, value in values.items()
    }
    return group


def test_median_metrics_take_the_median_of_pair_medians_and_others_the_mean():
    values = np.array([0.2, 0.9, 0.5, 0.6])
    assert aggregate(values, "decoder_median") == pytest.approx(0.55)
    assert aggregate(values, "decoder_stability@0.7") == pytest.approx(0.55)
    assert aggregate(np.array([0.1, 0.1, 1.0]), "shared") == pytest.approx(0.4)
    assert aggregate(np.array([0.1, 0.1, 1.0]), "decoder_median") == pytest.approx(0.1)


def test_bootstrap_interval_brackets_the_group_value_within_the_pair_range():
    values = {(1, 2): 0.91, (1, 3): 0.85, (1, 4): 0.80, (2, 3): 0.88, (2, 4): 0.83, (3, 4): 0.7}
    summary = group_statistics(group_with(values), n_bootstrap=500, confidence=0.95, seed=0)
    median = summary["decoder_median"]
    assert median["value"] == pytest.approx(np.median(list(values.values())))
    assert 0.7 <= median["ci_low"] <= median["value"] <= median["ci_high"] <= 0.91
    assert median["ci_low"] < median["ci_high"]
    stability = summary["decoder_stability@0.7"]
    assert stability["value"] == pytest.approx(np.mean(list(values.values())) / 2)


def test_identical_pairs_give_a_degenerate_interval():
    matrix = np.full((3, 3), 0.8)
    np.fill_diagonal(matrix, np.nan)
    low, high = bootstrap_interval(matrix, "decoder_median", 200, 0.95, np.random.default_rng(0))
    assert low == pytest.approx(0.8) and high == pytest.approx(0.8)


def test_spearman_of_a_monotone_relation_is_one_and_constant_input_is_nan():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert spearman(x, x**3)["rho"] == pytest.approx(1.0)
    assert np.isnan(spearman(x, np.ones(5))["rho"])
