"""The Matryoshka BatchTopK SAE of Bussmann, Nabeshima, Karvonen & Nanda (2025), "Learning
Multi-Level Features with Matryoshka Sparse Autoencoders".

A BatchTopK SAE (:mod:`saeseeds.sae.batchtopk`: the batch-wide selection, AuxK and the inference
threshold are that module's) whose dictionary is read as nested prefixes: latents [0, m₁),
[0, m₂), …, [0, n_features). Each prefix must reconstruct x on its own, x̂_m = z[:m]·W_dec[:m] +
b_dec, and the loss sums the MSE of every prefix: the whole dictionary's is the ``mse`` term, the
inner prefixes' sum is ``prefix_mse``. Early latents so learn the general features and later ones
refine them, which Bussmann et al. find reduces feature absorption.

The prefixes are fixed (Bussmann et al.); the per-step sampled prefixes of Nabeshima (2024) are
not offered. The default widths n/16, n/8, n/4, n/2 are the group sizes n/16, n/16, n/8, n/4, n/2
of Bussmann et al.'s released configuration. Latents are saved in prefix order (latent i belongs
to every prefix wider than i; cfg.json records ``prefix_widths``), and the inference threshold is
BatchTopK's extra tensor ``threshold``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from saeseeds.sae.base import SAEOutput
from saeseeds.sae.batchtopk import BatchTopKSAE
from saeseeds.sae.configs import MatryoshkaConfig, prefix_widths
from saeseeds.sae.kernels import squared_error


class MatryoshkaSAE(BatchTopKSAE):
    architecture = "matryoshka"
    Config = MatryoshkaConfig
    config: MatryoshkaConfig

    def __init__(self, d_in: int, config: MatryoshkaConfig):
        super().__init__(d_in, config)
        self.prefix_widths = prefix_widths(config.prefix_fractions, config.n_features)

    def cfg_fields(self) -> dict[str, Any]:
        return {"k": self.k, "prefix_widths": self.prefix_widths}

    def forward(self, x: Tensor, dead_mask: Tensor | None = None) -> SAEOutput:
        output = super().forward(x, dead_mask)
        if self.training:
            output.losses["prefix_mse"] = self.inner_prefix_mse(x, output.latent_values)
        return output

    def inner_prefix_mse(self, x: Tensor, latents: Tensor) -> Tensor:
        """Σ over the inner prefixes of the MSE of their reconstructions, built group by group."""
        reconstruction = self.b_dec.expand_as(x)
        total = x.new_zeros(())
        start = 0
        for width in self.prefix_widths[:-1]:
            reconstruction = reconstruction + latents[:, start:width] @ self.W_dec[start:width]
            total = total + squared_error(x, reconstruction).mean
            start = width
        return total
