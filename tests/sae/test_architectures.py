"""Every registered architecture honours the interface the trainer, evaluation and writer use."""

from __future__ import annotations

import pytest
import torch

from saeseeds.contract import THRESHOLD_TENSOR, WEIGHT_TENSORS
from saeseeds.errors import ConfigError
from saeseeds.sae import REGISTRY, architecture, architecture_config, build_sae
from saeseeds.sae.batchtopk import BatchTopKConfig, BatchTopKSAE
from saeseeds.sae.relu_l1 import ReluL1Config, ReluL1SAE
from saeseeds.sae.topk import TopKConfig
from saeseeds.training.module import sae_step
from tests.helpers import REPO_ROOT

D_IN, N_FEATURES = 12, 40


def trained_looking(name: str, seed: int = 0):
    """An initialised SAE of ``name`` after a few optimiser steps on a fixed batch."""
    config_class = architecture(name).Config
    fields = config_class.__dataclass_fields__
    config = config_class(n_features=N_FEATURES, **({"k": 4} if "k" in fields else {}))
    sae = build_sae(D_IN, config)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(256, D_IN, generator=generator) * 2 + 1
    sae.initialize(x, generator)
    dead = torch.zeros(N_FEATURES, dtype=torch.bool)
    dead[::5] = True
    train_steps(sae, x, 5, dead_mask=dead)
    return sae.eval(), x


def train_steps(
    sae, x: torch.Tensor, steps: int, lr: float = 1e-2, dead_mask: torch.Tensor | None = None
) -> list[float]:
    """Adam steps on one batch, as the trainer takes them (schedule, penalty, decoder
    constraint); returns the losses."""
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
    sae.train()
    losses = []
    for step in range(steps):
        sae.set_progress(step, steps)
        output = sae(x, dead_mask)
        loss = sum({**output.losses, **sae.weight_penalty()}.values())
        optimizer.zero_grad()
        loss.backward()
        sae.before_optimizer_step()
        optimizer.step()
        sae.after_optimizer_step()
        losses.append(float(loss.detach()))
    return losses


