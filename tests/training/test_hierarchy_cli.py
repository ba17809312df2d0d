"""Feature absorption through the real command line: on a synthetic world with a feature
hierarchy, Top-K SAEs absorb more children than Matryoshka SAEs, as metrics.json records it;
and the report shows the numbers per group.

One multirun trains both architectures, two seeds each in one job (``seeds=[1,2]``). The world
is docs/synthetic.md's with a quarter of its optimiser steps (160: half the tokens, half the
epochs, 2.5x the learning rate) so that the default suite stays short. Measured at these
settings with seeds 1, 2, 3: Top-K absorbed 5, 8, 9 of the 16 children, Matryoshka 2, 0, 0 (the
first two seeds are the test's). The report check runs in the slow suite:
``pytest tests/training/test_hierarchy_cli.py -m slow``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saeseeds import contract
from tests.helpers import run_app
from tests.studies.test_sweep_architectures import load_script
from tests.training.test_architectures_cli import check_analysis

SWEEP_SCRIPT = load_script()
# The sweep script's hierarchical world (docs/synthetic.md's), a quarter of its steps.
WORLD = SWEEP_SCRIPT.with_preset(
    SWEEP_SCRIPT.HIERARCHICAL_WORLD,
    ["data.n_tokens=8192", "trainer.max_epochs=5", "sae.lr=0.01", "sae.k=3", "logger=none"]
    + ["trainer.enable_progress_bar=false", "trainer.snapshots=false", "trainer.heldout_codes=0"],
)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    sweep_dir = tmp_path_factory.mktemp("hierarchy") / "sweep"
    result = run_app(
        "train.py", "-m", "sae=topk,matryoshka", "seeds=[1,2]", "order_seed=0", *WORLD,
        f"hydra.sweep.dir={sweep_dir}", cwd=sweep_dir.parent,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir


def metrics_by_architecture(sweep: Path) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for complete in sorted(sweep.glob(f"*/{contract.COMPLETE_MARKER}")):
        cfg = json.loads((complete.parent / contract.CFG_FILE).read_text())
        metrics = json.loads((complete.parent / contract.METRICS_FILE).read_text())
        found.setdefault(cfg["architecture"], []).append(metrics)
    return found


def test_topk_absorbs_more_children_than_matryoshka(sweep):
    found = metrics_by_architecture(sweep)
    assert sorted(found) == ["matryoshka", "topk"] and all(len(m) == 2 for m in found.values())
    for metrics in found["topk"] + found["matryoshka"]:
        assert 0 <= metrics["gt_absorbed_children"] <= 16
        assert metrics["gt_absorbed_children_share"] == metrics["gt_absorbed_children"] / 16
        assert 0 <= metrics["gt_children_recovered"] <= 1 - metrics["gt_absorbed_children"] / 16
    topk = sorted(m["gt_absorbed_children"] for m in found["topk"])
    matryoshka = sorted(m["gt_absorbed_children"] for m in found["matryoshka"])
    # Every Top-K seed absorbs more than every Matryoshka seed, and together by a margin.
    assert topk[0] > matryoshka[-1] and sum(topk) >= sum(matryoshka) + 6, (topk, matryoshka)


@pytest.mark.slow
def test_the_report_shows_recovery_and_absorption_per_group(sweep, tmp_path):
    check_analysis(sweep, tmp_path, {"topk", "matryoshka"})  # runs analyze.py
    report = (tmp_path / "report" / "report.md").read_text()
    section = report.split("## Ground-truth recovery", 1)[1].split("\n## ", 1)[0]
    assert "absorbed children" in section and "parents recovered" in section
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    by_architecture = {g["architecture"]: g["ground_truth"] for g in summary["groups"].values()}
    found = metrics_by_architecture(sweep)
    for architecture, truth in by_architecture.items():
        values = [m["gt_absorbed_children"] for m in found[architecture]]
        assert truth["gt_absorbed_children"]["mean"] == sum(values) / len(values)
        assert f"{sum(values) / len(values):.1f}" in section
    assert "Ground-truth recovery" in (tmp_path / "report" / "report.html").read_text()
