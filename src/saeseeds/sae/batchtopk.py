"""The BatchTopK SAE of Bussmann, Leask & Nanda (2024), "BatchTopK Sparse Autoencoders".

Training keeps the k·batch largest ReLU pre-activations over the whole batch, so the number of
active latents varies per token and averages k. Inference cannot look at a batch, so it uses a
threshold θ instead: z = pre · 1[pre > θ] (a JumpReLU with one threshold for every latent). θ is
estimated during training as a running average of the smallest activation each batch kept
(exponential, ``threshold_decay`` per step, starting from the first batch's value), and saved
with the weights as the extra tensor ``threshold`` [n_features] (every entry equal). Unit-norm
decoder rows (``sae.unit_norm_decoder``), initialisation and AuxK are those of the Top-K SAE.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from saeseeds.sae.base import SAE, SAEOutput
from saeseeds.sae.configs import BatchTopKConfig
from saeseeds.sae.kernels import (
    auxk_k,
    auxk_loss,
    encoder_pre_activations,
    sparse_decode,
    squared_error,
    tied_init,
)
from saeseeds.sae.topk import UnitNormDecoder


class BatchTopKSAE(UnitNormDecoder, SAE):
    architecture = "batchtopk"
    Config = BatchTopKConfig
    config: BatchTopKConfig

    def __init__(self, d_in: int, config: BatchTopKConfig):
        super().__init__(d_in, config)
        self.k = config.k
        # A buffer, so checkpoints carry it; one value per latent, as the contract saves it.
        self.register_buffer("threshold", torch.zeros(self.n_features))
        self.register_buffer("threshold_steps", torch.zeros((), dtype=torch.long))

    def initialize(self, activation_sample: Tensor, generator: torch.Generator) -> None:
        tied_init(self, activation_sample, generator, norm=1.0)

    def cfg_fields(self) -> dict[str, Any]:
        return {"k": self.k}

    def extra_tensors(self) -> dict[str, Tensor]:
        return {"threshold": self.threshold}

    def encode(self, x: Tensor) -> Tensor:  # [batch, n_features], inference: the threshold
        pre = encoder_pre_activations(x, self.W_enc, self.b_enc, self.b_dec)
        return pre * (pre > self.threshold)

    def forward(self, x: Tensor, dead_mask: Tensor | None = None) -> SAEOutput:
        if not self.training:
            latents = self.encode(x)
            reconstruction = self.decode(latents)
            error = squared_error(x, reconstruction)
            indices = torch.arange(self.n_features, device=x.device).expand_as(latents)
            return SAEOutput(reconstruction, latents, indices, {"mse": error.mean}, error.total)
        pre = encoder_pre_activations(x, self.W_enc, self.b_enc, self.b_dec)  # [batch, n]
        kept, flat_indices = F.relu(pre).flatten().topk(self.k * x.shape[0], sorted=False)
        latents = torch.zeros_like(pre).flatten().scatter(0, flat_indices, kept).view_as(pre)
        self._update_threshold(kept)
        reconstruction = self.decode(latents)
        error = squared_error(x, reconstruction)
        losses = {
            "mse": error.mean,
            "auxk": self.config.auxk_alpha * self._auxk(pre, error.difference, dead_mask),
        }
        indices = torch.arange(self.n_features, device=x.device).expand_as(latents)
        return SAEOutput(reconstruction, latents, indices, losses, error.total)

    def _auxk(self, pre: Tensor, residual: Tensor, dead_mask: Tensor | None) -> Tensor:
        """AuxK on ``residual`` (x − x̂, detached)."""
        dead_latents = dead_mask.nonzero().squeeze(1) if dead_mask is not None else None
        n_dead = len(dead_latents) if dead_latents is not None else 0
        if n_dead == 0:
            return residual.new_zeros(())
        aux_pre, dead_slots = pre.index_select(1, dead_latents).topk(auxk_k(self.d_in, n_dead))
        aux_reconstruction = sparse_decode(F.relu(aux_pre), dead_latents[dead_slots], self.W_dec)
        return auxk_loss(aux_reconstruction, residual, n_dead, self.d_in)

    @torch.no_grad()
    def _update_threshold(self, kept: Tensor) -> None:
        positive = kept[kept > 0]
        if len(positive) == 0:
            return
        smallest = positive.min().float()
        decay = self.config.threshold_decay if self.threshold_steps > 0 else 0.0
        self.threshold.mul_(decay).add_((1.0 - decay) * smallest)
        self.threshold_steps += 1
