"""Each architecture through the real command line: ground-truth recovery on synthetic data,
contract-complete run folders, and an analysis that keeps architectures in separate groups."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from saeseeds import contract
from tests.helpers import run_app
from tests.training.test_run import recovered_fraction

SYNTHETIC = [
    "data=synthetic",
    "data.d_in=64",
    "data.n_true_features=128",
    "data.k_true=4",
    "data.n_tokens=32768",
    "sae.n_features=256",
    "sae.lr=0.004",
    "trainer.max_epochs=8",
    "trainer.enable_progress_bar=false",
    "logger=none",
]
ARCHITECTURES = {
    "topk": ["sae=topk", "sae.k=4"],
    "batchtopk": ["sae=batchtopk", "sae.k=4"],
    "relu_l1": ["sae=relu_l1", "sae.l1_coefficient=2.5"],
}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """One sweep folder with two seeds of each architecture (one multirun each)."""
    sweep_dir = tmp_path_factory.mktemp("architectures") / "sweep"
    for overrides in ARCHITECTURES.values():
        result = run_app(
            "train.py", "-m", "seed=1,2", *SYNTHETIC, *overrides,
            f"hydra.sweep.dir={sweep_dir}", cwd=sweep_dir.parent,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_architecture_recovers_ground_truth_with_a_complete_run_folder(sweep, name):
    runs = [p for p in sorted(sweep.iterdir()) if f"sae={name}," in p.name + ","]
    assert len(runs) == 2, sorted(p.name for p in sweep.iterdir())
    for run in runs:
        assert recovered_fraction(run) >= 0.9, run.name
        for file in (
            contract.WEIGHTS_FILE,
            contract.CFG_FILE,
            contract.FEATURE_STATS_FILE,
            contract.METRICS_FILE,
            contract.ENVIRONMENT_FILE,
            contract.COMPLETE_MARKER,
        ):
            assert (run / file).is_file(), file  # fmt: skip
        cfg = json.loads((run / contract.CFG_FILE).read_text())
        assert cfg["architecture"] == name and cfg["contract_version"] == contract.CONTRACT_VERSION
        weights = load_file(run / contract.WEIGHTS_FILE)
        expected = set(contract.WEIGHT_TENSORS)
        if name == "batchtopk":
            expected.add(contract.THRESHOLD_TENSOR)
            assert weights[contract.THRESHOLD_TENSOR].shape == (256,)
            assert float(weights[contract.THRESHOLD_TENSOR].min()) > 0
        assert set(weights) == expected
        metrics = json.loads((run / contract.METRICS_FILE).read_text())
        assert metrics["fvu"] < 0.35 and metrics["l0"] > 0


def test_analysis_keeps_architectures_apart(sweep, tmp_path):
    result = run_app(
        "analyze.py", f"sweep_dir={sweep}", "logger=none", "report.figures=false",
        "baseline.n_samples=3", "bootstrap.n_samples=50", f"hydra.run.dir={tmp_path / 'report'}",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    groups = summary["groups"]
    assert len(groups) == 3
    architectures = set()
    for group in groups.values():
        assert group["seeds"] == [1, 2]
        assert {Path(run).name.split("sae=")[1].split(",")[0] for run in group["runs"]} == {
            group["architecture"]
        }
        assert "architecture" in group["label"] or "sae=" in group["label"], group["label"]
        architectures.add(group["architecture"])
    assert architectures == set(ARCHITECTURES)
