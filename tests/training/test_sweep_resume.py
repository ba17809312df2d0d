"""Resumable sweeps: a multirun killed with SIGKILL mid-way and re-run with the same command skips
the finished job, resumes the interrupted one, starts the missing ones, refuses (and leaves
alone) a job whose folder holds another config, goes on past it, prints one summary line and
exits non-zero; every weights file equals the uninterrupted sweep's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT, TINY_SAE, TINY_SYNTHETIC, run_app

SWEEP = [
    "-m",
    "seed=1,2",
    "sae.n_features=32,64",
    *[option for option in TINY_SAE if not option.startswith("sae.n_features")],
    *TINY_SYNTHETIC,
    "trainer.max_epochs=3",  # 48 steps per job
    "trainer.checkpoint_every_n_steps=5",
    "logger=none",
]
WEIGHTS = "sae_weights.safetensors"


def job_dir(sweep: Path, seed: int, n_features: int) -> Path:
    (folder,) = [
        path
        for path in sweep.iterdir()
        if f"seed={seed}" in path.name.split(",")
        and f"sae.n_features={n_features}" in path.name.split(",")
    ]
    return folder


def kill_when(process: subprocess.Popen, ready, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the sweep never reached the point to kill it"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)


# Slow (half a minute): run with -m slow; single-job resume is tested exactly by default.
@pytest.mark.slow
def test_killed_sweep_resumes_skips_and_reports_to_the_same_weights(tmp_path):
    straight = tmp_path / "straight"
    result = run_app("train.py", *SWEEP, f"hydra.sweep.dir={straight}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Sweep {straight}: 4 jobs: 0 skipped, 0 resumed, 4 started, 0 failed." in result.stdout

    # The same sweep, killed with SIGKILL once its second job has a checkpoint.
    killed = tmp_path / "killed"
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, str(REPO_ROOT / "train.py"), *SWEEP, f"hydra.sweep.dir={killed}"]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, text=True, stderr=subprocess.PIPE)

    def second_job_checkpointed() -> bool:
        folders = [path for path in killed.glob("*") if path.is_dir()]
        finished = [path for path in folders if (path / "COMPLETE").exists()]
        running = [path for path in folders if (path / "checkpoints/last.ckpt").exists()]
        return bool(finished) and len(running) > len(finished)

    kill_when(process, second_job_checkpointed)
    complete = sorted(path.parent.name for path in killed.glob("*/COMPLETE"))
    assert complete == [job_dir(killed, 1, 32).name]

    # Job 3 (seed=2, n_features=32) holds a finished run of another config: it must be refused
    # and left exactly as it is, and the sweep must go on to job 4.
    other = killed / job_dir(straight, 2, 32).name
    other.mkdir()
    (other / "COMPLETE").write_text("earlier\n")
    recorded = {"seed": 2, "sae": {"n_features": 32, "k": 16}}
    (other / "environment.json").write_text(json.dumps({"config": recorded}))

    rerun = run_app("train.py", *SWEEP, f"hydra.sweep.dir={killed}", cwd=tmp_path)
    assert rerun.returncode == 1, rerun.stderr[-3000:]
    assert f"Sweep {killed}: 4 jobs: 1 skipped, 1 resumed, 1 started, 1 failed." in rerun.stdout
    assert f"failed: {other.name}: " in rerun.stderr
    assert "already holds a complete run with another config" in rerun.stderr
    assert "Traceback" not in rerun.stderr
    left = sorted(path.name for path in other.iterdir() if path.name != "train.log")
    assert left == ["COMPLETE", "environment.json"]  # Hydra's log aside, untouched

    for seed, n_features in ((1, 32), (1, 64), (2, 64)):
        resumed = job_dir(killed, seed, n_features) / WEIGHTS
        assert resumed.read_bytes() == (job_dir(straight, seed, n_features) / WEIGHTS).read_bytes()

    records = {
        path.stem: json.loads(path.read_text())
        for path in (killed / ".saeseeds_jobs").glob("*.json")
    }
    outcomes = sorted(record["outcome"] for record in records.values())
    assert outcomes == ["failed", "resumed", "skipped", "started"]
    assert all(record["config_sha256"] for record in records.values())
