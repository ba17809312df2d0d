"""The Matryoshka BatchTopK SAE: nested prefixes, the summed prefix loss, latents in prefix
order."""

from __future__ import annotations

import pytest
import torch

from saeseeds.errors import ConfigError
from saeseeds.sae.batchtopk import BatchTopKConfig, BatchTopKSAE
from saeseeds.sae.matryoshka import MatryoshkaConfig, MatryoshkaSAE, prefix_widths
from tests.sae.test_architectures import train_steps

D_IN, N_FEATURES = 16, 64


def test_prefix_widths_follow_the_fractions_and_end_with_the_dictionary():
    assert MatryoshkaSAE(D_IN, MatryoshkaConfig(n_features=64)).prefix_widths == [4, 8, 16, 32, 64]
    assert prefix_widths([0.25, 0.5], 10) == [2, 5, 10]
    sae = MatryoshkaSAE(D_IN, MatryoshkaConfig(n_features=64, k=3, prefix_fractions=[0.5]))
    assert sae.cfg_fields() == {"k": 3, "prefix_widths": [32, 64]}


@pytest.mark.parametrize(
    "fractions, message",
    [
        ([0.5, 0.25], r"prefix widths \[32, 16, 64\] .* must increase strictly"),
        ([0.001], r"prefix widths \[0, 64\] .* must increase strictly from at least 1"),
        ([0.5, 1.0], r"sae.prefix_fractions=\[0.5, 1.0\]: each must be in \(0, 1\)"),
    ],
)
def test_invalid_prefixes_name_the_values(fractions, message):
    with pytest.raises(ConfigError, match=message):
        MatryoshkaConfig(n_features=64, prefix_fractions=fractions)


def test_the_loss_sums_every_prefix_reconstruction():
    generator = torch.Generator().manual_seed(0)
    sae = MatryoshkaSAE(D_IN, MatryoshkaConfig(n_features=N_FEATURES, k=4))
    x = torch.randn(128, D_IN, generator=generator)
    sae.initialize(x, generator)
    output = sae.train()(x)
    latents = output.latent_values
    expected = sum(
        (x - (latents[:, :width] @ sae.W_dec[:width] + sae.b_dec)).pow(2).mean()
        for width in sae.prefix_widths[:-1]
    )
    torch.testing.assert_close(output.losses["prefix_mse"], expected)
    torch.testing.assert_close(output.losses["mse"], (x - output.reconstruction).pow(2).mean())
    assert "prefix_mse" not in sae.eval()(x).losses


def first_prefix_fvu(sae, x: torch.Tensor, width: int) -> float:
    """FVU of the reconstruction from the first ``width`` latents alone (inference rule)."""
    with torch.no_grad():
        latents = sae.encode(x)
        reconstruction = latents[:, :width] @ sae.W_dec[:width] + sae.b_dec
        return float((x - reconstruction).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def test_the_first_prefix_alone_reconstructs_far_better_than_batchtopks_first_latents():
    """Latents are saved in prefix order: the first prefix holds the general features."""
    generator = torch.Generator().manual_seed(1)
    directions = torch.nn.functional.normalize(torch.randn(32, D_IN, generator=generator), dim=1)
    codes = torch.rand(512, 32, generator=generator) * (
        torch.rand(512, 32, generator=generator) < 0.1
    )
    x = codes @ directions
    fvus = {}
    for name, sae in {
        "matryoshka": MatryoshkaSAE(D_IN, MatryoshkaConfig(n_features=N_FEATURES, k=4)),
        "batchtopk": BatchTopKSAE(D_IN, BatchTopKConfig(n_features=N_FEATURES, k=4)),
    }.items():
        sae.initialize(x, torch.Generator().manual_seed(2))
        train_steps(sae, x, 80)
        fvus[name] = first_prefix_fvu(sae.eval(), x, width=8)
    assert fvus["matryoshka"] < 0.6 * fvus["batchtopk"], fvus
