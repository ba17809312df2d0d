"""Models: a local folder loads through the same code as Hub and embedded models, random weights
are seeded, and a model that cannot be had offline fails at once with a clear message."""

from __future__ import annotations

import time

import pytest
import torch

from saeseeds.activations import models
from saeseeds.config.model import ModelConfig
from saeseeds.errors import DataError


@pytest.fixture(autouse=True)
def no_loaded_models():
    models._LOADED.clear()
    yield
    models._LOADED.clear()


def load(path, tmp_path, **fields) -> models.LoadedModel:
    return models.load_model(ModelConfig(name="local", path=str(path), **fields), tmp_path)


def test_local_folder_loads_into_a_bridge_with_its_identity(tiny_llama, tmp_path):
    model = load(tiny_llama, tmp_path)
    assert (model.n_layers, model.d_model, model.n_ctx) == (2, 64, 128)
    assert model.name == tiny_llama.name and model.origin.startswith("local:")
    assert "blocks.1.hook_resid_pre" in model.bridge.hook_dict
    assert len(model.weight_hash) == 64 and len(model.tokenizer_hash) == 64
    assert load(tiny_llama, tmp_path) is model  # kept for the next job of this process
    models._LOADED.clear()
    assert load(tiny_llama, tmp_path).weight_hash == model.weight_hash  # hash is of content


def test_random_weights_follow_the_model_seed(tiny_llama, tmp_path):
    pretrained = load(tiny_llama, tmp_path).weight_hash
    seed_1 = load(tiny_llama, tmp_path, init="random", seed=1)
    assert seed_1.origin.startswith("random(seed=1)")
    hashes = {
        "seed 1": seed_1.weight_hash,
        "seed 1 again": load(tiny_llama, tmp_path, init="random", seed=1).weight_hash,
        "seed 2": load(tiny_llama, tmp_path, init="random", seed=2).weight_hash,
    }
    assert hashes["seed 1"] == hashes["seed 1 again"]
    assert len({pretrained, hashes["seed 1"], hashes["seed 2"]}) == 3
    state = torch.random.get_rng_state()
    load(tiny_llama, tmp_path, init="random", seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched


def test_uncached_hub_model_fails_at_once_offline(tmp_path):
    started = time.perf_counter()
    with pytest.raises(DataError, match="'saeseeds-test/no-such-model'.*not available offline"):
        models.load_model(ModelConfig(name="saeseeds-test/no-such-model"), tmp_path)
    assert time.perf_counter() - started < 10


def test_unreachable_hub_is_detected_without_offline_flags(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    started = time.perf_counter()
    with pytest.raises(DataError, match="not available offline"):
        models.load_model(ModelConfig(name="saeseeds-test/no-such-model"), tmp_path)
    assert time.perf_counter() - started < 10


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"path": "/no/such/folder"}, "does not exist"),
        ({"init": "trained"}, "model.init='trained' is not valid"),
        ({"dtype": "int8"}, "model.dtype='int8' is not valid"),
        ({"eval_dtype": "float16"}, r"model.eval_dtype='float16' is not valid.*'bfloat16'"),
    ],
)
def test_bad_model_settings(tmp_path, fields, message):
    with pytest.raises(DataError, match=message):
        models.load_model(ModelConfig(**{"name": "local", **fields}), tmp_path)


def test_folder_without_config_is_rejected(tmp_path):
    (tmp_path / "weights").mkdir()
    with pytest.raises(DataError, match="has no config.json"):
        models.load_model(ModelConfig(path=str(tmp_path / "weights")), tmp_path)


def test_auto_dtype_follows_this_machines_measurement_and_keys_the_store(make_source, tmp_path):
    """model.dtype=auto: a small model is not timed and stays float32; a cached measurement of
    this machine (injected under model_cache_dir) that found bf16 faster makes it bfloat16, and
    the store key says which dtype built the activations."""
    from saeseeds import precision
    from saeseeds.activations.store_build import store_key

    untimed = make_source(model={"dtype": "auto"})
    untimed_key = store_key(untimed.builder().key_fields)
    choice = untimed.model.dtype_choice
    device = precision.this_device()
    # Untimed either way: too small where the CPU has bf16 units, and no bf16 units otherwise.
    reason = "too small" if device.bf16_units else "without bf16 units"
    assert untimed.model.dtype == torch.float32 and reason in choice["reason"]
    assert untimed_key == store_key(make_source().builder().key_fields)  # float32 as set
    measured = precision.PrecisionChoice(
        choice["workload"], "bfloat16", "measured (injected)", 2.4, 1.0, 0.42, "then", device.key
    )
    precision.write_record(tmp_path / "model_cache", device, measured)
    models._LOADED.clear()
    faster = make_source(model={"dtype": "auto"})
    faster_key = store_key(faster.builder().key_fields)
    assert faster.model.dtype == torch.bfloat16
    assert faster.model.provenance()["model_dtype_choice"]["speedup"] == 2.4
    assert faster_key != untimed_key
    assert faster_key == store_key(make_source(model={"dtype": "bfloat16"}).builder().key_fields)


def test_a_bf16_forward_builds_activations_close_to_float32_ones(make_source):
    """The bf16 path runs on any CPU (slowly without bf16 units); its activations are the float32
    ones to bf16's precision, in a store of their own."""
    rows = {}
    for dtype in ("float32", "bfloat16"):
        models._LOADED.clear()
        splits = make_source(model={"dtype": dtype}, n_tokens=512).load()
        rows[dtype] = splits.heldout
        assert splits.provenance["model_dtype"] == dtype
    assert not torch.equal(rows["float32"], rows["bfloat16"])
    error = (rows["bfloat16"] - rows["float32"]).norm() / rows["float32"].norm()
    assert error < 0.05
