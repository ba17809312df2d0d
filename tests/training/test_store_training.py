"""Training on a language model's activations through the store, as train.py runs a job: seeds
streamed in one job (``'seeds=[...]' data.store=false``) and a store folder given as
``data.path`` train the very SAEs of the store jobs; the geometry control is generated shard by
shard from the store's statistics; every run records the identity of its data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from saeseeds import contract
from saeseeds.training.job import run_job
from saeseeds.training.run import train
from tests.helpers import compose_train, store_folders
from tests.training.test_text_cli import TINY_TEXT as TEXT_CLI_OPTIONS

TINY_TEXT = [*TEXT_CLI_OPTIONS, "trainer.max_epochs=2", "order_seed=0"]


def text_config(tiny_llama: Path, tmp_path: Path, *overrides: str, output_dir: Path):
    common = [
        "model=local",
        f"model.path={tiny_llama}",
        *TINY_TEXT,
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"paths.model_cache_dir={tmp_path / 'models'}",
    ]
    return compose_train([*common, *overrides], output_dir)


def weights(run_dir: Path) -> bytes:
    return (run_dir / contract.WEIGHTS_FILE).read_bytes()


def provenance(run_dir: Path) -> dict:
    return json.loads((run_dir / contract.ENVIRONMENT_FILE).read_text())["data_provenance"]


def test_seeds_streamed_in_one_job_are_the_saes_of_their_own_store_jobs(tiny_llama, tmp_path):
    """``'seeds=[2,1]' data.store=false``: one streamed pass of forward passes per epoch, shared
    by both seeds, and the folders of ``seed=S`` jobs that read the store."""
    job = tmp_path / "job"
    run_job(text_config(tiny_llama, tmp_path, "seeds=[2,1]", "data.store=false", output_dir=job))
    assert not (tmp_path / "cache" / "stores").exists()  # streaming writes no store
    for seed in (1, 2):
        own = tmp_path / str(seed)
        train(text_config(tiny_llama, tmp_path, f"seed={seed}", output_dir=own))
        streamed = job / f"seed={seed}"
        assert weights(streamed) == weights(own)
        assert provenance(streamed)["streamed"] and not provenance(own)["streamed"]
        assert provenance(streamed)["data_identity"] == provenance(own)["data_identity"]
        metrics = [json.loads((d / contract.METRICS_FILE).read_text()) for d in (streamed, own)]
        assert metrics[0]["ce_loss_score"] == metrics[1]["ce_loss_score"]
    assert len(store_folders(tmp_path / "cache")) == 1


def test_scoring_in_bf16_changes_the_ce_loss_score_a_little_and_the_weights_not_at_all(
    tiny_llama, tmp_path
):
    exact, fast = tmp_path / "float32", tmp_path / "bfloat16"
    on_cpu = ["seed=1", "model.device=cpu"]  # auto on a CUDA device with bf16 would take bf16
    train(text_config(tiny_llama, tmp_path, *on_cpu, output_dir=exact))
    train(text_config(tiny_llama, tmp_path, *on_cpu, "model.eval_dtype=bfloat16", output_dir=fast))
    assert weights(fast) == weights(exact)
    choices = [
        json.loads((d / contract.ENVIRONMENT_FILE).read_text())["eval_precision_choice"]
        for d in (exact, fast)
    ]
    assert [choice["chosen"] for choice in choices] == ["float32", "bfloat16"]
    assert choices[1]["reason"] == "set by model.eval_dtype"
    scores = [
        json.loads((d / contract.METRICS_FILE).read_text())["ce_loss_score"] for d in (exact, fast)
    ]
    assert scores[0] != scores[1] and scores[1] == pytest.approx(scores[0], abs=0.02)


def test_a_store_folder_as_data_path_trains_the_sae_of_its_text_job(tiny_llama, tmp_path):
    text_run = tmp_path / "text"
    train(text_config(tiny_llama, tmp_path, "seed=1", output_dir=text_run))
    (folder,) = store_folders(tmp_path / "cache")
    from_folder = tmp_path / "from_folder"
    cfg = compose_train(
        [
            *[o for o in TINY_TEXT if not o.startswith(("data.", "hook."))],
            "data=activations",
            f"data.path={folder}",
            "data.n_tokens=2048",
            "data.batch_size=256",
            "data.window_shards=2",
            "seed=1",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ],
        from_folder,
    )
    train(cfg)
    assert weights(from_folder) == weights(text_run)
    assert provenance(from_folder)["data_identity"] == provenance(text_run)["data_identity"]
    cfg_json = json.loads((from_folder / contract.CFG_FILE).read_text())
    assert cfg_json["hook_name"] == "blocks.1.hook_resid_pre" and cfg_json["activation_dtype"] == (
        "float16"
    )


def test_the_geometry_control_of_a_text_store(tiny_llama, tmp_path):
    """Gaussian rows with the store prefix's mean and covariance, shard for shard."""
    from saeseeds.training.run import build_source

    cfg = text_config(tiny_llama, tmp_path, "data.control=gaussian", output_dir=tmp_path / "run")
    splits = build_source(cfg).load()
    source_rows = build_source(text_config(tiny_llama, tmp_path, output_dir=tmp_path)).load()
    assert splits.train.used_rows == source_rows.train.used_rows  # same shards and rows
    assert splits.heldout.shape == source_rows.heldout.shape
    rows = torch.cat([splits.train.read(i) for i in range(splits.train.n_shards)]).double()
    reference = source_rows.train.stats(scatter=True)
    assert torch.allclose(rows.mean(0), reference.mean, atol=0.1 * reference.mean.abs().max())
    relative = (torch.cov(rows.T) - reference.covariance()).norm() / reference.covariance().norm()
    assert relative < 0.25  # 2048 samples in 64 dimensions
    again = build_source(cfg).load()
    assert torch.equal(again.train.read(3), splits.train.read(3))  # drawn from (seed, shard)
    identity = splits.provenance["data_identity"]
    assert identity["kind"] == "control" and identity["control_seed"] == 0
    assert identity["source"] == source_rows.provenance["data_identity"]
    assert train(cfg)["fvu"] < 1.0
