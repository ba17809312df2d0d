"""Functional agreement of matched features on constructed codes whose answer is known: 1 for
runs whose matched latents fire identically, about 0 for unrelated ones, and a stated line (no
crash) when the runs have no held-out codes or codes on different tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import sparse

from saeseeds.analysis.app import run_analysis
from saeseeds.analysis.functional import HeldoutCodes, matched_correlations
from tests.analysis.run_folders import (
    hydra_config,
    random_directions,
    write_heldout_codes,
    write_run_folder,
)

N_FEATURES, D_IN, N_TOKENS, SEEDS = 24, 16, 400, (1, 2, 3)


def random_codes(seed: int, n_tokens: int = N_TOKENS, k: int = 4) -> np.ndarray:
    """Latents [n_tokens, N_FEATURES]: k random features per token, activations in [0.5, 2]."""
    rng = np.random.default_rng(seed)
    codes = np.zeros((n_tokens, N_FEATURES), dtype=np.float32)
    for token in range(n_tokens):
        chosen = rng.choice(N_FEATURES, k, replace=False)
        codes[token, chosen] = rng.uniform(0.5, 2.0, size=k)
    return codes


def codes_of(dense: np.ndarray) -> HeldoutCodes:
    return HeldoutCodes(sparse.csc_matrix(dense.astype(np.float64)), "tokens")


def test_correlation_is_one_for_the_same_latents_and_low_for_unrelated_ones():
    codes = random_codes(0)
    order = np.random.default_rng(1).permutation(N_FEATURES)
    permuted = codes_of(codes[:, order])  # latent j of b is latent order[j] of a
    back = np.argsort(order)  # a's latent i is b's latent back[i]
    same = matched_correlations(codes_of(codes), permuted, np.arange(N_FEATURES), back)
    np.testing.assert_allclose(same, 1.0, atol=1e-9)
    unrelated = matched_correlations(
        codes_of(codes), codes_of(random_codes(2)), np.arange(N_FEATURES), np.arange(N_FEATURES)
    )
    assert np.median(np.abs(unrelated)) < 0.15
    # Against the dense formula (numpy's corrcoef).
    other = random_codes(3)
    expected = [np.corrcoef(codes[:, i], other[:, i])[0, 1] for i in range(N_FEATURES)]
    measured = matched_correlations(
        codes_of(codes), codes_of(other), np.arange(N_FEATURES), np.arange(N_FEATURES)
    )
    np.testing.assert_allclose(measured, expected, atol=1e-10)
    silent = codes.copy()
    silent[:, 5] = 0.0  # never fires: no defined correlation
    result = matched_correlations(
        codes_of(silent), codes_of(codes), np.arange(3, 7), np.arange(3, 7)
    )
    assert np.isnan(result[2]) and np.isfinite(result[[0, 1, 3]]).all()


def write_groups(sweep: Path, condition_codes: bool = True, other_tokens_seed: int | None = None):
    """A condition whose seeds are one dictionary with its latents permuted (codes permuted the
    same way), and its geometry control: random dictionaries with unrelated random codes."""
    base, codes = random_directions(N_FEATURES, D_IN, seed=7), random_codes(0)
    for seed in SEEDS:
        order = np.random.default_rng(seed).permutation(N_FEATURES)
        groups = {
            "none": (base[order], codes[:, order]),
            "gaussian": (random_directions(N_FEATURES, D_IN, seed=100 + seed), random_codes(seed)),
        }
        for control, (decoder, latents) in groups.items():
            folder = write_run_folder(
                sweep / f"data.control={control},seed={seed}", decoder, seed=seed,
                config=hydra_config(N_FEATURES, D_IN, 4, seed, data__control=control),
            )  # fmt: skip
            if control == "gaussian" or condition_codes:
                other = control == "none" and seed == other_tokens_seed
                write_heldout_codes(folder, latents, identity="other" if other else control)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    return sweep


def analyse(sweep: Path, tmp_path: Path, analysis_config) -> tuple[dict, str]:
    cfg = analysis_config(str(sweep), **{"metrics.baseline": False, "metrics.subspaces": False})
    groups = run_analysis(cfg, tmp_path / "report").summary["groups"]
    return groups, (tmp_path / "report" / "report.md").read_text()


def test_matched_latents_that_fire_together_against_the_geometry_controls(
    tmp_path, analysis_config
):
    groups, report = analyse(write_groups(tmp_path / "sweep"), tmp_path, analysis_config)
    condition, control = groups["data.control=none"], groups["data.control=gaussian"]
    functional = condition["functional"]
    assert functional["median"]["value"] == pytest.approx(1.0)
    assert functional["n_tokens"] == N_TOKENS and functional["undefined_share"] == 0.0
    assert len(functional["pairs_measured"]) == 3
    assert abs(functional["random_partner_median"]) < 0.2
    assert functional["stable"]["median"] == pytest.approx(1.0)
    assert functional["stable"]["n"] == 3 * N_FEATURES
    assert abs(control["functional"]["median"]["value"]) < 0.2
    baseline = functional["control"]
    assert baseline["label"] == "data.control=gaussian"
    assert baseline["difference"] == pytest.approx(1.0 - baseline["median"])
    assert baseline["difference_ci"][0] > 0.5
    # The pair statistic is in pairs.csv and in the group table, with its interval.
    pairs = (tmp_path / "report" / "pairs.csv").read_text()
    assert pairs.count(",activation_correlation_median,") == 6
    assert "- Functional agreement: Pearson correlation of matched features' activations" in report
    assert "- Geometry control (data.control=gaussian): median" in report
    assert (tmp_path / "report" / condition["figures"]["functional_agreement"]).is_file()


def test_without_codes_or_with_codes_on_other_tokens_the_report_says_so(tmp_path, analysis_config):
    sweep = write_groups(tmp_path / "sweep", condition_codes=False)
    groups, report = analyse(sweep, tmp_path, analysis_config)
    functional = groups["data.control=none"]["functional"]
    assert functional["unavailable"].startswith("no seed pair has held-out codes on the same")
    assert "seed 1: no heldout_codes.safetensors" in functional["unavailable"]
    assert "activation_correlation_median" not in groups["data.control=none"]["statistics"]
    assert "- Functional agreement: not measured; no seed pair has held-out codes" in report
    assert "functional_agreement" not in groups["data.control=none"]["figures"]

    mixed = write_groups(tmp_path / "mixed", other_tokens_seed=3)
    groups, report = analyse(mixed, tmp_path / "again", analysis_config)
    functional = groups["data.control=none"]["functional"]
    assert functional["pairs_measured"] == [[1, 2]]
    assert any("seeds 1 and 3" in note and "heldout_identity differs" in note
               for note in functional["notes"])  # fmt: skip
    assert "heldout_identity differs" in report
