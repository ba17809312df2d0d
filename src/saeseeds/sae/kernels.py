"""Kernels the architectures share: the encoder pre-activations, the reconstruction's squared
error, the sparse decoder, the sparse sums and dot products of a backward that touches only
chosen latents, AuxK, the unit-norm decoder constraint, and the geometric median (the fused
Top-K forward and backward are :mod:`saeseeds.sae.fused_topk`).

Each is one implementation used by every architecture that needs it. Pure torch; it imports
nothing of the project.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable


def encoder_pre_activations(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor) -> Tensor:
    """(x − b_dec) @ W_enc + b_enc [batch, n_features], shared by both encoder paths so they
    choose the same latents bit for bit."""
    return centered_pre_activations(x - b_dec, W_enc, b_enc)


def centered_pre_activations(centered: Tensor, W_enc: Tensor, b_enc: Tensor) -> Tensor:
    """:func:`encoder_pre_activations` from ``centered`` = x − b_dec."""
    return with_encoder_bias(centered @ W_enc, b_enc)


def with_encoder_bias(product: Tensor, b_enc: Tensor) -> Tensor:
    """``product`` ((x − b_dec) @ W_enc) + b_enc, in place where the dtypes allow."""
    if product.dtype != torch.promote_types(product.dtype, b_enc.dtype):
        # Autocast: bf16 product + fp32 bias gives fp32 pre-activations. Converting first, then
        # adding in place, is the same arithmetic as the promoting add and ~25% faster on CPU.
        product = product.to(b_enc.dtype)
    # In place: a second [batch, n_features] buffer costs ~15% of the matmul's time on CPU.
    return product.add_(b_enc)


class Workspace:
    """A buffer for the [batch, n_features] encoder product that outlives a training step.

    A fresh tensor that large is new pages every step on CPU (glibc maps each allocation over
    32 MiB afresh and the kernel zero-fills every page: ~70 ms a step at 4096 × 16384), and
    computing it in blocks of rows instead repeats the matmul's per-call work (packing W_enc)
    for every block. One matmul into a buffer kept between steps does neither. The buffer grows
    to the largest size asked for; :meth:`release` frees it.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[torch.dtype, torch.device], Tensor] = {}

    def matmul(self, a: Tensor, b: Tensor) -> Tensor:
        """a @ b [rows, columns] in the dtype autocast would give it (an ``out=`` matmul is not
        autocast), written into the buffer: valid until the next call."""
        device = a.device.type
        dtype = torch.promote_types(a.dtype, b.dtype)
        if torch.is_autocast_enabled(device) and dtype == torch.float32:
            dtype = torch.get_autocast_dtype(device)
        key, size = (dtype, a.device), a.shape[0] * b.shape[1]
        held = self._buffers.get(key)
        if held is None or held.numel() < size:
            self._buffers.pop(key, None)  # free the smaller one first
            held = self._buffers[key] = torch.empty(size, dtype=dtype, device=a.device)
        out = held[:size].view(a.shape[0], b.shape[1])
        return torch.matmul(a.to(dtype), b.to(dtype), out=out)

    def release(self) -> None:
        self._buffers.clear()


# Rows copied per block by :func:`transposed`: a block's rows and its columns of the output stay
# in cache together.
TRANSPOSE_BLOCK_ROWS = 256


def transposed(rows: Tensor) -> Tensor:
    """``rows.T`` as a contiguous tensor. On CPU a tall matrix ([n_features, d_in]) is copied a
    block of rows at a time, about twice as fast as ``rows.T.contiguous()`` (14 against 31 ms at
    16384 × 576); the values are the same, since this is only a copy."""
    if rows.device.type != "cpu" or rows.shape[0] <= TRANSPOSE_BLOCK_ROWS:
        return rows.T.contiguous()
    out = rows.new_empty(rows.shape[1], rows.shape[0])
    for start in range(0, rows.shape[0], TRANSPOSE_BLOCK_ROWS):
        stop = start + TRANSPOSE_BLOCK_ROWS
        out[:, start:stop].copy_(rows[start:stop].T)
    return out


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


# ---- the reconstruction's squared error ----


class SquaredError(NamedTuple):
    mean: Tensor  # scalar: the MSE over every element, the training loss's term
    total: Tensor  # scalar: Σ‖x − x̂‖² (the FVU's numerator)
    difference: Tensor  # [batch, d_in]: x − x̂, detached (AuxK's residual)


def squared_error(x: Tensor, reconstruction: Tensor) -> SquaredError:
    """The MSE of ``reconstruction`` against ``x``, their summed squared error and difference.

    For float32 ``x`` and ``x̂`` (what training passes: x̂ carries the float32 b_dec), the same
    gradient bits as autograd through ``(x − x̂).pow(2)`` and its ``.mean()`` (the loss), and on
    the CPU the same values, in fewer passes over [batch, d_in]: on a small SAE those passes, not
    its matmuls, are much of a CPU step (:class:`_SquaredError`). First-order only: its backward
    is not differentiable (``create_graph=True`` raises).
    """
    mean, total, difference = _SquaredError.apply(x, reconstruction)
    return SquaredError(mean, total, difference)


def total_variance(x: Tensor) -> Tensor:
    """Σ‖x − mean(x)‖² over a batch [batch, d_in] (at least 1e-12): the FVU's denominator."""
    return (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)


