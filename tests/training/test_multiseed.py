"""Several seeds in one job (``'seeds=[...]' order_seed=N``): every seed's folder is the one its
own job ``seed=S order_seed=N`` writes, byte for byte where it can be."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from saeseeds import contract
from saeseeds.config.validation import validate_train_config
from saeseeds.errors import ConfigError
from saeseeds.training.job import run_job
from saeseeds.training.run import train
from tests.helpers import TINY_SAE, TINY_SYNTHETIC, compose_train, offline_wandb_run, run_app
from tests.training.test_run import InterruptAtStep

# Bytes that must match; metrics and environment are compared field by field.
IDENTICAL_FILES = (
    "sae_weights.safetensors",
    "feature_stats.safetensors",
    "cfg.json",
    "ground_truth.safetensors",
    "heldout_codes.safetensors",
)
SNAPSHOT_FILES = tuple(f"snapshots/fraction={f}.safetensors" for f in ("0.25", "0.5", "0.75"))
# Fields that record when or how a run was made, not what it computed (the cost of snapshots
# and codes holds the time spent writing them).
TIMING_METRICS = ("wall_time_s", "fit_time_s", "snapshots", "heldout_codes")
HOW_IT_RAN = ("seeds_trained_together", "command", "wandb")
# Many features for little data and a short dead-latent window, so that latents die and the
# AuxK loss is active: the trackers and AuxK must match too.
DEAD_LATENTS = ["sae.n_features=128", "sae.k=2", "sae.dead_tokens_threshold=512"]


class DeadLatentProbe(Callback):
    """Records whether any latent was dead (AuxK active) at the start of some step."""

    def __init__(self) -> None:
        self.saw_dead = False

    def on_train_batch_start(self, trainer, module, *args) -> None:
        self.saw_dead |= bool((module.tokens_since_fired >= module.dead_tokens_threshold).any())


def assert_same_run(single: Path, multi: Path, with_snapshots: bool = True) -> None:
    for name in IDENTICAL_FILES + (SNAPSHOT_FILES if with_snapshots else ()):
        assert (single / name).read_bytes() == (multi / name).read_bytes(), name
    assert (multi / contract.COMPLETE_MARKER).is_file()
    metrics = [json.loads((d / contract.METRICS_FILE).read_text()) for d in (single, multi)]
    for record in metrics:
        assert record["fit_time_s"] > 0
        for name in TIMING_METRICS:
            record.pop(name, None)
    assert metrics[0] == metrics[1]
    environments = [
        json.loads((d / contract.ENVIRONMENT_FILE).read_text()) for d in (single, multi)
    ]
    for record in environments:
        for name in HOW_IT_RAN:
            record.pop(name)
    assert environments[0] == environments[1]


def test_seeds_in_one_job_write_the_folders_of_their_own_jobs(tmp_path):
    common = [*TINY_SAE, *TINY_SYNTHETIC, *DEAD_LATENTS, "order_seed=7", "logger=none"]
    common.append("trainer.checkpoint_every_n_steps=5")
    probe = DeadLatentProbe()
    for seed in (1, 2):
        train(compose_train([*common, f"seed={seed}"], tmp_path / f"seed{seed}"), [probe])
    assert probe.saw_dead, "no latent died: the test would not cover the tracker and AuxK"

    # Interrupted at step 22 (checkpoint at 20, mid-epoch), then resumed.
    job_dir = tmp_path / "job"
    with pytest.raises(SystemExit):  # Lightning exits after a graceful Ctrl-C shutdown
        run_job(compose_train([*common, "seeds=[2,1]"], job_dir), [InterruptAtStep(22)])
    assert not list(job_dir.glob("*/COMPLETE"))
    assert (job_dir / "checkpoints/last.ckpt").is_file()
    run_job(compose_train([*common, "seeds=[2,1]", "resume=true"], job_dir))
    for seed in (1, 2):
        assert_same_run(tmp_path / f"seed{seed}", job_dir / f"seed={seed}")
    env = json.loads((job_dir / "seed=1" / contract.ENVIRONMENT_FILE).read_text())
    assert env["seeds_trained_together"] == [2, 1] and env["config"]["seed"] == 1
    assert "seeds" not in env["config"] and env["config"]["order_seed"] == 7
    # The job's checkpoint holds both seeds' trackers, row for row as their own jobs' ones.
    job_checkpoint = torch.load(job_dir / "checkpoints/last.ckpt", weights_only=True)
    assert job_checkpoint["saeseeds"]["seeds"] == [2, 1]
    for row, seed in enumerate((2, 1)):
        own = torch.load(tmp_path / f"seed{seed}/checkpoints/last.ckpt", weights_only=True)
        tracker = job_checkpoint["state_dict"]["tokens_since_fired"][row]
        assert torch.equal(tracker, own["state_dict"]["tokens_since_fired"][0])

    # A complete folder is skipped; a deleted one is trained again, to the same bytes, from the
    # job's final checkpoint (without its snapshots: the weights they held are gone).
    weights = (job_dir / "seed=1" / contract.WEIGHTS_FILE).read_bytes()
    shutil.rmtree(job_dir / "seed=2")
    run_job(compose_train([*common, "seeds=[2,1]", "resume=true"], job_dir))
    assert (job_dir / "seed=1" / contract.WEIGHTS_FILE).read_bytes() == weights
    assert_same_run(tmp_path / "seed2", job_dir / "seed=2", with_snapshots=False)
    assert not (job_dir / "seed=2" / contract.SNAPSHOTS_DIR).exists()


def test_order_seed_null_is_the_old_behaviour(tmp_path):
    """order_seed=null is left out of the recorded config, so older folders still match, and
    order_seed=<seed> trains the same SAE as null."""
    common = [*TINY_SAE, *TINY_SYNTHETIC, "logger=none", "seed=3", "trainer.max_epochs=1"]
    train(compose_train(common, tmp_path / "null"))
    train(compose_train([*common, "order_seed=3"], tmp_path / "explicit"))
    null, explicit = tmp_path / "null", tmp_path / "explicit"
    assert (null / contract.WEIGHTS_FILE).read_bytes() == (
        explicit / contract.WEIGHTS_FILE
    ).read_bytes()
    config = json.loads((null / contract.ENVIRONMENT_FILE).read_text())["config"]
    assert "order_seed" not in config and "seeds" not in config
    assert contract.condition_config({"seed": 1, "order_seed": None, "seeds": [1]}) == {}


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["seeds=[1,2]"], "needs the seed of that stream: add order_seed=N"),
        (["seeds=[1,1]", "order_seed=0"], "repeats a seed"),
        (["seeds=[]", "order_seed=0"], "seeds=[] is not valid"),
        (["seeds=[1,-2]", "order_seed=0"], "list of integers in [0, 2^32)"),
        (["order_seed=-1"], "order_seed=-1 is not valid"),
        (["seeds=[1,2]", "order_seed=0", "trainer.devices=2"], "trains on one device"),
    ],
)
def test_bad_seed_options_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_train_config(compose_train([*TINY_SAE, *TINY_SYNTHETIC, *overrides]))


@pytest.mark.slow
def test_multirun_of_seeds_in_one_job_matches_the_sweep_of_seeds(tmp_path):
    """`-m 'seeds=[1,2]' order_seed=0 sae.n_features=32,64` writes the folders (names, bytes, one
    W&B run each) of `-m seed=1,2 order_seed=0 sae.n_features=32,64`; re-running it skips."""
    # Few overrides: folder names longer than 200 bytes are shortened with the job number.
    common = [
        "data=synthetic",
        "data.d_in=16",
        "data.n_tokens=4096",
        "data.batch_size=256",
        "sae.k=4",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "order_seed=0",
        "sae.n_features=32,64",
    ]
    sweeps = {"own": ["seed=1,2"], "together": ["seeds=[1,2]"]}
    for name, seeds in sweeps.items():
        result = run_app(
            "train.py", "-m", *seeds, *common, f"hydra.sweep.dir={tmp_path / name}", cwd=tmp_path
        )
        assert result.returncode == 0, result.stderr[-3000:]
    own = sorted(p.parent.name for p in (tmp_path / "own").glob("*/COMPLETE"))
    together = sorted(p.parent.name for p in (tmp_path / "together").glob("*/COMPLETE"))
    assert len(own) == 4 and together == own
    for folder in own:
        single, multi = tmp_path / "own" / folder, tmp_path / "together" / folder
        assert_same_run(single, multi)
        assert (single / ".hydra/config.yaml").read_text() == (
            multi / ".hydra/config.yaml"
        ).read_text()
        runs = [
            offline_wandb_run(next((d / "wandb").glob("offline-run-*"))) for d in (single, multi)
        ]
        assert runs[1]["name"] == folder and runs[1]["group"] == runs[0]["group"].replace(
            "own", "together"
        )
        assert runs[1]["history_keys"] == runs[0]["history_keys"]
        assert runs[1]["history_rows"] == runs[0]["history_rows"]
        assert runs[1]["history_values"]["val/fvu"] == runs[0]["history_values"]["val/fvu"]
        assert runs[1]["summary"]["final/fvu"] == runs[0]["summary"]["final/fvu"]

    again = run_app(
        "train.py",
        "-m",
        "seeds=[1,2]",
        *common,
        f"hydra.sweep.dir={tmp_path / 'together'}",
        cwd=tmp_path,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "4 jobs: 4 skipped, 0 resumed, 0 started, 0 failed" in again.stdout