def test_every_architecture_is_registered_with_its_yaml():
    expected = {"topk", "relu_l1", "batchtopk", "jumprelu", "matryoshka", "archetypal"}
    assert expected <= set(REGISTRY)
    assert {path.stem for path in (REPO_ROOT / "conf" / "sae").glob("*.yaml")} == set(REGISTRY)
    with pytest.raises(ConfigError, match="'gated' is not available; choose one of"):
        architecture("gated")


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_each_config_names_the_sae_class_that_implements_it(name):
    """A config that inherited its parent's ``sae_class`` would build the parent architecture."""
    sae_class = architecture(name)
    assert sae_class.Config is REGISTRY[name] is architecture_config(name)
    assert sae_class.architecture == name == REGISTRY[name].architecture


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_folded_weights_act_on_raw_activations(name):
    """decode(encode(x)) of the folded copy on raw x equals the trained SAE on scaled x."""
    sae, x = trained_looking(name)
    scale = 0.37
    folded = build_sae(D_IN, sae.config).eval()
    folded.load_folded(sae.folded_state(scale))
    with torch.no_grad():
        scaled = sae(x * scale).reconstruction / scale
        raw = folded(x).reconstruction
        torch.testing.assert_close(raw, scaled, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(folded.decode(folded.encode(x)), raw, rtol=1e-4, atol=1e-5)
    state = sae.folded_state(scale)
    assert set(WEIGHT_TENSORS) <= set(state)
    assert all(tensor.dtype == torch.float32 for tensor in state.values())


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_losses_are_named_and_latents_match_the_reconstruction(name):
    sae, x = trained_looking(name)
    sae.train()
    output = sae(x, torch.zeros(N_FEATURES, dtype=torch.bool))
    assert "mse" in output.losses and all(term.ndim == 0 for term in output.losses.values())
    dense = torch.zeros(len(x), N_FEATURES).scatter_add(
        1, output.latent_indices.contiguous(), output.latent_values.contiguous()
    )
    torch.testing.assert_close(sae.decode(dense), output.reconstruction, rtol=1e-4, atol=1e-5)


def test_relu_l1_penalty_warms_up_and_weights_decoder_norms():
    config = ReluL1Config(n_features=N_FEATURES, l1_coefficient=2.0, l1_warmup_fraction=0.5)
    sae = ReluL1SAE(D_IN, config)
    sae.initialize(torch.randn(64, D_IN), torch.Generator().manual_seed(0))
    x = torch.randn(32, D_IN)
    sae.set_progress(0, 100)
    early = sae(x).losses["l1"]
    sae.set_progress(49, 100)
    full = sae(x).losses["l1"]
    torch.testing.assert_close(early * 50, full)
    latents = sae.encode(x)
    expected = 2.0 * (latents * sae.W_dec.norm(dim=1)).sum(-1).mean() / D_IN
    torch.testing.assert_close(full, expected)
    assert sae.cfg_fields() == {"l1_coefficient": 2.0}


def test_batchtopk_keeps_k_per_token_on_average_and_learns_its_threshold():
    sae = BatchTopKSAE(D_IN, BatchTopKConfig(n_features=N_FEATURES, k=4, threshold_decay=0.5))
    sae.initialize(torch.randn(64, D_IN), torch.Generator().manual_seed(0))
    x = torch.randn(100, D_IN, generator=torch.Generator().manual_seed(1))
    output = sae.train()(x)
    active = output.latent_values > 0
    assert int(active.sum()) == 4 * 100  # k·batch over the whole batch
    assert active.sum(1).min() != active.sum(1).max()  # ... not k for every token
    smallest = float(output.latent_values[active].min())
    assert float(sae.threshold[0]) == pytest.approx(smallest)  # first batch sets it
    sae(x)
    assert float(sae.threshold[0]) == pytest.approx(smallest)  # same batch, same minimum
    inference = sae.eval()(x).latent_values
    assert torch.equal(inference > 0, sae.encode(x) > 0)
    assert THRESHOLD_TENSOR in sae.folded_state(1.0)
    assert torch.all(sae.folded_state(1.0)[THRESHOLD_TENSOR] == sae.threshold[0])


def test_invalid_architecture_fields_name_the_value():
    with pytest.raises(ConfigError, match=r"sae.l1_coefficient=-1.0 must be >= 0"):
        ReluL1Config(l1_coefficient=-1.0)
    with pytest.raises(ConfigError, match=r"sae.threshold_decay=1.0 must be in \[0, 1\)"):
        BatchTopKConfig(threshold_decay=1.0)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_weight_penalty_is_an_l2_term_on_both_weight_matrices(name):
    """Jedryszek & Crook (2026): λ(‖W_enc‖² + ‖W_dec‖²), here divided by d_in like the mse."""
    sae, x = trained_looking(name)
    assert sae.weight_penalty() == {}  # off by default
    sae.config.weight_l2 = 0.3
    sae.train()
    decoder = sae.trained_decoder()
    expected = 0.3 * (sae.W_enc.pow(2).sum() + decoder.pow(2).sum()) / D_IN
    torch.testing.assert_close(sae.weight_penalty()["weight_l2"], expected)
    tracker = torch.zeros(N_FEATURES, dtype=torch.long)
    loss, metrics = sae_step(sae, x, tracker, dead_tokens_threshold=10**9)
    torch.testing.assert_close(metrics["train/weight_l2"], expected)
    torch.testing.assert_close(loss, sum(sae(x).losses.values()) + expected)


def test_weight_penalty_shrinks_a_free_decoder_and_the_encoder():
    """With the unit-norm constraint off (as Jedryszek & Crook train Top-K), the penalty reaches
    the decoder rows too."""
    norms = {}
    for weight_l2 in (0.0, 1.0):
        config = TopKConfig(
            n_features=N_FEATURES, k=4, unit_norm_decoder=False, weight_l2=weight_l2
        )
        sae = build_sae(D_IN, config)
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(256, D_IN, generator=generator) * 2 + 1
        sae.initialize(x, generator)
        train_steps(sae, x, 30)
        norms[weight_l2] = (float(sae.W_dec.detach().norm()), float(sae.W_enc.detach().norm()))
    assert norms[1.0][0] < 0.8 * norms[0.0][0] and norms[1.0][1] < 0.8 * norms[0.0][1], norms
    assert norms[0.0][0] != pytest.approx(N_FEATURES**0.5)  # rows left free, not renormalised
