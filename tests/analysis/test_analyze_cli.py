"""``python analyze.py`` in a subprocess: exit codes and messages a user sees, W&B offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.analysis.run_folders import hydra_config, random_directions, write_run_folder

REPO_ROOT = Path(__file__).resolve().parents[2]


def analyze(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("WANDB_API_KEY", None)
    command = [sys.executable, str(REPO_ROOT / "analyze.py"), "progress=false", *overrides]
    if not any(override.startswith("hydra.run.dir") for override in overrides):
        command.append(f"hydra.run.dir={cwd / 'report'}")
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_nonexistent_folder(tmp_path):
    result = analyze(tmp_path, f"sweep_dir={tmp_path / 'nope'}")
    assert result.returncode == 2
    assert f"sweep_dir {tmp_path / 'nope'} does not exist." in result.stderr


def test_folder_without_complete_runs(tmp_path):
    for seed in (1, 2):
        write_run_folder(
            tmp_path / f"sweep/seed={seed}", random_directions(6, 4, 0), seed=seed, complete=False
        )
    result = analyze(tmp_path, f"sweep_dir={tmp_path / 'sweep'}")
    assert result.returncode == 2
    assert "Nothing to analyse" in result.stderr
    assert "incomplete: no COMPLETE marker" in result.stderr
    assert "No complete, readable run of contract version 1 was found." in result.stderr


def test_single_seed_group(tmp_path):
    write_run_folder(tmp_path / "sweep/seed=1", random_directions(6, 4, 0), seed=1)
    result = analyze(tmp_path, f"sweep_dir={tmp_path / 'sweep'}")
    assert result.returncode == 2
    assert "only one seed (1); stability needs >= 2 seeds" in result.stderr


def test_d_in_mismatch_inside_a_group(tmp_path):
    config = hydra_config(6, 4, 4, seed=0)
    write_run_folder(tmp_path / "sweep/a", random_directions(6, 4, 0), seed=1, config=config)
    write_run_folder(tmp_path / "sweep/b", random_directions(6, 8, 0), seed=2, config=config)
    result = analyze(tmp_path, f"sweep_dir={tmp_path / 'sweep'}")
    assert result.returncode == 2
    assert "differ in d_in (a: 4, b: 8)" in result.stderr


def test_bad_override_fails_at_composition(tmp_path):
    result = analyze(tmp_path, "solver=hungarian")
    assert result.returncode == 1
    assert "Invalid value 'hungarian', expected one of [lapjv, scipy]" in result.stderr


def test_bad_runs_beside_good_ones_exit_zero_and_log_offline(tmp_path):
    """Latest multirun by default; truncated, NaN and cfg-less runs listed; W&B offline run."""
    sweep = tmp_path / "outputs/multirun/2026-11-22/10-00-00"
    base = random_directions(10, 6, seed=0)
    for seed in (1, 2, 3, 4, 5):
        write_run_folder(
            sweep / f"seed={seed}", base[np.random.default_rng(seed).permutation(10)], seed=seed
        )
    weights = sweep / "seed=3/sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    nan_decoder = base.copy()
    nan_decoder[0, 0] = np.nan
    write_run_folder(sweep / "seed=4", nan_decoder, seed=4, encoder=base.T.copy())
    (sweep / "seed=5/cfg.json").unlink()

    result = analyze(tmp_path)  # no sweep_dir: the latest multirun under ./outputs
    assert result.returncode == 0, result.stderr
    report_dir = tmp_path / "report"
    assert f"Report folder: {report_dir}" in result.stdout
    summary = json.loads((report_dir / "summary.json").read_text())
    reasons = {Path(entry["path"]).name: entry["reason"] for entry in summary["skipped_runs"]}
    assert "truncated" in reasons["seed=3"]
    assert reasons["seed=4"] == "W_dec contains NaN or infinite values"
    assert reasons["seed=5"] == "missing cfg.json (the run's SAE config)"
    (group,) = summary["groups"].values()
    assert group["seeds"] == [1, 2]
    assert group["statistics"]["decoder_median"]["value"] > 0.999  # permuted copies
    offline_runs = list((report_dir / "wandb").glob("offline-run-*"))
    assert offline_runs, "expected an offline W&B analysis run in the report folder"
    assert "wandb_s" in summary["timings"]
    assert summary["wandb"]["group"] == "sweep-group"  # from the runs' environment.json
    assert summary["wandb"]["mode"] == "offline"
