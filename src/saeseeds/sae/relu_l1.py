"""The ReLU SAE with an L1 penalty weighted by decoder norms (Anthropic, "Circuits Updates —
April 2024", the "April update" form; the architecture Paulo & Belrose 2025 found more stable).

z = ReLU(W_encᵀ(x − b_dec) + b_enc), x̂ = W_decᵀ z + b_dec. The loss per token is
(‖x − x̂‖² + λ Σ_i z_i ‖W_dec,i‖) / d_in, i.e. the April update's loss divided by d_in so that its
first term is the element-wise MSE every architecture logs; λ therefore has the April update's
scale (they used λ = 5 with inputs scaled to E‖x‖² = d_in, as ``sae.normalize=scalar`` does). λ
rises linearly from 0 over the first ``l1_warmup_fraction`` of training. The decoder rows are
not constrained to unit norm: the penalty's norm factor keeps them from trading magnitude for
sparsity. Initialisation follows the April update: decoder rows of norm ``init_decoder_norm`` in
random directions, W_enc = W_decᵀ, b_enc = 0; b_dec starts at the geometric median.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from saeseeds.sae.base import SAE, SAEOutput, warmup_scale
from saeseeds.sae.configs import ReluL1Config
from saeseeds.sae.kernels import encoder_pre_activations, squared_error, tied_init


class ReluL1SAE(SAE):
    architecture = "relu_l1"
    Config = ReluL1Config
    config: ReluL1Config

    def __init__(self, d_in: int, config: ReluL1Config):
        super().__init__(d_in, config)
        self.l1_scale = 1.0  # the warm-up's current fraction of l1_coefficient

    def initialize(self, activation_sample: Tensor, generator: torch.Generator) -> None:
        tied_init(self, activation_sample, generator, norm=self.config.init_decoder_norm)

    def cfg_fields(self) -> dict[str, Any]:
        return {"l1_coefficient": self.config.l1_coefficient}

    def set_progress(self, step: int, total_steps: int) -> None:
        self.l1_scale = warmup_scale(step, total_steps, self.config.l1_warmup_fraction)

    def encode(self, x: Tensor) -> Tensor:  # [batch, n_features]
        return F.relu(encoder_pre_activations(x, self.W_enc, self.b_enc, self.b_dec))

    def forward(self, x: Tensor, dead_mask: Tensor | None = None) -> SAEOutput:
        latents = self.encode(x)  # [batch, n_features]
        reconstruction = self.decode(latents)
        error = squared_error(x, reconstruction)
        decoder_norms = self.W_dec.norm(dim=1)  # [n_features]
        penalty = (latents * decoder_norms).sum(-1).mean() / self.d_in
        coefficient = self.config.l1_coefficient * self.l1_scale
        all_latents = torch.arange(self.n_features, device=x.device).expand_as(latents)
        losses = {"mse": error.mean, "l1": coefficient * penalty}
        return SAEOutput(reconstruction, latents, all_latents, losses, error.total)
