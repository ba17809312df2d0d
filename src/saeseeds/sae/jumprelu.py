"""The JumpReLU SAE of Rajamanoharan et al. (2024), "Jumping Ahead", as trained for Gemma Scope.

z_i = pre_i · 1[pre_i > θ_i], with pre = W_encᵀ(x − b_dec) + b_enc, a threshold θ_i ≥ 0 learned per
latent, and x̂ = W_decᵀ z + b_dec. The loss per token is (‖x − x̂‖² + λ·L0(z)) / d_in, i.e. the
paper's loss divided by d_in so that its first term is the element-wise MSE every architecture
logs; λ weighs one active latent against squared error with inputs normalised to E‖x‖² = d_in
(the paper normalises to E‖x‖² = 1, so its λ values do not carry over). λ rises linearly from 0
over the first ``l0_warmup_fraction`` of training (the paper's warm-up).

The step in z and in L0 has no gradient, so θ learns through the paper's straight-through
estimators (§4): with a rectangle kernel K of width ε (``bandwidth``),
∂z_i/∂θ_i = −(θ_i/ε)·K((pre_i − θ_i)/ε) and ∂L0/∂θ_i = −(1/ε)·K((pre_i − θ_i)/ε), while
∂z_i/∂pre_i = 1[pre_i > θ_i] and L0 sends nothing to pre (DeepMind's "step" L0, not Anthropic's
tanh penalty). The bandwidth the paper leaves open is SAE Lens 6's, ε = 0.05. Decoder rows have
unit norm, as for Top-K (the L0 penalty does not depend on them); W_enc, W_dec and b_dec start as
Top-K's.

Two departures, both because Adam moves a parameter by about one learning rate per step
whatever its gradient, and the thresholds must travel to O(1) values (inputs have unit scale):
- θ is a parameter itself, projected onto θ ≥ 0 after each step, not exp(log θ): log θ would
  move θ by only θ·lr per step (SAE Lens and dictionary_learning parametrise θ directly for the
  same reason).
- θ starts at √λ, not at SAE Lens's 0.01 (or the paper's equivalent). √λ is where one latent's
  L0 cost equals its reconstruction gain, the threshold of L0-penalised least squares for an
  orthonormal dictionary, so training starts near where it heads. From 0.01, θ climbs about
  one learning rate per step: Gemma Scope trained for billions of tokens, but at this project's
  budgets the thresholds are still rising at the end. On SmolLM2 layer 6 (512 latents, 131k
  tokens x 8 epochs) θ₀ = 0.01 ended at held-out L0 58 for λ = 1 and no λ could reach L0 32,
  while θ₀ = √λ reached L0 27 at λ = 0.5. ``sae.threshold_init=0.01`` restores SAE Lens's.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from saeseeds.sae.base import SAE, SAEOutput, warmup_scale
from saeseeds.sae.configs import JumpReLUConfig
from saeseeds.sae.kernels import encoder_pre_activations, squared_error, tied_init
from saeseeds.sae.topk import UnitNormDecoder


def rectangle(u: Tensor) -> Tensor:
    """The kernel K(u) = 1 on |u| < 1/2, else 0."""
    return (u.abs() < 0.5).to(u.dtype)


class JumpReLU(torch.autograd.Function):
    """z = pre · 1[pre > θ]; the paper's pseudo-derivative for θ."""

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad_z: Tensor) -> tuple[Tensor, Tensor, None]:
        pre, threshold = ctx.saved_tensors
        window = rectangle((pre - threshold) / ctx.bandwidth)
        grad_threshold = -(threshold / ctx.bandwidth) * (window * grad_z).sum(0)
        return grad_z * (pre > threshold), grad_threshold, None


class Step(torch.autograd.Function):
    """H(pre − θ), counted by L0; gradient to θ only (DeepMind's step penalty)."""

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad_step: Tensor) -> tuple[None, Tensor, None]:
        pre, threshold = ctx.saved_tensors
        window = rectangle((pre - threshold) / ctx.bandwidth)
        return None, -(window * grad_step).sum(0) / ctx.bandwidth, None


class JumpReLUSAE(UnitNormDecoder, SAE):
    architecture = "jumprelu"
    Config = JumpReLUConfig
    config: JumpReLUConfig

    def __init__(self, d_in: int, config: JumpReLUConfig):
        super().__init__(d_in, config)
        # Saved with the weights as the contract's extra tensor ``threshold`` (never < 0).
        self.threshold = torch.nn.Parameter(torch.zeros(self.n_features))
        self.l0_scale = 1.0  # the warm-up's current fraction of l0_coefficient

    def initialize(self, activation_sample: Tensor, generator: torch.Generator) -> None:
        tied_init(self, activation_sample, generator, norm=1.0)
        initial = self.config.threshold_init
        with torch.no_grad():
            self.threshold.fill_(
                math.sqrt(self.config.l0_coefficient) if initial is None else initial
            )

    def cfg_fields(self) -> dict[str, Any]:
        return {"l0_coefficient": self.config.l0_coefficient}

    def extra_tensors(self) -> dict[str, Tensor]:
        return {"threshold": self.threshold}

    def set_progress(self, step: int, total_steps: int) -> None:
        self.l0_scale = warmup_scale(step, total_steps, self.config.l0_warmup_fraction)

    def encode(self, x: Tensor) -> Tensor:  # [batch, n_features]
        pre = encoder_pre_activations(x, self.W_enc, self.b_enc, self.b_dec)
        return pre * (pre > self.threshold)

    def forward(self, x: Tensor, dead_mask: Tensor | None = None) -> SAEOutput:
        pre = encoder_pre_activations(x, self.W_enc, self.b_enc, self.b_dec)  # [batch, n]
        threshold = self.threshold.to(pre.dtype)
        latents = JumpReLU.apply(pre, threshold, self.config.bandwidth)
        reconstruction = self.decode(latents)
        error = squared_error(x, reconstruction)
        losses = {"mse": error.mean}
        if self.training:
            l0 = Step.apply(pre, threshold, self.config.bandwidth).sum(-1).mean()
            coefficient = self.config.l0_coefficient * self.l0_scale
            losses["l0"] = coefficient * l0 / self.d_in
        all_latents = torch.arange(self.n_features, device=x.device).expand_as(latents)
        return SAEOutput(reconstruction, latents, all_latents, losses, error.total)

    def after_optimizer_step(self) -> None:
        super().after_optimizer_step()
        with torch.no_grad():
            self.threshold.clamp_(min=0.0)  # the projection that keeps θ >= 0
