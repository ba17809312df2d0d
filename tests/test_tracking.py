"""W&B runs online when credentials exist, offline otherwise, and as the user says; a resumed
job (one seed, or each seed of a multi-seed job) continues its W&B run, checked on real offline
runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from saeseeds.tracking import WANDB_RUN_FILE, offline_hint, resolve_wandb_mode
from saeseeds.training.job import run_job
from saeseeds.training.run import train
from tests.helpers import REPO_ROOT, TINY_SAE, TINY_SYNTHETIC, compose_train
from tests.training.test_resume import wait_for


def test_auto_mode_follows_credentials(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert resolve_wandb_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_wandb_mode("auto") == "online"
    monkeypatch.delenv("WANDB_API_KEY")
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password secret\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert resolve_wandb_mode("auto") == "online"


def test_explicit_and_environment_modes(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode("auto") == "disabled"
    assert resolve_wandb_mode("offline") == "offline"
    with pytest.raises(ValueError, match="logger.mode='sometimes' is not valid"):
        resolve_wandb_mode("sometimes")
    assert "wandb sync" in offline_hint("/runs/x")


# ---- a resumed job continues its W&B run ----


def offline_run_ids(run_dir: Path) -> list[str]:
    """The run ids of the offline W&B runs in a run folder, oldest first: W&B names each run's
    folder ``offline-run-<time>-<id>``."""
    folders = sorted((run_dir / "wandb").glob("offline-run-*"))
    return [folder.name.rsplit("-", 1)[1] for folder in folders]


# 4 epochs x 16 batches = 64 steps, a checkpoint every 5: time to stop it half-way.
LOGGED = [*TINY_SAE, *TINY_SYNTHETIC, "logger=wandb", "trainer.max_epochs=4"]
LOGGED.append("trainer.checkpoint_every_n_steps=5")


def killed_at_a_checkpoint(run_dir: Path, *overrides: str) -> None:
    """Start train.py in its own process, as a user would, and SIGTERM it once it has written a
    checkpoint (a resume in the test's process then starts W&B afresh, as a new job would)."""
    # Its own W&B service, as a user's command has: not the one this process may have started
    # (W&B hands its address to child processes), which would outlive the kill with its runs.
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    env.update(WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    command = [sys.executable, str(REPO_ROOT / "train.py"), *LOGGED]
    process = subprocess.Popen(
        [*command, *overrides, f"hydra.run.dir={run_dir}"],
        cwd=run_dir.parent,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(run_dir / "checkpoints" / "last.ckpt", process, timeout=600)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-3000:]


def test_a_resumed_run_continues_its_wandb_run(tmp_path):
    interrupted = tmp_path / "interrupted"
    killed_at_a_checkpoint(interrupted, "seed=3")
    (started,) = offline_run_ids(interrupted)
    assert json.loads((interrupted / WANDB_RUN_FILE).read_text()) == {"id": started}
    train(compose_train([*LOGGED, "seed=3", "resume=true"], interrupted))
    assert offline_run_ids(interrupted) == [started, started]
    environment = json.loads((interrupted / "environment.json").read_text())
    assert environment["wandb"]["id"] == started  # the live run's own id


@pytest.mark.slow  # about 20 s: python -m pytest tests/test_tracking.py -m slow
def test_each_seed_of_a_resumed_multi_seed_job_continues_its_own_wandb_run(tmp_path):
    job_dir = tmp_path / "job"
    killed_at_a_checkpoint(job_dir, "seeds=[1,2]", "order_seed=0")
    started = {seed: offline_run_ids(job_dir / f"seed={seed}") for seed in (1, 2)}
    assert started[1] != started[2] and all(len(ids) == 1 for ids in started.values())
    resumed = [*LOGGED, "seeds=[1,2]", "order_seed=0", "resume=true"]
    run_job(compose_train(resumed, job_dir))
    for seed in (1, 2):
        assert offline_run_ids(job_dir / f"seed={seed}") == started[seed] * 2
        environment = json.loads((job_dir / f"seed={seed}" / "environment.json").read_text())
        assert environment["wandb"]["id"] == started[seed][0]  # the live run's own id
