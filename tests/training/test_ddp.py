"""One SAE on several processes (Lightning DDP, gloo on the CPU): each process trains on its own
shard of every batch, the dead-latent tracker counts every shard, and only rank 0 writes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from saeseeds import contract
from saeseeds.activations.shards import GeneratedShards, TrainingRows
from saeseeds.config.validation import validate_train_config
from saeseeds.errors import ConfigError
from saeseeds.training.datamodule import process_share, training_rows
from saeseeds.training.run import train
from tests.helpers import TINY_SAE, TINY_SYNTHETIC, compose_train, run_app

# Latents die within this window, so the all-reduced tracker and AuxK are exercised.
DEAD_LATENTS = ["sae.n_features=128", "sae.k=2", "sae.dead_tokens_threshold=512"]


def test_each_process_takes_a_disjoint_shard_of_every_global_batch():
    def rows(part: slice = slice(None)):
        shards = GeneratedShards(
            lambda i, n: torch.randn(n, 4, generator=torch.Generator().manual_seed(i)),
            4,
            100,
            torch.float32,
            "random rows",
        )
        reader = training_rows(TrainingRows(shards, 1000), 64, 2, seed=3)
        reader.part = part
        return reader

    single = rows()
    shards = [rows(process_share(64, rank, 4)) for rank in range(4)]
    for step in range(single.order.steps_per_epoch):
        parts = torch.cat([shard[(0, step)] for shard in shards])
        assert parts.shape == (64, 4) and torch.equal(parts, single[(0, step)])
    with pytest.raises(ConfigError, match="multiple of the 3 training processes"):
        process_share(64, 0, 3)


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_fork"])
def test_worker_process_strategies_are_refused(strategy):
    cfg = compose_train([*TINY_SAE, *TINY_SYNTHETIC, f"trainer.strategy={strategy}"])
    with pytest.raises(ConfigError, match="use trainer.strategy=ddp"):
        validate_train_config(cfg)


def test_ddp_inside_a_multirun_is_refused_before_training(tmp_path):
    result = run_app(
        "train.py",
        "-m",
        "seed=1,2",
        *TINY_SAE,
        *TINY_SYNTHETIC,
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 1
    assert "re-runs the whole sweep" in result.stderr
    assert "2 jobs: 0 skipped, 0 resumed, 0 started, 2 failed" in result.stdout
    assert not list((tmp_path / "sweep").glob("*/COMPLETE"))


@pytest.mark.slow
def test_two_processes_train_the_sae_of_one(tmp_path):
    """`trainer.devices=2 trainer.strategy=ddp` (2 CPU processes, gloo) trains the SAE of one
    process in the same number of steps; rank 0 alone writes the folder and its one W&B run."""
    overrides = [*TINY_SAE, *TINY_SYNTHETIC, *DEAD_LATENTS, "trainer.accelerator=cpu"]
    train(compose_train([*overrides, "logger=none"], tmp_path / "one"))
    ddp_dir = tmp_path / "two"
    result = run_app(
        "train.py",
        *overrides,
        "trainer.devices=2",
        "trainer.strategy=ddp",
        f"hydra.run.dir={ddp_dir}",
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    # Not bit for bit: DDP averages the shards' gradients, and AuxK normalises by each shard's
    # residual variance, so rounding and AuxK differ slightly from one process's.
    one, two = (load_file(d / contract.WEIGHTS_FILE) for d in (tmp_path / "one", ddp_dir))
    for name, dim in (("W_dec", 1), ("W_enc", 0)):
        cosines = torch.nn.functional.cosine_similarity(one[name], two[name], dim=dim)
        assert float(cosines.min()) > 0.99, name
    metrics = [
        json.loads((d / contract.METRICS_FILE).read_text()) for d in (tmp_path / "one", ddp_dir)
    ]
    assert metrics[0]["steps"] == metrics[1]["steps"]
    assert metrics[1]["fvu"] == pytest.approx(metrics[0]["fvu"], rel=1e-3)
    # The tracker counts the tokens of both shards: as one process's, not half of them.
    trackers = [
        torch.load(d / "checkpoints/last.ckpt", weights_only=True)["state_dict"][
            "tokens_since_fired"
        ]
        for d in (tmp_path / "one", ddp_dir)
    ]
    assert int(trackers[0].max()) >= 512 and torch.equal(trackers[0], trackers[1])
    assert len(list((ddp_dir / "wandb").glob("offline-run-*"))) == 1
    assert (
        json.loads((ddp_dir / contract.ENVIRONMENT_FILE).read_text())["config"]["trainer"][
            "devices"
        ]
        == 2
    )
