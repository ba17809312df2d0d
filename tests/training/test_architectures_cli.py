"""Each architecture through the real command line: ground-truth recovery on synthetic data,
contract-complete run folders, and an analysis that keeps architectures in separate groups.

The default suite runs Top-K and ReLU+L1 (two seeds each). BatchTopK and archetypal SAEs recover
the same ground truth at the same settings but run in the slow sweep, to keep the default suite
short. JumpReLU and Matryoshka need more optimiser steps than the shared budget here to recover
90% of the ground truth with a margin (JumpReLU's thresholds learn only from the pre-activations
within a bandwidth of them; a Matryoshka's inner prefixes, narrower than the 128 equally frequent
true features, can only hedge between them, so at its default prefixes and this budget a fifth
or so of them stay below cosine 0.9). Run the slow sweep with
``pytest tests/training/test_architectures_cli.py -m slow``.
"""

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
# One multirun per entry: the architectures of an entry share its overrides.
SWEEPS = {
    "sae=topk": ["sae.k=4"],
    "sae=relu_l1": ["sae.l1_coefficient=2.5"],
}
# Settings under which the slower learners recover the ground truth: 4x the optimiser steps
# (batches of 256), Matryoshka's inner prefix as wide as the true dictionary, and a JumpReLU L0
# coefficient whose threshold √λ ≈ 1.7 sits just below the smallest normalised magnitude of a
# true feature (0.5 · √(d_in / E‖x‖²) ≈ 1.9).
SLOW_SWEEPS = {
    "sae=batchtopk,archetypal": ["sae.k=4"],
    "sae=jumprelu": ["data.batch_size=256", "sae.l0_coefficient=3"],
    "sae=matryoshka": ["data.batch_size=256", "sae.k=4", "sae.prefix_fractions=[0.5]"],
}
THRESHOLDED = ("batchtopk", "matryoshka", "jumprelu")  # saved with an inference threshold


def run_sweeps(sweep_dir: Path, sweeps: dict[str, list[str]]) -> Path:
    for choice, overrides in sweeps.items():
        result = run_app(
            "train.py", "-m", choice, "seed=1,2", *SYNTHETIC, *overrides,
            f"hydra.sweep.dir={sweep_dir}", cwd=sweep_dir.parent,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """One sweep folder with two seeds of the default Top-K and of ReLU+L1 (the other
    architectures run in the slow sweep, to keep the default suite short)."""
    return run_sweeps(tmp_path_factory.mktemp("architectures") / "sweep", SWEEPS)


def architecture_of(run: Path) -> str | None:
    """By cfg.json: a folder name too long for the file system is cut short."""
    cfg = run / contract.CFG_FILE
    return json.loads(cfg.read_text())["architecture"] if cfg.is_file() else None


def runs_of(sweep: Path, name: str) -> list[Path]:
    runs = [p for p in sorted(sweep.iterdir()) if architecture_of(p) == name]
    assert len(runs) == 2, sorted(p.name for p in sweep.iterdir())
    return runs


def check_run_folder(run: Path, name: str) -> dict:
    """The contract's files, tensors and fields; returns metrics.json."""
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
    if name in THRESHOLDED:
        expected.add(contract.THRESHOLD_TENSOR)
        assert weights[contract.THRESHOLD_TENSOR].shape == (256,)
        assert float(weights[contract.THRESHOLD_TENSOR].min()) >= 0
        assert float(weights[contract.THRESHOLD_TENSOR].max()) > 0
    assert set(weights) == expected
    metrics = json.loads((run / contract.METRICS_FILE).read_text())
    assert metrics["fvu"] < 0.35 and metrics["l0"] > 0
    return cfg


@pytest.mark.parametrize("name", ["topk", "relu_l1"])
def test_architecture_recovers_ground_truth_with_a_complete_run_folder(sweep, name):
    for run in runs_of(sweep, name):
        assert recovered_fraction(run) >= 0.9, run.name
        check_run_folder(run, name)


def test_analysis_keeps_architectures_apart(sweep, tmp_path):
    check_analysis(sweep, tmp_path, {"topk", "relu_l1"})


def check_analysis(sweep: Path, tmp_path: Path, architectures: set[str]) -> None:
    result = run_app(
        "analyze.py", f"sweep_dir={sweep}", "logger=none", "report.figures=false",
        "baseline.n_samples=3", "bootstrap.n_samples=50", f"hydra.run.dir={tmp_path / 'report'}",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    groups = summary["groups"]
    assert len(groups) == len(architectures)
    found = set()
    for group in groups.values():
        assert group["seeds"] == [1, 2]
        assert {architecture_of(Path(run)) for run in group["runs"]} == {group["architecture"]}
        assert "architecture" in group["label"] or "sae=" in group["label"], group["label"]
        found.add(group["architecture"])
    assert found == architectures


@pytest.mark.slow
def test_the_other_architectures_recover_ground_truth(tmp_path):
    sweep = run_sweeps(tmp_path / "sweep", SLOW_SWEEPS)
    for name in ("batchtopk", "archetypal", "jumprelu", "matryoshka"):
        for run in runs_of(sweep, name):
            assert recovered_fraction(run) >= 0.9, run.name
            cfg = check_run_folder(run, name)
            if name == "matryoshka":  # latents in prefix order, the inner prefix first
                assert cfg["prefix_widths"] == [128, 256] and cfg["k"] == 4
            if name == "archetypal":
                assert cfg["n_anchors"] == 256 and cfg["k"] == 4
    check_analysis(sweep, tmp_path, {"batchtopk", "archetypal", "jumprelu", "matryoshka"})
