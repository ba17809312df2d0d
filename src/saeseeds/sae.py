"""The Top-K sparse autoencoder as a plain ``nn.Module``.

Owns the maths of Gao et al. (2024), "Scaling and evaluating sparse autoencoders": encoder,
Top-K activation, sparse decoder, AuxK loss, decoder-norm constraint and initialisation.
It knows nothing about Lightning, Hydra, data sources or files.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

AUXK_ALPHA = 1.0 / 32.0  # Gao et al. 2024, Appendix A.2


class SAEOutput(NamedTuple):
    reconstruction: Tensor  # [batch, d_in]
    latent_values: Tensor  # [batch, k], post-ReLU values of the chosen latents
    latent_indices: Tensor  # [batch, k]
    pre_activations: Tensor  # [batch, n_features]
    mse: Tensor  # scalar, mean over elements
    fvu: Tensor  # scalar, sum ||x - x̂||² / sum ||x - mean(x)||²
    aux_loss: Tensor  # scalar, AuxK loss (0 when no latent is dead)


class TopKSAE(nn.Module):
    """x̂ = W_decᵀ ReLU(TopK_k(W_encᵀ(x − b_dec) + b_enc)) + b_dec, with unit-norm decoder rows."""

    def __init__(self, d_in: int, n_features: int, k: int, sparse_decoder: bool = True):
        super().__init__()
        self.d_in, self.n_features, self.k = d_in, n_features, k
        self.sparse_decoder = sparse_decoder
        self.W_enc = nn.Parameter(torch.zeros(d_in, n_features))
        self.b_enc = nn.Parameter(torch.zeros(n_features))
        self.W_dec = nn.Parameter(torch.zeros(n_features, d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    # ---- initialisation (Gao et al. §2.2 and Appendix A.1) ----
    @torch.no_grad()
    def initialize(self, activation_sample: Tensor, generator: torch.Generator) -> None:
        """Unit-norm random decoder rows, W_enc = W_decᵀ, b_enc = 0, b_dec = geometric median."""
        directions = torch.randn(self.n_features, self.d_in, generator=generator)
        self.W_dec.copy_(directions / directions.norm(dim=1, keepdim=True))
        self.W_enc.copy_(self.W_dec.T)
        self.b_enc.zero_()
        self.b_dec.copy_(geometric_median(activation_sample.float()))

    # ---- forward pieces ----
    def pre_activations(self, x: Tensor) -> Tensor:  # [batch, n_features]
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def select(self, pre: Tensor) -> tuple[Tensor, Tensor]:
        values, indices = pre.topk(self.k, dim=-1, sorted=False)
        return F.relu(values), indices

    def decode_sparse(self, values: Tensor, indices: Tensor, bias: bool = True) -> Tensor:
        """Gather and sum the k chosen decoder rows: dense-decode maths, far fewer FLOPs."""
        out = F.embedding_bag(
            indices, self.W_dec, per_sample_weights=values.to(self.W_dec.dtype), mode="sum"
        )
        return out + self.b_dec if bias else out

    def decode_dense(self, values: Tensor, indices: Tensor, bias: bool = True) -> Tensor:
        dense = torch.zeros(
            values.shape[0], self.n_features, dtype=values.dtype, device=values.device
        ).scatter_(-1, indices, values)
        out = dense @ self.W_dec
        return out + self.b_dec if bias else out

    def decode_latents(self, values: Tensor, indices: Tensor, bias: bool = True) -> Tensor:
        decode = self.decode_sparse if self.sparse_decoder else self.decode_dense
        return decode(values, indices, bias=bias)

    def encode(self, x: Tensor) -> Tensor:
        """Dense latent code z [batch, n_features] (zeros outside the top k)."""
        values, indices = self.select(self.pre_activations(x))
        return torch.zeros_like(self.b_enc).expand(x.shape[0], -1).scatter(-1, indices, values)

    def decode(self, z: Tensor) -> Tensor:
        return z @ self.W_dec + self.b_dec

    def forward(self, x: Tensor, dead_mask: Tensor | None = None) -> SAEOutput:
        pre = self.pre_activations(x)
        values, indices = self.select(pre)
        reconstruction = self.decode_latents(values, indices)
        error = x - reconstruction
        total_variance = (x - x.mean(0)).pow(2).sum()
        mse = error.pow(2).mean()
        fvu = error.pow(2).sum() / total_variance.clamp_min(1e-12)
        aux_loss = self.auxk_loss(pre, error.detach(), dead_mask)
        return SAEOutput(reconstruction, values, indices, pre, mse, fvu, aux_loss)

    def auxk_loss(self, pre: Tensor, residual: Tensor, dead_mask: Tensor | None) -> Tensor:
        """AuxK (Gao et al. §A.2): let the top-k_aux dead latents model the detached residual.

        The auxiliary decode has no b_dec; the loss is ‖e − ê‖² / Var(e), scaled by
        min(n_dead / k_aux, 1) as in the reference implementation.
        """
        n_dead = int(dead_mask.sum()) if dead_mask is not None else 0
        if n_dead == 0:
            return pre.new_zeros(())
        k_aux_full = self.d_in // 2
        k_aux = min(k_aux_full, n_dead)
        scale = min(n_dead / k_aux_full, 1.0)
        dead_pre = pre.masked_fill(~dead_mask, -math.inf)
        values, indices = dead_pre.topk(k_aux, dim=-1, sorted=False)
        aux_reconstruction = self.decode_latents(F.relu(values), indices, bias=False)
        residual_variance = (residual - residual.mean(0)).pow(2).sum().clamp_min(1e-12)
        return scale * (residual - aux_reconstruction).pow(2).sum() / residual_variance

    # ---- decoder-norm constraint (Gao et al. §A.1; also Bricken et al. 2023) ----
    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Project out the gradient component parallel to each (unit-norm) decoder row."""
        if self.W_dec.grad is None:
            return
        rows = self.W_dec.data
        parallel = (self.W_dec.grad * rows).sum(dim=1, keepdim=True)
        self.W_dec.grad.sub_(parallel * rows)

    @torch.no_grad()
    def normalize_decoder_rows(self) -> None:
        self.W_dec.data.div_(self.W_dec.data.norm(dim=1, keepdim=True).clamp_min(1e-12))

    # ---- export ----
    @torch.no_grad()
    def folded_state(self, input_scale: float) -> dict[str, Tensor]:
        """Weights that act on raw activations when training saw ``x * input_scale``.

        encode(s·x) = W_encᵀ(s·x − b_dec) + b_enc = (s·W_enc)ᵀ(x − b_dec/s) + b_enc, and the
        raw reconstruction is x̂/s, so W_enc ← s·W_enc, W_dec ← W_dec/s, b_dec ← b_dec/s.
        """
        s = float(input_scale)
        return {
            "W_enc": (self.W_enc * s).float().contiguous().cpu(),
            "b_enc": self.b_enc.float().contiguous().cpu(),
            "W_dec": (self.W_dec / s).float().contiguous().cpu(),
            "b_dec": (self.b_dec / s).float().contiguous().cpu(),
        }


@torch.no_grad()
def geometric_median(points: Tensor, iterations: int = 100, tol: float = 1e-6) -> Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of Euclidean distances."""
    median = points.mean(0)
    for _ in range(iterations):
        distances = (points - median).norm(dim=1).clamp_min(1e-8)
        weights = 1.0 / distances
        updated = (weights[:, None] * points).sum(0) / weights.sum()
        shift = (updated - median).norm()
        median = updated
        if shift <= tol * median.norm().clamp_min(1e-8):
            break
    return median


def default_learning_rate(n_features: int) -> float:
    """2e-4 / sqrt(n_features / 2^14): Gao et al. §A.3 scaling of the Adam step size."""
    return 2e-4 / math.sqrt(n_features / 2**14)
