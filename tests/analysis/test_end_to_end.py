"""A real multirun of the training app on synthetic data (2 sizes × 3 seeds), analysed end to end.

The synthetic data has 32 true directions in 16 dimensions, 2 active per token; 256 steps are
enough for every seed to find most of them, so stability must be high and far above chance.
(With only 8 steps, e.g. data.n_tokens=8192 at the default batch size, the SAEs are still at
their random initialisation and sit at the chance level.)

The six training jobs take about 20 s on an idle 2-core machine, so this runs in the default
suite (CI included).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SWEEP = [
    "seed=1,2,3",
    "sae.n_features=32,64",
    "sae.k=2",
    "sae.lr=0.01",
    "data=synthetic",
    "data.d_in=16",
    "data.n_true_features=32",
    "data.k_true=2",
    "data.n_tokens=65536",
    "data.batch_size=256",
    "trainer.max_epochs=1",
    "logger=none",
    "trainer.enable_progress_bar=false",
]


def run_script(script: str, cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("WANDB_API_KEY", None)
    command = [sys.executable, str(REPO_ROOT / script), *overrides]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained_sweep(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("e2e")
    sweep = workdir / "outputs/multirun/2026-11-22/10-00-00"
    result = run_script("train.py", workdir, "-m", *SWEEP, f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep


def test_training_sweep_is_analysed_end_to_end(trained_sweep):
    workdir = trained_sweep.parents[3]
    report_dir = workdir / "report"
    result = run_script(
        "analyze.py",
        workdir,
        f"sweep_dir={trained_sweep}",
        f"hydra.run.dir={report_dir}",
        "progress=false",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Report folder: {report_dir}" in result.stdout

    summary = json.loads((report_dir / "summary.json").read_text())
    assert summary["skipped_runs"] == [] and summary["n_runs_used"] == 6
    groups = summary["groups"]
    assert sorted(groups) == ["sae.n_features=32", "sae.n_features=64"]
    for group in groups.values():
        stats, baseline = group["statistics"], group["baseline"]
        assert group["seeds"] == [1, 2, 3]
        # Far above the chance level of random dictionaries of the same shape.
        assert stats["decoder_median"]["value"] > baseline["chance"]["decoder_median"] + 0.25
        assert stats["live_decoder_median"]["value"] > 0.9
        assert stats["decoder_stability@0.7"]["value"] > 0.5
        assert baseline["p_value"] == pytest.approx(1 / (baseline["n_samples"] + 1))
        assert stats["shared"]["value"] > baseline["chance"]["shared"] + 0.3
    # At the true dictionary size most features are shared (matched by decoder and encoder).
    assert groups["sae.n_features=32"]["statistics"]["shared"]["value"] > 0.6

    # Training logged no W&B group (logger=none), so the analysis run's group is the multirun
    # folder; with a group in environment.json it is that one (see test_analyze_cli).
    assert summary["wandb"] == {
        **summary["wandb"],
        "group": "2026-11-22_10-00-00",
        "mode": "offline",
    }

    for name in ("report.md", "pairs.csv", "features.csv"):
        assert (report_dir / name).stat().st_size > 0
    with open(report_dir / "features.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 3 * (32 + 64)
    report = (report_dir / "report.md").read_text()
    assert report.count("![") >= 11
    for line in report.splitlines():
        if line.startswith("!["):
            assert (report_dir / line.rsplit("(", 1)[1].rstrip(")")).is_file()
