"""The Top-K sparse autoencoder as a plain ``nn.Module``.

Owns the maths of Gao et al. (2024), "Scaling and evaluating sparse autoencoders": encoder,
Top-K activation (with a backward that touches only the chosen latents), sparse decoder, AuxK
loss, decoder-norm constraint and initialisation. It knows nothing about Lightning, Hydra, data
sources or files.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

AUXK_ALPHA = 1.0 / 32.0  # Gao et al. 2024, Appendix A.2


class SAEOutput(NamedTuple):
    reconstruction: Tensor  # [batch, d_in]
    latent_values: Tensor  # [batch, k], post-ReLU values of the chosen latents
    latent_indices: Tensor  # [batch, k]
    mse: Tensor  # scalar, mean over elements
    fvu: Tensor  # scalar, sum ||x - x̂||² / sum ||x - mean(x)||²
    aux_loss: Tensor  # scalar, AuxK loss (0 when no latent is dead)


class TopKSAE(nn.Module):
    """x̂ = W_decᵀ ReLU(TopK_k(W_encᵀ(x − b_dec) + b_enc)) + b_dec, with unit-norm decoder rows."""

    def __init__(
        self,
        d_in: int,
        n_features: int,
        k: int,
        sparse_decoder: bool = True,
        fused_encoder: bool = True,
    ):
        super().__init__()
        self.d_in, self.n_features, self.k = d_in, n_features, k
        self.sparse_decoder = sparse_decoder
        # Encoder + Top-K as one autograd function whose backward is sparse (TopKEncoder);
        # False keeps plain autograd through the dense pre-activations, the reference path.
        self.fused_encoder = fused_encoder
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
        return encoder_pre_activations(x, self.W_enc, self.b_enc, self.b_dec)

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
        dead_latents = dead_mask.nonzero().squeeze(1) if dead_mask is not None else None  # [n_dead]
        n_dead = len(dead_latents) if dead_latents is not None else 0
        k_aux = min(self.d_in // 2, n_dead)  # Gao et al. §A.2: k_aux = d_in / 2
        if self.fused_encoder:
            top_pre, indices, aux_pre, aux_indices = TopKEncoder.apply(
                x, self.W_enc, self.b_enc, self.b_dec, self.k, dead_latents, k_aux
            )
        else:
            top_pre, indices, aux_pre, aux_indices = self.select_with_autograd(x, dead_mask, k_aux)
        values = F.relu(top_pre)  # [batch, k]
        reconstruction = self.decode_latents(values, indices)
        error = x - reconstruction
        total_variance = (x - x.mean(0)).pow(2).sum()
        mse = error.pow(2).mean()
        fvu = error.pow(2).sum() / total_variance.clamp_min(1e-12)
        aux_loss = self.auxk_loss(F.relu(aux_pre), aux_indices, error.detach(), n_dead)
        return SAEOutput(reconstruction, values, indices, mse, fvu, aux_loss)

    def select_with_autograd(
        self, x: Tensor, dead_mask: Tensor | None, k_aux: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """TopKEncoder's outputs by plain autograd: its backward is dense in n_features."""
        pre = self.pre_activations(x)  # [batch, n_features]
        top_pre, indices = pre.topk(self.k, dim=-1, sorted=False)
        if k_aux == 0:
            return top_pre, indices, top_pre[:, :0], indices[:, :0]
        aux_pre, aux_indices = pre.masked_fill(~dead_mask, -math.inf).topk(k_aux, sorted=False)
        return top_pre, indices, aux_pre, aux_indices

    def auxk_loss(self, values: Tensor, indices: Tensor, residual: Tensor, n_dead: int) -> Tensor:
        """AuxK (Gao et al. §A.2): let the top-k_aux dead latents model the detached residual.

        ``values``/``indices`` [batch, k_aux] are the post-ReLU top-k_aux dead latents. The
        auxiliary decode has no b_dec; the loss is ‖e − ê‖² / Var(e), scaled by
        min(n_dead / k_aux, 1) as in the reference implementation.
        """
        if n_dead == 0:
            return residual.new_zeros(())
        scale = min(n_dead / (self.d_in // 2), 1.0)
        aux_reconstruction = self.decode_latents(values, indices, bias=False)
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


def encoder_pre_activations(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor) -> Tensor:
    """(x − b_dec) @ W_enc + b_enc [batch, n_features], shared by both encoder paths so they
    choose the same latents bit for bit."""
    pre = (x - b_dec) @ W_enc
    if pre.dtype != torch.promote_types(pre.dtype, b_enc.dtype):
        return pre + b_enc  # autocast: bf16 product + fp32 bias gives fp32 pre-activations
    # In place: a second [batch, n_features] buffer costs ~15% of the matmul's time on CPU.
    return pre.add_(b_enc)


class TopKEncoder(torch.autograd.Function):
    """pre = (x − b_dec) @ W_enc + b_enc; its top k per row and, given dead latents, the top
    k_aux among them (AuxK). Returns (top_pre, indices, aux_pre, aux_indices), values before
    ReLU, so that ReLU stays outside with its usual autograd.

    The loss reaches pre only at the chosen entries, so the backward gathers and sums just
    those: ∂W_enc[:, j] = Σ_{idx[b,s]=j} g[b,s]·(x_b − b_dec), ∂b_enc[j] = Σ_{idx[b,s]=j} g[b,s],
    ∂b_dec = −W_enc ∂b_enc, ∂x_b = Σ_s g[b,s]·W_enc[:, idx[b,s]]. That costs
    O(batch·(k + k_aux)·d_in) instead of the dense O(batch·n_features·d_in), and the dense pre
    is freed after the forward. The idea is EleutherAI sparsify's fused encoder.

    Autocast: the forward runs under the caller's autocast state, so its matmul is in bf16
    exactly as in the plain path. The backward has no GEMM worth lowering, so it runs with
    autocast off and returns gradients in the parameters' dtype.

    Determinism: every op has a deterministic kernel on CPU and CUDA (stable sort,
    searchsorted, embedding_bag forward, index_add_ which torch makes deterministic on CUDA
    under ``use_deterministic_algorithms``); scatter-style atomics are avoided.
    """

    @staticmethod
    def forward(
        ctx,
        x: Tensor,  # [batch, d_in]
        W_enc: Tensor,
        b_enc: Tensor,
        b_dec: Tensor,
        k: int,
        dead_latents: Tensor | None,  # [n_dead] latent ids; None or k_aux = 0 skips AuxK
        k_aux: int,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        pre = encoder_pre_activations(x, W_enc, b_enc, b_dec)  # [batch, n_features]
        top_pre, indices = pre.topk(k, dim=-1, sorted=False)  # [batch, k]
        if k_aux > 0:
            # Top-k_aux over the dead columns only: the same latents as masking the live ones
            # with −inf, without writing and scanning a second [batch, n_features] tensor.
            aux_pre, dead_slots = pre.index_select(1, dead_latents).topk(k_aux, sorted=False)
            aux_indices = dead_latents[dead_slots]  # [batch, k_aux]
        else:
            aux_pre, aux_indices = top_pre[:, :0], indices[:, :0]
        ctx.save_for_backward(x, W_enc, b_dec, indices, aux_indices)
        ctx.mark_non_differentiable(indices, aux_indices)
        ctx.set_materialize_grads(False)
        return top_pre, indices, aux_pre, aux_indices

    @staticmethod
    @once_differentiable
    def backward(
        ctx, grad_top: Tensor | None, _: None, grad_aux: Tensor | None, __: None
    ) -> tuple[Tensor | None, ...]:
        x, W_enc, b_dec, indices, aux_indices = ctx.saved_tensors
        pairs = ((grad_top, indices), (grad_aux, aux_indices))
        chosen = [(grad, chosen_indices) for grad, chosen_indices in pairs if grad is not None]
        if not chosen:
            return (None,) * 7
        grad_pre = torch.cat([g for g, _ in chosen], 1).to(W_enc.dtype)  # [batch, width]
        chosen_indices = torch.cat([i for _, i in chosen], 1)  # [batch, width]
        need_x, need_W_enc, need_b_enc, need_b_dec = ctx.needs_input_grad[:4]
        grad_x = grad_W_enc = grad_b_enc = grad_b_dec = None
        with torch.autocast(x.device.type, enabled=False):
            if need_W_enc:
                centered = (x - b_dec).to(W_enc.dtype)  # [batch, d_in]
                grad_W_enc = sum_rows_by_latent(centered, grad_pre, chosen_indices, W_enc.shape[1])
            if need_b_enc or need_b_dec:
                grad_b_enc = torch.zeros_like(W_enc[0]).index_add_(
                    0, chosen_indices.flatten(), grad_pre.flatten()
                )
            if need_x:
                # A gather of the chosen encoder columns, like the sparse decoder.
                grad_x = F.embedding_bag(
                    chosen_indices, W_enc.T.contiguous(), per_sample_weights=grad_pre, mode="sum"
                ).to(x.dtype)
            if need_b_dec:
                # Σ_b ∂x_b = W_enc ∂b_enc: a matrix-vector product, not a batch of gathers.
                grad_b_dec = -(W_enc @ grad_b_enc).to(b_dec.dtype)
        return grad_x, grad_W_enc, grad_b_enc if need_b_enc else None, grad_b_dec, None, None, None


def sum_rows_by_latent(
    rows: Tensor, weights: Tensor, latent_indices: Tensor, n_features: int
) -> Tensor:  # [d_in, n_features]
    """out[:, j] = Σ_{(b,s): latent_indices[b,s] = j} weights[b,s] · rows[b].

    A stable sort groups the (b, s) entries by latent; ``embedding_bag`` then sums each
    latent's weighted rows in that fixed order, so the result is deterministic.
    """
    width = latent_indices.shape[1]
    sorted_latents, order = latent_indices.flatten().sort(stable=True)
    latent_starts = torch.searchsorted(sorted_latents, torch.arange(n_features, device=rows.device))
    per_latent = F.embedding_bag(
        order // width,  # the batch row of each sorted entry
        rows,
        latent_starts,
        per_sample_weights=weights.flatten()[order],
        mode="sum",
    )  # [n_features, d_in]
    return per_latent.T


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
