"""The interface every SAE architecture implements.

An architecture is one module in this package, holding an :class:`SAE` subclass, and its config
dataclass in :mod:`saeseeds.sae.configs` (registered there, and naming the subclass). The
training module, the held-out evaluation, the run-folder writer and the benchmarks use only this
interface:

- ``initialize`` from a sample of (normalised) training activations;
- ``encode`` (dense latents) and ``decode``;
- ``forward``, returning the reconstruction, the active latents and named loss terms whose sum is
  the training loss;
- ``set_progress`` (schedules such as a coefficient warm-up), and the decoder constraint around
  each optimiser step (``before_optimizer_step``, ``after_optimizer_step``);
- ``folded_state``: the weights that act on raw activations, any extra tensors included;
- ``cfg_fields``: what the architecture adds to ``cfg.json``;
- ``trained_decoder``: the decoder rows as the training loss sees them (W_dec, unless an
  architecture computes it from other parameters);
- ``weight_penalty``: the optional L2 penalty on the weights (``sae.weight_l2``), the same for
  every architecture.

Every architecture shares the contract's parameters: pre = W_encᵀ(x − b_dec) + b_enc and
x̂ = W_decᵀ z + b_dec. This package imports nothing of the project but :mod:`saeseeds.errors`.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from saeseeds.sae.configs import SAEConfig


class SAEOutput(NamedTuple):
    reconstruction: Tensor  # [batch, d_in]
    latent_values: Tensor  # [batch, width]: post-activation values, 0 where a latent is inactive
    latent_indices: Tensor  # [batch, width]: the latent each value belongs to
    losses: dict[str, Tensor]  # named, weighted loss terms; the training loss is their sum
    squared_error: Tensor  # scalar Σ‖x − x̂‖²; the FVU divides it by kernels.total_variance(x)


class SAE(nn.Module):
    """Base class: the contract's four parameters and the parts every architecture shares."""

    architecture: ClassVar[str]
    Config: ClassVar[type[SAEConfig]] = SAEConfig

    def __init__(self, d_in: int, config: SAEConfig):
        super().__init__()
        self.d_in, self.n_features, self.config = d_in, config.n_features, config
        self.W_enc = nn.Parameter(torch.zeros(d_in, self.n_features))
        self.b_enc = nn.Parameter(torch.zeros(self.n_features))
        self.W_dec = nn.Parameter(torch.zeros(self.n_features, d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    # ---- what each architecture defines ----
    def initialize(self, activation_sample: Tensor, generator: torch.Generator) -> None:
        raise NotImplementedError

    def encode(self, x: Tensor) -> Tensor:  # [batch, n_features]
        """Dense latent code of raw inputs, as used at inference."""
        raise NotImplementedError

    def forward(self, x: Tensor, dead_mask: Tensor | None = None) -> SAEOutput:
        raise NotImplementedError

    def default_lr(self) -> float:
        """2e-4 / sqrt(n_features / 2^14): Gao et al. 2024, §A.3, scaling of the Adam step."""
        return 2e-4 / math.sqrt(self.n_features / 2**14)

    def cfg_fields(self) -> dict[str, Any]:
        """Fields this architecture adds to cfg.json."""
        return {}

    def extra_tensors(self) -> dict[str, Tensor]:
        """Tensors saved beside the four parameters (already in raw-activation units)."""
        return {}

    # ---- hooks the training module calls; no-ops unless an architecture needs them ----
    def set_progress(self, step: int, total_steps: int) -> None:
        """Called before every training step, for schedules that depend on progress."""

    def before_optimizer_step(self) -> None:
        """Called after the backward pass, before clipping and the step."""

    def after_optimizer_step(self) -> None:
        """Called after each optimiser step."""

    # ---- shared ----
    def decode(self, z: Tensor) -> Tensor:  # [batch, d_in]
        return z @ self.W_dec + self.b_dec

    def trained_decoder(self) -> Tensor:  # [n_features, d_in]
        """The decoder rows the training loss sees, with their gradient: W_dec itself, except for
        an architecture whose W_dec is computed from other parameters."""
        return self.W_dec

    def weight_penalty(self) -> dict[str, Tensor]:
        """The named loss term of ``sae.weight_l2`` (none when it is 0), which the trainer adds to
        the forward's terms. Jedryszek & Crook (2026) penalise the encoder and decoder weights,
        not the biases, with an explicit term under Adam (not a decoupled AdamW decay); divided
        by d_in like the mse term."""
        if self.config.weight_l2 == 0:
            return {}
        squared_norms = self.W_enc.pow(2).sum() + self.trained_decoder().pow(2).sum()
        return {"weight_l2": self.config.weight_l2 * squared_norms / self.d_in}

    @torch.no_grad()
    def folded_state(self, input_scale: float) -> dict[str, Tensor]:
        """Weights that act on raw activations when training saw ``x * input_scale``.

        encode(s·x) = W_encᵀ(s·x − b_dec) + b_enc = (s·W_enc)ᵀ(x − b_dec/s) + b_enc, and the
        raw reconstruction is x̂/s, so W_enc ← s·W_enc, W_dec ← W_dec/s, b_dec ← b_dec/s. The
        latents themselves do not change, so thresholds on them need no folding.
        """
        s = float(input_scale)
        state = {
            "W_enc": (self.W_enc * s).float().contiguous().cpu(),
            "b_enc": self.b_enc.float().contiguous().cpu(),
            "W_dec": (self.W_dec / s).float().contiguous().cpu(),
            "b_dec": (self.b_dec / s).float().contiguous().cpu(),
        }
        extras = {name: t.float().contiguous().cpu() for name, t in self.extra_tensors().items()}
        return {**state, **extras}

    @torch.no_grad()
    def load_folded(self, state: dict[str, Tensor]) -> None:
        """Load what :meth:`folded_state` returned (e.g. into a fresh SAE for raw inputs)."""
        for name, tensor in state.items():
            getattr(self, name).copy_(tensor)


def warmup_scale(step: int, total_steps: int, warmup_fraction: float) -> float:
    """A penalty coefficient's share at ``step``: rising linearly from 1/warm-up steps to 1 over
    the first ``warmup_fraction`` of training, then 1."""
    warmup_steps = warmup_fraction * total_steps
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
