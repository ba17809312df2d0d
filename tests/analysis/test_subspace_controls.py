"""The unstable-feature subspace overlap judged against the trained controls' (Gerasimov et al.).

Each seed's dictionary has stable features (noisy copies of one shared dictionary) and 16
unstable ones. A condition whose unstable features of every seed lie in one shared 16-dimensional
subspace (of d_in = 64) must beat a geometry control whose unstable features are isotropic, and
must not beat a random-model control built like itself; a condition with isotropic unstable
features must not beat its isotropic control.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from saeseeds.analysis.app import run_analysis
from saeseeds.analysis.subspaces import compare_with_control, principal_directions
from tests.analysis.conftest import noisy_permuted_copy
from tests.analysis.run_folders import hydra_config, random_directions, unit, write_run_folder

D_IN, SEEDS, N_UNSTABLE, RANK = 64, (1, 2, 3, 4), 16, 4
SHARED_SUBSPACE = np.linalg.qr(np.random.default_rng(7).standard_normal((D_IN, 16)))[0]
SUBSPACE_SCALES = np.array([2.0] * 4 + [1.0] * 12)  # a few dominant directions inside it


def dictionary(n_features: int, seed: int, group_seed: int, in_subspace: bool) -> np.ndarray:
    stable = noisy_permuted_copy(
        random_directions(n_features - N_UNSTABLE, D_IN, seed=group_seed), seed, noise=0.3
    )
    rng = np.random.default_rng([group_seed, seed])
    if in_subspace:
        coefficients = rng.standard_normal((N_UNSTABLE, 16)) * SUBSPACE_SCALES
        unstable = unit(coefficients @ SHARED_SUBSPACE.T)
    else:
        unstable = unit(rng.standard_normal((N_UNSTABLE, D_IN)))
    return np.vstack([stable, unstable])  # [n_features, d_in]


def write_group(
    sweep: Path, n_features: int, group_seed: int, in_subspace: bool, **changes: str
) -> None:
    name = ",".join(f"{key}={value}" for key, value in changes.items())
    for seed in SEEDS:
        write_run_folder(
            sweep / f"n={n_features},{name},seed={seed}",
            dictionary(n_features, seed, group_seed, in_subspace),
            seed=seed,
            config=hydra_config(n_features, D_IN, 4, seed, **changes),
        )


@pytest.fixture
def controlled_sweep(tmp_path: Path) -> Path:
    sweep = tmp_path / "sweep"
    write_group(sweep, 40, 1, True)
    write_group(sweep, 40, 2, False, data__control="gaussian")
    write_group(sweep, 40, 3, True, model__init="random")
    write_group(sweep, 32, 4, False)
    write_group(sweep, 32, 5, False, data__control="gaussian")
    return sweep


def analyse(sweep: Path, report_dir: Path, analysis_config, **changes) -> dict:
    cfg = analysis_config(
        str(sweep),
        **{"metrics.baseline": False, "report.figures": False, "subspace.max_rank": RANK},
        **changes,
    )
    return run_analysis(cfg, report_dir).summary


def test_shared_unstable_subspace_beats_the_geometry_control(
    controlled_sweep, tmp_path, analysis_config
):
    summary = analyse(controlled_sweep, tmp_path / "report", analysis_config)
    groups = summary["groups"]
    shared = groups["data.control=None,model.init=None,sae.n_features=40"]
    versus_geometry = shared["controls"]["gaussian"]["subspace_overlap"]
    assert versus_geometry["rank"] == RANK
    assert versus_geometry["random_expectation"] == pytest.approx(RANK / D_IN)
    assert versus_geometry["outcome"] == "beats", versus_geometry
    assert versus_geometry["difference_ci"][0] > 0.05
    assert versus_geometry["control"] == pytest.approx(RANK / D_IN, abs=0.05)  # isotropic
    # Every seed has >= RANK unstable features, so the common rank is the group's own.
    assert versus_geometry["condition"] == pytest.approx(shared["subspaces"]["mean_overlap"])
    control = groups[shared["controls"]["gaussian"]["label"]]
    assert versus_geometry["control"] == pytest.approx(control["subspaces"]["mean_overlap"])
    assert len(versus_geometry["control_pairs"]) == len(SEEDS) * (len(SEEDS) - 1) // 2
    assert versus_geometry["difference"] == pytest.approx(
        versus_geometry["condition"] - versus_geometry["control"]
    )

    versus_random_model = shared["controls"]["random_model"]["subspace_overlap"]
    assert versus_random_model["outcome"] == "is not distinguishable from", versus_random_model
    isotropic = groups["data.control=None,model.init=None,sae.n_features=32"]
    versus_own_control = isotropic["controls"]["gaussian"]["subspace_overlap"]
    assert versus_own_control["outcome"] == "is not distinguishable from", versus_own_control
    assert "subspace_overlap" not in isotropic["controls"].get("isotropic", {})

    report = (tmp_path / "report" / "report.md").read_text()
    assert (
        "The overlap of its unstable features' subspaces beats the geometry control's "
        f"({versus_geometry['condition']:.3f} vs {versus_geometry['control']:.3f} at rank 4"
    ) in report
    assert "it does not beat (not distinguishable from) the random-model control's" in report

    # Argmax matching needs no assignment for reappearance, so the comparison is the same.
    argmax = analyse(controlled_sweep, tmp_path / "argmax", analysis_config, matching="argmax")
    same = argmax["groups"]["data.control=None,model.init=None,sae.n_features=40"]
    assert same["controls"]["gaussian"]["subspace_overlap"] == versus_geometry


def test_no_unstable_features_in_a_seed_is_named_not_compared():
    rng = np.random.default_rng(0)
    condition = {seed: principal_directions(unit(rng.standard_normal((6, 8)))) for seed in SEEDS}
    control = dict(condition)
    control[2] = principal_directions(np.zeros((0, 8), dtype=np.float32))
    entry = compare_with_control(condition, control, max_rank=4, confidence=0.95)
    assert entry["rank"] == 0 and entry["outcome"] is None
    assert entry["reason"] == "no unstable features in control seed 2"
    assert entry["difference"] is None and entry["difference_ci"] == [None, None]
