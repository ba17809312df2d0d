"""Integrity of run folders, through the real command lines: runs of one config trained on other
data are never seeds of one condition, a resume never continues on other data, a complete job
whose files are gone is trained again, a sweep's records are strict JSON even for a refused
job, and one job folder has one process at a time.

Every test starts from one real sweep (two seeds on an activation file) and copies what it
changes. The file's path is part of the config, so "other data" is the same path with other
content, exactly as a user overwrites it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import REPO_ROOT, TINY_SAE, run_app

WEIGHTS = "sae_weights.safetensors"
ON_FILE = [
    *TINY_SAE,
    "data=activations",
    "data.path=acts.npy",
    "data.batch_size=256",
    "data.heldout_tokens=256",
    "logger=none",
    "trainer.checkpoint_every_n_steps=5",
]


def replaced(overrides: list[str], *changes: str) -> list[str]:
    """``overrides`` with the keys of ``changes`` set to their new values."""
    keys = {change.split("=", 1)[0] for change in changes}
    return [o for o in overrides if o.split("=", 1)[0] not in keys] + list(changes)


def write_activations(path: Path, seed: int) -> None:
    """[2048, 16] float32 activations; another seed is other data of the same shape."""
    rng = np.random.default_rng(seed)
    np.save(path, rng.standard_normal((2048, 16)).astype(np.float32))


def job(sweep: Path, seed: int) -> Path:
    (folder,) = [path for path in sweep.iterdir() if f"seed={seed}" in path.name.split(",")]
    return folder


def strict_json(path: Path) -> object:
    def refuse(token: str) -> None:
        raise ValueError(f"{path} holds the non-JSON token {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """``root/sweep``: seeds 1 and 2 trained on ``root/acts.npy`` (data A)."""
    root = tmp_path_factory.mktemp("integrity")
    write_activations(root / "acts.npy", seed=0)
    result = run_app(
        "train.py", "-m", "seed=1,2", *ON_FILE, f"hydra.sweep.dir={root / 'sweep'}", cwd=root
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return root


@pytest.fixture
def root(trained: Path) -> Path:
    """The trained root with ``acts.npy`` holding data A again (a test may overwrite it)."""
    write_activations(trained / "acts.npy", seed=0)
    return trained


def copy_sweep(root: Path, name: str) -> Path:
    copy = root / name
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(root / "sweep", copy)
    return copy


def test_every_json_file_of_a_sweep_is_strict(root):
    sweep = root / "sweep"
    files = [
        *sweep.glob("*/*.json"),
        *sweep.glob(".saeseeds_jobs/*.json"),
        *sweep.glob("*/COMPLETE"),
    ]
    assert len(files) >= 2 * 4 + 2
    for path in files:
        strict_json(path)


def test_a_run_of_one_config_on_other_data_is_another_group(root, tmp_path):
    """Item 1: seed 3 is trained with the same command after acts.npy was overwritten."""
    sweep = copy_sweep(root, "other_data_sweep")
    write_activations(root / "acts.npy", seed=1)  # data B, same shape, same path
    result = run_app("train.py", "-m", "seed=3", *ON_FILE, f"hydra.sweep.dir={sweep}", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]

    report = tmp_path / "report"
    analysis = run_app(
        "analyze.py",
        f"sweep_dir={sweep}",
        f"hydra.run.dir={report}",
        "progress=false",
        "logger=none",
        cwd=root,
    )
    assert analysis.returncode == 0, analysis.stderr[-3000:]
    summary = json.loads((report / "summary.json").read_text())
    (group,) = summary["groups"].values()
    assert group["seeds"] == [1, 2]
    assert any("other data" in note and "file_sha256=" in note for note in group["notes"])
    (alone,) = summary["groups_not_analysed"]
    assert alone["seeds"] == [3]
    assert "other data" in alone["problem"] and "file_sha256=" in alone["problem"]
    assert "file_sha256=" in alone["label"] and alone["label"] != group["label"]
    markdown = (report / "report.md").read_text()
    assert "the same config was also trained on other data" in markdown


def test_a_sweep_does_not_resume_a_job_on_other_data(root):
    """Item 2: a job interrupted after its last checkpoint, re-run after acts.npy changed."""
    sweep = copy_sweep(root, "resume_sweep")
    interrupted = job(sweep, 1)
    (interrupted / "COMPLETE").unlink()
    environment = (interrupted / "environment.json").read_bytes()
    write_activations(root / "acts.npy", seed=1)

    result = run_app("train.py", "-m", "seed=1,2", *ON_FILE, f"hydra.sweep.dir={sweep}", cwd=root)
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"Sweep {sweep}: 2 jobs: 1 skipped, 0 resumed, 0 started, 1 failed." in result.stdout
    assert "was trained on other data than this run loaded (file_sha256=" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (interrupted / "COMPLETE").exists()
    assert (interrupted / "environment.json").read_bytes() == environment


def test_a_complete_job_with_a_file_gone_or_changed_is_not_complete(root, tmp_path):
    """Item 3: the analysis names the damaged file; the sweep trains the job again, exactly."""
    sweep = copy_sweep(root, "damaged_sweep")
    weights = (job(sweep, 1) / WEIGHTS).read_bytes()
    (job(sweep, 1) / WEIGHTS).unlink()
    metrics = job(sweep, 2) / "metrics.json"
    text = metrics.read_text()
    # Same size, other content: one more or one fewer step.
    edited = re.sub(r'"steps": (\d+)', lambda m: f'"steps": {int(m.group(1)) ^ 1}', text)
    assert edited != text and len(edited) == len(text)
    metrics.write_text(edited)

    report = tmp_path / "report"
    analysis = run_app(
        "analyze.py", f"sweep_dir={sweep}", f"hydra.run.dir={report}", "progress=false", cwd=root
    )
    assert analysis.returncode == 2
    assert "metrics.json changed after completion" in analysis.stderr
    assert "sae_weights.safetensors is missing (COMPLETE recorded it" in analysis.stderr

    result = run_app("train.py", "-m", "seed=1,2", *ON_FILE, f"hydra.sweep.dir={sweep}", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Sweep {sweep}: 2 jobs: 1 skipped, 0 resumed, 1 started, 0 failed." in result.stdout
    assert "is not complete: sae_weights.safetensors is missing" in result.stdout + result.stderr
    assert (job(sweep, 1) / WEIGHTS).read_bytes() == weights
    assert strict_json(job(sweep, 1) / "COMPLETE")["files"][WEIGHTS]["bytes"] == len(weights)


def test_non_finite_hyperparameters_leave_strict_job_records(tmp_path):
    """Item 4 (a sweep's job record): a refused job's record is strict JSON."""
    sweep = tmp_path / "sweep"
    result = run_app(
        "train.py",
        "-m",
        "seed=1",
        *replaced(TINY_SAE, "sae.lr=nan"),
        "data=synthetic",
        "logger=none",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "sae.lr=nan is not valid: every number must be finite" in result.stderr
    (record,) = sweep.glob(".saeseeds_jobs/*.json")
    assert strict_json(record)["outcome"] == "failed"
    assert not list(sweep.glob("*/COMPLETE"))


def wait_for(condition, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the first process never took its job folder"
        time.sleep(0.02)


def test_one_job_folder_has_one_process_and_a_killed_owner_is_taken_over(root, tmp_path):
    """Item 5: a second process on a running job is refused with the owner's PID and host; once
    the owner is killed (SIGKILL: it cannot release anything), the next process takes over."""
    run_dir = tmp_path / "run"
    longer = [*replaced(ON_FILE, "trainer.max_epochs=12"), f"hydra.run.dir={run_dir}"]  # 84 steps
    command = [sys.executable, str(REPO_ROOT / "train.py"), *longer]
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    owner = subprocess.Popen(command, cwd=root, env=env, text=True, stderr=subprocess.PIPE)
    lock = run_dir / ".saeseeds.lock"
    try:
        wait_for((run_dir / "checkpoints" / "last.ckpt").is_file, owner)  # training under way
        owner.send_signal(signal.SIGSTOP)  # holds the folder, mid-training, as long as it takes

        second = run_app("train.py", *longer, "resume=true", cwd=root)
        assert second.returncode == 2, second.stderr[-3000:]
        assert "Traceback" not in second.stderr
        host = socket.gethostname()
        assert f"is in use: the job is running in process {owner.pid} on this host ({host})" in (
            second.stderr
        )
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.communicate(timeout=60)
    assert not (run_dir / "COMPLETE").exists()

    third = run_app("train.py", *longer, "resume=true", cwd=root)
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"Took over {run_dir}: its lock was left by process {owner.pid}" in (
        third.stdout + third.stderr
    )
    assert (run_dir / "COMPLETE").is_file()
    assert lock.stat().st_size == 0  # released cleanly


def test_the_lock_names_its_owner_and_a_lock_left_on_another_host_is_taken_over_loudly(
    tmp_path, caplog
):
    """The lock itself, between two real processes: held, it is refused by name; left behind by
    a process of another host (its record stays, its flock is gone), it is taken over with a
    warning that says the other host cannot be checked."""
    from saeseeds.io import FolderInUse, job_lock

    folder = tmp_path / "job"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from saeseeds.io import job_lock\n"
            f"with job_lock({str(folder)!r}):\n    print('held', flush=True); time.sleep(120)",
        ],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderInUse, match=rf"running in process {holder.pid} on this host"):
            with job_lock(folder):
                pass
    finally:
        holder.kill()
        holder.wait(timeout=60)

    record = {"pid": 4242, "host": "elsewhere-node", "since": "2026-11-22T10:00:00+0000"}
    (folder / ".saeseeds.lock").write_text(json.dumps(record))
    with caplog.at_level("WARNING", logger="saeseeds.io"), job_lock(folder):
        owner = json.loads((folder / ".saeseeds.lock").read_text())
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    assert "process 4242 on another host (elsewhere-node)" in caplog.text
    assert "this file system does not share locks between hosts" in caplog.text
    assert (folder / ".saeseeds.lock").read_text() == ""  # a clean release leaves no owner
