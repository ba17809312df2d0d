"""The random-dictionary baseline: chance level, and a p-value that separates real structure."""

from __future__ import annotations

import pytest

from saeseeds.analysis.app import run_analysis
from saeseeds.analysis.baselines import random_baseline
from saeseeds.analysis.pair_metrics import ComputeSettings
from tests.analysis.run_folders import random_directions, write_sweep


def test_independent_random_dictionaries_sit_at_the_chance_level(tmp_path, analysis_config):
    dictionaries = {(64, seed): random_directions(64, 16, seed=100 + seed) for seed in range(1, 5)}
    sweep = write_sweep(tmp_path / "sweep", dictionaries)
    cfg = analysis_config(str(sweep), **{"report.figures": False, "baseline.n_samples": 19})
    outcome = run_analysis(cfg, tmp_path / "report")
    (group,) = outcome.summary["groups"].values()
    chance = group["baseline"]["chance"]
    observed = group["statistics"]
    assert observed["decoder_median"]["value"] == pytest.approx(chance["decoder_median"], abs=0.03)
    assert observed["mmcs"]["value"] == pytest.approx(chance["mmcs"], abs=0.03)
    assert observed["decoder_stability@0.7"]["value"] < 0.1
    assert group["baseline"]["p_value"] > 0.05


def test_p_value_runs_from_its_floor_to_one():
    baseline = random_baseline(
        32, 8, 3, n_samples=9, settings=ComputeSettings(), thresholds=[0.7], shared_threshold=0.7
    )
    assert baseline.p_value(0.99) == pytest.approx(1 / 10)
    assert baseline.p_value(-1.0) == pytest.approx(1.0)
    assert len(baseline.matched_cosines) == 3 * 32
    # More features than dimensions: matched random directions are far from orthogonal.
    assert 0.3 < baseline.chance()["decoder_median"] < 0.8


def test_null_samples_are_groups_of_as_many_dictionaries_as_seeds():
    """The null is the observed statistic's: the median of S(S-1)/2 pair medians, so a null of
    five dictionaries per sample is far less spread than one of a single pair."""
    settings = ComputeSettings(encoder=False, live_only=False)

    def null(n_seeds):
        return random_baseline(32, 8, n_seeds, 30, settings, [0.7], 0.7).null_values()

    pairs, fives = null(2), null(5)
    assert len(pairs) == len(fives) == 30
    assert fives.std() < 0.6 * pairs.std()
    assert fives.mean() == pytest.approx(pairs.mean(), abs=0.03)
