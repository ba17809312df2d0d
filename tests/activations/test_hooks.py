"""Hooks: every hook point reads the same activations as a full run, and bad hooks are rejected
early with the valid layers or names listed."""

from __future__ import annotations

import pytest
import torch

from saeseeds.activations import hooks, models
from saeseeds.config.hook import HOOK_POINTS, HookConfig
from saeseeds.config.model import ModelConfig
from saeseeds.errors import DataError


@pytest.fixture(scope="module")
def tiny_models(tiny_llama, tiny_gpt2, tmp_path_factory):
    cache = tmp_path_factory.mktemp("model_cache")
    return {
        "llama": models.load_model(ModelConfig(name="local", path=str(tiny_llama)), cache),
        "gpt2": models.load_model(ModelConfig(name="local", path=str(tiny_gpt2)), cache),
    }


def spec(point: str, layer: int) -> hooks.HookSpec:
    return hooks.resolve_hook(
        HookConfig(point=point, layer=layer, name=f"blocks.{layer}.hook_{point}")
    )


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
@pytest.mark.parametrize("point", HOOK_POINTS)
def test_partial_run_reads_what_a_full_run_caches(tiny_models, architecture, point):
    bridge = tiny_models[architecture].bridge
    tokens = torch.randint(2, 500, (2, 12), generator=torch.Generator().manual_seed(0))
    for layer in (0, 1):
        hook = spec(point, layer)
        _, full_run = bridge.run_with_cache(tokens, names_filter=[hook.name])
        assert torch.equal(hooks.read_activations(bridge, hook, tokens), full_run[hook.name])


def test_partial_run_stops_at_the_hook(tiny_models):
    """resid_pre of block 1 never runs block 1 (the model runs only up to the hook's layer)."""
    bridge = tiny_models["llama"].bridge
    ran = []
    handle = bridge.blocks[1].register_forward_hook(lambda *args: ran.append(1))
    try:
        hooks.read_activations(bridge, spec("resid_pre", 1), torch.ones(1, 4, dtype=torch.long))
        assert ran == []
        hooks.read_activations(bridge, spec("resid_post", 1), torch.ones(1, 4, dtype=torch.long))
        assert ran == [1]  # the counter does see block 1 when a hook needs it
    finally:
        handle.remove()


def test_splicing_identity_keeps_logits_and_zeros_change_them(tiny_models):
    bridge = tiny_models["llama"].bridge
    tokens = torch.randint(2, 500, (2, 12), generator=torch.Generator().manual_seed(1))
    clean = hooks.logits_with_replacement(bridge, spec("resid_pre", 1), tokens, None)
    same = hooks.logits_with_replacement(bridge, spec("resid_pre", 1), tokens, lambda a: a)
    zeroed = hooks.logits_with_replacement(bridge, spec("resid_pre", 1), tokens, torch.zeros_like)
    assert torch.equal(clean, same) and not torch.allclose(clean, zeroed)


def test_layer_out_of_range_lists_valid_layers(tiny_models):
    with pytest.raises(DataError, match="hook.layer=7 is out of range .* valid layers are 0 to 1"):
        hooks.check_layer(spec("resid_pre", 7), 2, "tiny")
    with pytest.raises(DataError, match="valid layers are 0 to 1"):
        hooks.check_hook_exists(spec("resid_pre", 7), tiny_models["llama"].bridge, "tiny")


def test_unknown_hook_name_lists_valid_points_and_names(tiny_models):
    bridge = tiny_models["llama"].bridge
    hook = hooks.resolve_hook(HookConfig(point="resid_pre", layer=1, name="blocks.1.hook_nope"))
    with pytest.raises(DataError, match="no hook 'blocks.1.hook_nope'") as error:
        hooks.check_hook_exists(hook, bridge, "tiny")
    assert "resid_pre" in str(error.value) and "blocks.1.hook_mlp_out" in str(error.value)
    with pytest.raises(DataError, match="no hook 'embed.nope'.*layer 0..1"):
        hooks.check_hook_exists(hooks.resolve_hook(HookConfig(name="embed.nope")), bridge, "tiny")


def test_unknown_hook_point_is_a_config_error():
    with pytest.raises(DataError, match="hook.point='resid' is not a hook point; use one of"):
        HookConfig(point="resid", layer=1, name="blocks.1.hook_resid")