class _SquaredError(torch.autograd.Function):
    """(mean, sum, difference) of the squared error as one autograd node.

    Autograd through ``d = x − x̂``, ``d.pow(2)`` and its mean makes five passes over [batch,
    d_in] in the backward alone (the mean's expanded gradient, ``d.pow(1)``, two products and a
    negation); this makes one: ∂x̂ = d · (−2·(g / N)), which rounds exactly as autograd's
    −((g / N) · (2·d)) does, since doubling and negation are exact; through the sum likewise,
    d · (−2·g). The forward squares ``d`` once and reduces once (a CPU float32 mean is its sum
    divided by N, bit for bit; in bf16 the two can differ by a unit in the last place).
    """

    @staticmethod
    def forward(ctx, x: Tensor, reconstruction: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        difference = x - reconstruction
        total = difference.pow(2).sum()
        ctx.save_for_backward(difference)
        ctx.mark_non_differentiable(difference)
        ctx.set_materialize_grads(False)
        return total / difference.numel(), total, difference

    @staticmethod
    @once_differentiable
    def backward(
        ctx, grad_mean: Tensor | None, grad_total: Tensor | None, _: None
    ) -> tuple[Tensor | None, Tensor | None]:
        (difference,) = ctx.saved_tensors
        factor = None  # ∂x = d · factor, ∂x̂ = −∂x
        if grad_mean is not None:
            factor = (grad_mean / difference.numel()) * 2
        if grad_total is not None:
            factor = grad_total * 2 if factor is None else factor + grad_total * 2
        if factor is None:
            return None, None
        need_x, need_reconstruction = ctx.needs_input_grad[:2]
        grad_x = difference * factor if need_x else None
        grad_reconstruction = difference * -factor if need_reconstruction else None
        return grad_x, grad_reconstruction


def auxk_k(d_in: int, n_dead: int) -> int:
    """k_aux = d_in / 2 (Gao et al. §A.2), at most the number of dead latents."""
    return min(d_in // 2, n_dead)


def auxk_loss(aux_reconstruction: Tensor, residual: Tensor, n_dead: int, d_in: int) -> Tensor:
    """AuxK (Gao et al. §A.2): how well the top-k_aux dead latents model the detached residual.

    ``aux_reconstruction`` [batch, d_in] is their decode with no b_dec. The loss is
    ‖e − ê‖² / Var(e), scaled by min(n_dead / k_aux, 1) as in the reference implementation.
    """
    scale = min(n_dead / (d_in // 2), 1.0)
    error = squared_error(residual, aux_reconstruction).total
    return scale * error / total_variance(residual)


# ---- unit-norm decoder rows (Gao et al. §A.1; also Bricken et al. 2023) ----
# Row-wise updates of a whole decoder run a block of rows at a time: the block's temporaries
# stay in cache and are reused from the heap, where whole-matrix temporaries (37 MB at
# 16384 × 576) would be fresh pages every step. Each row's arithmetic is unchanged.
ROW_BLOCK_BYTES = 2**20


@torch.no_grad()
def remove_parallel_grad(rows: torch.nn.Parameter) -> None:
    """Project out the gradient component parallel to each (unit-norm) row."""
    if rows.grad is None:
        return
    block = max(1, ROW_BLOCK_BYTES // (rows.shape[1] * rows.element_size()))
    for grad, data in zip(rows.grad.split(block), rows.data.split(block), strict=True):
        parallel = (grad * data).sum(dim=1, keepdim=True)
        grad.sub_(parallel * data)


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


# ---- sparse sums and dot products over chosen (token, latent) entries ----
class LatentOrder(NamedTuple):
    """Entries sorted by latent (stable: equal latents keep their order)."""

    order: Tensor  # [entries] positions of the entries, in latent order
    latents: Tensor  # [entries] sorted latent ids
    crow: Tensor  # [n_features + 1] where each latent's entries start, then the total


def sort_by_latent(latents: Tensor, n_features: int) -> LatentOrder:
    # int32 keys sort ~2× faster than int64 (half the memory traffic); the order is the same.
    key_dtype = torch.int32 if n_features < 2**31 else torch.int64
    keys, order = latents.to(key_dtype).sort(stable=True)
    bounds = torch.arange(n_features + 1, device=latents.device, dtype=key_dtype)
    return LatentOrder(order, keys.long(), torch.searchsorted(keys, bounds))


def sum_rows_by_latent(
    order: LatentOrder, rows: Tensor, row_ids: Tensor, weights: Tensor
) -> Tensor:
    """out[j] = Σ_e weights[e] · rows[row_ids[e]] over latent j's entries (sorted; [n_features,
    d]), in the entries' order: deterministic, with no scatter atomics."""
    starts = order.crow[:-1]
    return F.embedding_bag(row_ids, rows, starts, per_sample_weights=weights, mode="sum")


def sampled_dots(crow: Tensor, columns: Tensor, left: Tensor, right: Tensor) -> Tensor:
    """left[i] · right[columns[e]] for each entry e of row i (rows given as CSR offsets
    ``crow``): a sampled matmul, one vectorised reduction per entry (several times faster than
    a BLAS dot call per entry). Rows with many entries read ``left[i]`` once for all of them."""
    n_entries = columns.numel()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
        # torch 2.11 with CUDA warns on every job even though the checks are declined below.
        warnings.filterwarnings("ignore", "Sparse invariant checks are implicitly disabled")
        pattern = torch.sparse_csr_tensor(
            crow,
            columns,
            left.new_zeros(n_entries),
            size=(left.shape[0], right.shape[0]),
            check_invariants=False,  # sorted and in range by construction
        )
        return torch.sparse.sampled_addmm(pattern, left, right.T, beta=0.0).values()
