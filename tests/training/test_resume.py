"""Preemption and resuming: SIGTERM saves a checkpoint at the current step and exits non-zero, the
resumed run is byte-identical to an uninterrupted one, a resume is refused when anything that
defines the run differs, and a checkpoint writer killed at any point leaves a whole file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from saeseeds.errors import ConfigError
from saeseeds.training.run import train
from tests.helpers import REPO_ROOT, TINY_SAE, TINY_SYNTHETIC, compose_train, run_app

# 4 epochs x 16 batches = 64 steps; a checkpoint every 5.
LONGER = [*TINY_SAE, *TINY_SYNTHETIC, "logger=none", "trainer.max_epochs=4", "seed=5"]
CHECKPOINT_EVERY = "trainer.checkpoint_every_n_steps=5"


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_sigterm_checkpoints_the_current_step_exits_143_and_resumes_exactly(tmp_path):
    run_dir = tmp_path / "preempted"
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "train.py"), *LONGER, CHECKPOINT_EVERY]
        + [f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    wait_for(last, process)  # training is under way: the step-5 checkpoint exists
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)

    assert process.returncode == 143, stderr[-3000:]  # 128 + SIGTERM: a failure to schedulers
    assert "Traceback" not in stderr
    assert "Stopped by SIGTERM at step" in stderr
    assert not (run_dir / "COMPLETE").exists()
    stopped_at = torch.load(last, weights_only=True)["global_step"]
    assert f"Stopped by SIGTERM at step {stopped_at}:" in stderr
    assert stopped_at < 64

    metrics = train(compose_train([*LONGER, CHECKPOINT_EVERY, "resume=true"], run_dir))
    assert metrics["steps"] == 64
    train(compose_train([*LONGER, CHECKPOINT_EVERY], tmp_path / "straight"))
    weights = "sae_weights.safetensors"
    assert (run_dir / weights).read_bytes() == (tmp_path / "straight" / weights).read_bytes()


def test_sigterm_before_training_exits_143_without_a_run(tmp_path):
    """While the data loads there is nothing to save: stop at once, no COMPLETE."""
    from saeseeds.training.lifecycle.preemption import Preempted

    class TermDuringSetup:
        def __init__(self, source):
            self.source = source

        def __getattr__(self, name):
            return getattr(self.source, name)

        def load(self):
            os.kill(os.getpid(), signal.SIGTERM)
            return self.source.load()

    import saeseeds.training.run as run_module

    original = run_module.build_source
    run_module.build_source = lambda cfg: TermDuringSetup(original(cfg))
    try:
        with pytest.raises(Preempted) as stopped:
            train(compose_train([*TINY_SAE, *TINY_SYNTHETIC, "logger=none"], tmp_path / "r"))
    finally:
        run_module.build_source = original
    assert stopped.value.code == 143
    assert not (tmp_path / "r" / "COMPLETE").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers are given back


@pytest.fixture
def interrupted(tmp_path) -> Path:
    """A k=4 run stopped by SIGINT after step 5, at the end of the next block of steps (step 8,
    a logging step; checkpoint there), not complete."""
    import lightning as L

    class CtrlC(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 5:
                os.kill(os.getpid(), signal.SIGINT)

    run_dir = tmp_path / "interrupted"
    with pytest.raises(SystemExit) as stopped:
        train(compose_train([*LONGER, CHECKPOINT_EVERY], run_dir), extra_callbacks=[CtrlC()])
    assert stopped.value.code == 130  # 128 + SIGINT
    assert torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 8
    return run_dir


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        (["sae.k=8", "sae.lr=0.01"], ["sae.k=4 vs 8", "sae.lr=0.004 vs 0.01"]),
        (["seed=6"], ["seed=5 vs 6"]),
        (["trainer.max_epochs=7"], ["trainer.max_epochs=4 vs 7"]),
        (["data.n_tokens=8192"], ["data.n_tokens=4096 vs 8192"]),
    ],
)
def test_resume_with_anything_that_defines_the_run_changed_is_refused(interrupted, changes, named):
    checkpoint = (interrupted / "checkpoints/last.ckpt").read_bytes()
    with pytest.raises(ConfigError) as refused:
        train(compose_train([*LONGER, CHECKPOINT_EVERY, "resume=true", *changes], interrupted))
    for words in named:
        assert words in str(refused.value)
    assert "Resume with the same seed and config" in str(refused.value)
    assert (interrupted / "checkpoints/last.ckpt").read_bytes() == checkpoint
    assert not (interrupted / "cfg.json").exists()


def test_resume_ignores_operational_keys(interrupted):
    """Where outputs go and how the run is shown or checkpointed never block a resume."""
    metrics = train(
        compose_train(
            [*LONGER, "trainer.checkpoint_every_n_steps=7", "resume=true"]
            + ["trainer.log_every_n_steps=2", "paths.cache_dir=elsewhere"],
            interrupted,
        )
    )
    assert metrics["steps"] == 64
    recorded = json.loads((interrupted / "environment.json").read_text())["config"]
    assert recorded["seed"] == 5 and recorded["sae"]["k"] == 4


def test_folders_written_with_a_retired_trainer_key_still_match(tmp_path):
    """Runs recorded while ``trainer.val_check_interval`` existed (Lightning's validation every
    epoch, which never changed the weights) have today's run and condition configs, so they are
    resumed, skipped and grouped with today's runs."""
    from omegaconf import OmegaConf

    from saeseeds import contract

    today = OmegaConf.to_container(compose_train(LONGER, tmp_path), resolve=True)
    assert "val_check_interval" not in today["trainer"]
    before = json.loads(json.dumps(today))
    before["trainer"]["val_check_interval"] = 1.0
    assert contract.run_config(before) == contract.run_config(today)
    assert contract.condition_config(before) == contract.condition_config(today)


