"""The JumpReLU SAE of Rajamanoharan et al. (2024), "Jumping Ahead", as trained for Gemma Scope.

z_i = pre_i · 1[pre_i > θ_i], with pre = W_encᵀ(x − b_dec) + b_enc, a threshold θ_i ≥ 0 learned per
latent, and x̂ = W_decᵀ z + b_dec. The loss per token is (‖x − x̂‖² + λ·L0(z)) / d_in, i.e. the
paper's loss divided by d_in so that its first term is the element-wise MSE every architecture
logs (λ keeps the paper's and SAE Lens's scale, with inputs normalised to E‖x‖² = d_in); λ rises
linearly from 0 over the first ``l0_warmup_fraction`` of training (the paper's warm-up).

The step in z and in L0 has no gradient, so θ learns through the paper's straight-through
estimators (§4): with a rectangle kernel K of width ε (``bandwidth``),
∂z_i/∂θ_i = −(θ_i/ε)·K((pre_i − θ_i)/ε) and ∂L0/∂θ_i = −(1/ε)·K((pre_i − θ_i)/ε), while
∂z_i/∂pre_i = 1[pre_i > θ_i] and L0 sends nothing to pre (DeepMind's "step" L0, not Anthropic's
tanh penalty). Choices the paper leaves open, taken from SAE Lens 6: θ starts at 0.01, ε = 0.05.

One departure from the paper: θ is a parameter itself, projected onto θ ≥ 0 after each step,
not exp(log θ). Adam moves a parameter by about one learning rate per step whatever its
gradient, so log θ moves θ by only θ·lr: from 0.01, θ could not reach the O(1) thresholds that
inputs of unit scale need within the few thousand steps trained here (SAE Lens and
dictionary_learning parametrise θ directly for the same reason). Decoder rows have unit norm,
as for Top-K (the L0 penalty does not depend on them); initialisation is Top-K's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from saeseeds.errors import ConfigError
from saeseeds.sae.base import SAE, SAEConfig, SAEOutput, register, warmup_scale
from saeseeds.sae.kernels import encoder_pre_activations, tied_init
from saeseeds.sae.topk import UnitNormDecoder


@dataclass
class JumpReLUConfig(SAEConfig):
    """A JumpReLU SAE (Rajamanoharan et al. 2024) with DeepMind's L0 penalty."""

    architecture: str = "jumprelu"
    l0_coefficient: float = 1.0
    """λ of the L0 penalty (SAE Lens's scale); larger gives a smaller L0. Use
    ``scripts/sweep_architectures.py`` to find the λ that reaches a target L0."""
    l0_warmup_fraction: float = 0.1
    """λ rises linearly from 0 to l0_coefficient over this fraction of training."""
    threshold_init: float = 0.01
    """Initial threshold θ of every latent (SAE Lens 6's default)."""
    bandwidth: float = 0.05
    """Width ε of the straight-through estimator's rectangle kernel (SAE Lens 6's default)."""
    unit_norm_decoder: bool = True
    """Keep decoder rows at unit norm; false leaves them free (e.g. for ``sae.weight_l2``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.l0_coefficient < 0:
            raise ConfigError(f"sae.l0_coefficient={self.l0_coefficient} must be >= 0.")
        if not 0.0 <= self.l0_warmup_fraction <= 1.0:
            raise ConfigError(
                f"sae.l0_warmup_fraction={self.l0_warmup_fraction} must be in [0, 1]."
            )
        if not self.threshold_init >= 0:
            raise ConfigError(f"sae.threshold_init={self.threshold_init} must be >= 0.")
        if not self.bandwidth > 0:
            raise ConfigError(f"sae.bandwidth={self.bandwidth} must be > 0.")


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


@register
class JumpReLUSAE(UnitNormDecoder, SAE):
    architecture = "jumprelu"
    Config = JumpReLUConfig
    config: JumpReLUConfig

    def __init__(self, d_in: int, config: JumpReLUConfig):
        super().__init__(d_in, config)
        # Saved with the weights as the contract's extra tensor ``threshold`` (never < 0).
        self.threshold = torch.nn.Parameter(torch.full((self.n_features,), config.threshold_init))
        self.l0_scale = 1.0  # the warm-up's current fraction of l0_coefficient

    def initialize(self, activation_sample: Tensor, generator: torch.Generator) -> None:
        tied_init(self, activation_sample, generator, norm=1.0)
        with torch.no_grad():
            self.threshold.fill_(self.config.threshold_init)

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
        mse, fvu = self.fvu(x, reconstruction)
        losses = {"mse": mse}
        if self.training:
            l0 = Step.apply(pre, threshold, self.config.bandwidth).sum(-1).mean()
            coefficient = self.config.l0_coefficient * self.l0_scale
            losses["l0"] = coefficient * l0 / self.d_in
        all_latents = torch.arange(self.n_features, device=x.device).expand_as(latents)
        return SAEOutput(reconstruction, latents, all_latents, losses, fvu)

    def after_optimizer_step(self) -> None:
        super().after_optimizer_step()
        with torch.no_grad():
            self.threshold.clamp_(min=0.0)  # the projection that keeps θ >= 0
