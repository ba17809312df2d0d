"""Kernels the architectures share: the encoder pre-activations, the fused Top-K encoder with a
sparse backward, AuxK, the unit-norm decoder constraint, and the geometric median.

Each is one implementation used by every architecture that needs it. Pure torch; it imports
nothing of the project.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

AUXK_ALPHA = 1.0 / 32.0  # Gao et al. 2024, Appendix A.2


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


def auxk_k(d_in: int, n_dead: int) -> int:
    """k_aux = d_in / 2 (Gao et al. §A.2), at most the number of dead latents."""
    return min(d_in // 2, n_dead)


def auxk_loss(aux_reconstruction: Tensor, residual: Tensor, n_dead: int, d_in: int) -> Tensor:
    """AuxK (Gao et al. §A.2): how well the top-k_aux dead latents model the detached residual.

    ``aux_reconstruction`` [batch, d_in] is their decode with no b_dec. The loss is
    ‖e − ê‖² / Var(e), scaled by min(n_dead / k_aux, 1) as in the reference implementation.
    """
    scale = min(n_dead / (d_in // 2), 1.0)
    residual_variance = (residual - residual.mean(0)).pow(2).sum().clamp_min(1e-12)
    return scale * (residual - aux_reconstruction).pow(2).sum() / residual_variance


# ---- unit-norm decoder rows (Gao et al. §A.1; also Bricken et al. 2023) ----
@torch.no_grad()
def remove_parallel_grad(rows: torch.nn.Parameter) -> None:
    """Project out the gradient component parallel to each (unit-norm) row."""
    if rows.grad is None:
        return
    parallel = (rows.grad * rows.data).sum(dim=1, keepdim=True)
    rows.grad.sub_(parallel * rows.data)


@torch.no_grad()
def normalize_rows(rows: torch.nn.Parameter) -> None:
    rows.data.div_(rows.data.norm(dim=1, keepdim=True).clamp_min(1e-12))


@torch.no_grad()
def tied_init(
    sae: torch.nn.Module, sample: Tensor, generator: torch.Generator, norm: float
) -> None:
    """Random decoder rows of the given norm, W_enc = W_decᵀ, b_enc = 0, b_dec = geometric
    median of the sample (Gao et al. §2.2 and Appendix A.1)."""
    directions = torch.randn(sae.n_features, sae.d_in, generator=generator)
    sae.W_dec.copy_(directions / directions.norm(dim=1, keepdim=True) * norm)
    sae.W_enc.copy_(sae.W_dec.T)
    sae.b_enc.zero_()
    sae.b_dec.copy_(geometric_median(sample.float()))


def sparse_decode(values: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:  # [batch, d_in]
    """Σ_s values[b, s] · W_dec[indices[b, s]]: dense-decode maths, gathering only k rows."""
    return F.embedding_bag(indices, W_dec, per_sample_weights=values.to(W_dec.dtype), mode="sum")