# What AtomicCheckpointIO.save_checkpoint does (torch.save to memory, then an atomic write),
# without importing Lightning, so that each writer starts quickly.
WRITER = """
import io, sys, torch
from saeseeds.io import atomic_write_bytes
path, version = sys.argv[1], 0
while True:
    version += 1
    buffer = io.BytesIO()
    torch.save({"version": version, "w": torch.full((2_000_000,), float(version))}, buffer)
    atomic_write_bytes(path, buffer.getbuffer())
    print(version, flush=True)
"""


def test_a_checkpoint_writer_killed_at_any_point_leaves_a_whole_checkpoint(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    for kill in range(5):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)], env=env, stdout=subprocess.PIPE, text=True
        )
        assert writer.stdout is not None
        first = writer.stdout.readline()  # one checkpoint written: the next one is under way
        time.sleep(0.03 * kill)  # kill at a different point of a write each time
        writer.send_signal(signal.SIGKILL)
        written = int(([first, *writer.communicate()[0].split()])[-1])
        checkpoint = torch.load(path, weights_only=True)
        version = checkpoint["version"]
        assert version in (written, written + 1)  # the old file or the new one, never a mix
        assert torch.equal(checkpoint["w"], torch.full((2_000_000,), float(version)))


def test_a_complete_folder_is_skipped_when_the_same_command_runs_again(tmp_path):
    """Idempotent: re-running a finished command does nothing and succeeds. (Another config in
    the same folder is refused and leaves it untouched: see the bad-input catalogue.)"""
    run_dir = tmp_path / "run"
    common = [*TINY_SAE, *TINY_SYNTHETIC, "logger=none", f"hydra.run.dir={run_dir}"]
    assert run_app("train.py", *common, cwd=tmp_path).returncode == 0
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}

    again = run_app("train.py", *common, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Skipped" in again.stdout and "already complete with this config" in again.stdout
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert after.pop(run_dir / "train.log").startswith(before.pop(run_dir / "train.log"))
    assert after == before


def test_a_runners_preemption_signal_is_handed_over_after_the_checkpoint(tmp_path):
    """submitit requeues a job on SIGUSR2 and exits; the checkpoint must be written first."""
    import lightning as L

    seen = []

    def submitit_like(signum, frame):
        seen.append(torch.load(last, weights_only=True)["global_step"])
        raise SystemExit(144)  # submitit's local runner: "requeue me"

    class Preempt(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 5:
                os.kill(os.getpid(), signal.SIGUSR2)

    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    previous = signal.signal(signal.SIGUSR2, submitit_like)
    try:
        with pytest.raises(SystemExit) as stopped:
            train(compose_train([*LONGER, CHECKPOINT_EVERY], run_dir), extra_callbacks=[Preempt()])
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert stopped.value.code == 144
    assert seen == [8]  # the runner ran once, after the checkpoint at the next block's end
    assert not (run_dir / "COMPLETE").exists()


def test_in_a_multirun_resume_true_starts_the_jobs_that_never_ran(tmp_path):
    from omegaconf import OmegaConf

    from saeseeds import contract
    from saeseeds.training.lifecycle.resume import START, plan_job

    cfg = compose_train([*LONGER, "resume=true"], tmp_path / "never_ran")
    run_config = contract.run_config(OmegaConf.to_container(cfg, resolve=True))
    assert plan_job(cfg, tmp_path / "never_ran", run_config, auto_resume=True).action == START
    with pytest.raises(ConfigError, match="resume=true but .*last.ckpt does not exist"):
        plan_job(cfg, tmp_path / "never_ran", run_config, auto_resume=False)


def test_a_checkpoint_from_before_the_one_training_flow_resumes_exactly(interrupted, tmp_path):
    """A one-seed checkpoint written when a seed=S job had its own module (``sae.*`` tensors and a
    [n_features] tracker) resumes to the bytes of an uninterrupted run."""
    last = interrupted / "checkpoints/last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    old_layout = {}
    for name, tensor in checkpoint["state_dict"].items():
        if name.startswith("saes.0."):
            name = "sae." + name[len("saes.0.") :]
        elif name == "tokens_since_fired":
            tensor = tensor[0]
        old_layout[name] = tensor
    checkpoint["state_dict"] = old_layout
    torch.save(checkpoint, last)

    train(compose_train([*LONGER, CHECKPOINT_EVERY, "resume=true"], interrupted))
    train(compose_train([*LONGER, CHECKPOINT_EVERY], tmp_path / "straight"))
    weights = "sae_weights.safetensors"
    assert (interrupted / weights).read_bytes() == (tmp_path / "straight" / weights).read_bytes()


def test_a_checkpoint_of_one_step_per_lightning_step_resumes_exactly(interrupted, tmp_path):
    """A checkpoint written when each Lightning step was one optimisation step (automatic
    optimisation counts its steps in another loop field) resumes at its step, to the bytes of an
    uninterrupted run."""
    last = interrupted / "checkpoints/last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    fit_loop = checkpoint["loops"]["fit_loop"]
    manual = fit_loop["epoch_loop.manual_optimization.optim_step_progress"]
    automatic = fit_loop["epoch_loop.automatic_optimization.optim_progress"]["optimizer"]
    assert manual["total"]["completed"] == checkpoint["global_step"] == 8
    for scope in ("total", "current"):
        automatic["step"][scope] = dict(manual[scope])
        manual[scope] = {"ready": 0, "completed": 0}
    torch.save(checkpoint, last)

    metrics = train(compose_train([*LONGER, CHECKPOINT_EVERY, "resume=true"], interrupted))
    assert metrics["steps"] == 64
    train(compose_train([*LONGER, CHECKPOINT_EVERY], tmp_path / "straight"))
    weights = "sae_weights.safetensors"
    assert (interrupted / weights).read_bytes() == (tmp_path / "straight" / weights).read_bytes()
