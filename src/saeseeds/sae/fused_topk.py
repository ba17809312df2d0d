"""The Top-K SAE's training forward (encoder, Top-K, ReLU, AuxK selection, decoders) as one
autograd function with a hand-written backward that touches only the chosen entries.

The chosen latents come in two groups: the k per token and (AuxK) the k_aux per token among the
dead latents. A *dense* group scatters its values into a [batch, columns] code, and matmuls over
that code decode it and give its gradients (batch·columns·d_in multiply-adds each). A *sparse*
group gathers its chosen decoder rows (``embedding_bag``), computes each entry's ∂x̂_b · W_dec[j]
by a sampled matmul, and sums the weight gradients latent by latent (batch·width·d_in
multiply-adds each, but memory-bound: several times dearer than a matmul's). Dense pays for small
dictionaries, and for AuxK when few latents are dead; sparse for large ones. The maths is the
same either way.

For values v = ReLU(p) at latents j of token b: ∂v = ∂v_out + ∂x̂_b · W_dec[j],
∂p = ∂v · 1[p > 0], ∂W_dec[j] += v · ∂x̂_b, ∂W_enc[:, j] += ∂p · (x_b − b_dec), ∂b_enc[j] += ∂p,
∂b_dec = Σ_b ∂x̂_b − W_enc ∂b_enc, ∂x_b = Σ ∂p · W_enc[:, j]. Sparse sums run in latent order,
each latent's in a fixed order (deterministic: no scatter atomics), and the value gradients of
those entries are computed in the same order, so each decoder row is read once. The dense
[batch, n_features] pre-activations exist only a block of rows at a time. The sparse encoder
backward is EleutherAI sparsify's idea; here it also covers the decoder and the AuxK encoder
gradient, which sparsify drops.

Autocast: the forward runs under the caller's autocast state (the encoder matmul, and a dense
decode, in bf16 as in plain autograd). The backward runs its dense matmuls in the forward's
autocast dtype too, as plain autograd's backward would; its sparse work stays in the parameters'
dtype, and it returns gradients in that dtype.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from saeseeds.sae.kernels import (
    LatentOrder,
    Workspace,
    centered_pre_activations,
    sampled_dots,
    sort_by_latent,
    sum_rows_by_latent,
    transposed,
    with_encoder_bias,
)

# A group is dense when it has at most this many columns per chosen entry: a dense multiply-add
# costs roughly a tenth of a sparse one on CPU (scripts/bench_train_step.py times both paths;
# a mixed rule, sparse decode with dense sums, measured no faster at 4096 and 128 latents).
DENSE_COLUMNS_PER_ENTRY = 8
# On a CUDA GPU a dense multiply-add is far cheaper against a gather. Measured on an H200 with
# scripts/bench_train_step.py (d_in 576, k 32, batch 4096, 30% dead): the k latents' group was
# faster dense at 128 columns per entry and sparse at 512 in float32, dense at 512 and sparse at
# 2048 under bf16 autocast (tensor cores); the AuxK group (k_aux = 288 per row, where a gather
# does best) was faster dense at 17 columns per entry and sparse at 68, in either precision.
# On CUDA no dense [batch, columns] tensor goes over CUDA_DENSE_ELEMENTS entries (a dense code
# here, plain autograd's pre-activations below): a backward holds a few of them at once (the
# code, its gradient, the value-gradient product), 512 MiB each in float32 at the cap, so that a
# card of 16 GB has room for them.
CUDA_DENSE_COLUMNS_PER_ENTRY = {"float32": 256, "bf16": 1024, "auxk": 32}
CUDA_DENSE_ELEMENTS = 2**27
# Under bf16 autocast on a CUDA GPU, plain autograd through the dense pre-activations (every
# product, the backward's too, a bf16 matmul on the tensor cores) trained faster than this
# function on an H200 (d_in 576, k 32, batch 4096): 1.33x at 4,096 latents and 1.09-1.54x at
# 16,384 in two calls, but 0.90-1.14x at 65,536. So there, up to CUDA_AUTOCAST_PLAIN_FEATURES
# latents and while the dense [batch, n_features] tensors stay within CUDA_DENSE_ELEMENTS
# entries, the SAE trains through plain autograd: the same maths (tested equal), other kernels.
# (A last batch of fewer rows may cross the bound: harmless.)
CUDA_AUTOCAST_PLAIN_FEATURES = 16384
# Pre-activations larger than this have their matmul written into WORKSPACE's buffer, kept
# between steps (below it a fresh tensor comes from glibc's heap, which reuses it), and are
# finished and searched in equal blocks of rows of at most this size.
PRE_ACTIVATION_BLOCK_BYTES = 30 * 2**20
WORKSPACE = Workspace()


class Group(NamedTuple):
    """One set of chosen latents."""

    values: Tensor  # [batch, width], after ReLU
    latents: Tensor  # [batch, width], latent ids
    slots: Tensor  # [batch, width], positions among ``columns``
    columns: Tensor | None  # [n_columns] latent ids of the group's columns; None: all
    n_columns: int
    dense: bool


def use_dense(
    n_columns: int,
    width: int,
    sparse: bool | None,
    rows: int = 0,
    device_type: str = "cpu",
    auxk: bool = False,
) -> bool:
    """``sparse`` True/False forces a path; None picks by size: for ``rows`` rows of ``width``
    chosen latents among ``n_columns`` (``auxk``: the AuxK group), on a device of ``device_type``
    under the autocast state in force there."""
    if sparse is not None:
        return not sparse
    if device_type != "cuda":
        return n_columns <= DENSE_COLUMNS_PER_ENTRY * width
    if auxk:
        per_entry = CUDA_DENSE_COLUMNS_PER_ENTRY["auxk"]
    elif cuda_bf16_autocast():
        per_entry = CUDA_DENSE_COLUMNS_PER_ENTRY["bf16"]
    else:
        per_entry = CUDA_DENSE_COLUMNS_PER_ENTRY["float32"]
    fits = rows * n_columns <= CUDA_DENSE_ELEMENTS
    return fits and n_columns <= per_entry * width


def cuda_bf16_autocast() -> bool:
    """Whether bf16 autocast is on for CUDA in this thread (the state the measured rules need)."""
    return torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") == torch.bfloat16


def fused_pays(rows: int, n_features: int, device_type: str) -> bool:
    """Whether the training forward of ``rows`` rows over ``n_features`` latents on a device of
    ``device_type``, under the autocast state in force there, is faster as this function than
    as plain autograd (see ``CUDA_AUTOCAST_PLAIN_FEATURES``): everywhere but under bf16 autocast
    on a CUDA GPU at up to that many latents (fp16 autocast was not measured: this function)."""
    if device_type != "cuda" or not cuda_bf16_autocast():
        return True
    small = n_features <= CUDA_AUTOCAST_PLAIN_FEATURES
    return not (small and rows * n_features <= CUDA_DENSE_ELEMENTS)


def select(
    x: Tensor,
    weights: tuple[Tensor, Tensor, Tensor],
    k: int,
    dead_latents: Tensor | None,
    k_aux: int,
    sparse: bool | None,
) -> tuple[Group, Group | None, Tensor]:
    """The main group (top k of each row of the pre-activations), when k_aux > 0 the AuxK group
    (top k_aux among the dead latents' columns: the same latents as masking the live ones with
    −inf, without a second [batch, n_features] tensor), and x − b_dec.

    Large pre-activations are never a fresh [batch, n_features] allocation (a fresh 256 MB
    tensor costs the operating system ~70 ms of page faults per step at 4096 × 16384): their
    matmul is written into ``WORKSPACE``'s buffer, kept between steps, and the bias, any dtype
    conversion and the search run a block of rows at a time, so their temporaries stay small.
    Each row is searched alone, so the blocks do not change which latents are chosen.
    """
    W_enc, b_enc, b_dec = weights
    n_features = W_enc.shape[1]
    n_blocks = -(-len(x) * 4 * n_features // PRE_ACTIVATION_BLOCK_BYTES)  # ceiling
    n_blocks = max(1, min(n_blocks, len(x)))
    tops, auxes = [], []
    centered = x - b_dec  # [batch, d_in], kept for the backward's encoder gradient
    if n_blocks > 1:  # large: one matmul into a buffer kept between steps, then by blocks
        product = WORKSPACE.matmul(centered, W_enc).tensor_split(n_blocks)
        blocks = (with_encoder_bias(part, b_enc) for part in product)
    else:
        blocks = [centered_pre_activations(centered, W_enc, b_enc)]
    for pre in blocks:  # [rows, n_features]
        tops.append(pre.topk(k, dim=-1, sorted=False))
        if k_aux > 0:
            auxes.append(pre.index_select(1, dead_latents).topk(k_aux, sorted=False))
    top_pre, indices = (torch.cat(parts) for parts in zip(*tops, strict=True))  # [batch, k]
    rows, device_type = len(x), x.device.type
    dense = use_dense(n_features, k, sparse, rows, device_type)
    main = Group(F.relu(top_pre), indices, indices, None, n_features, dense)
    if k_aux == 0:
        return main, None, centered
    aux_pre, slots = (torch.cat(parts) for parts in zip(*auxes, strict=True))
    latents = dead_latents.take(slots)
    n_dead = len(dead_latents)
    dense = use_dense(n_dead, k_aux, sparse, rows, device_type, auxk=True)
    return main, Group(F.relu(aux_pre), latents, slots, dead_latents, n_dead, dense), centered


def decode(group: Group, W_dec: Tensor) -> Tensor:  # [batch, d_in], no b_dec
    # AuxK decodes from a compact copy of the dead latents' rows: the same sums, but fewer
    # pages to walk than rows scattered over the whole decoder (~15% faster at 16384 latents).
    rows = decoder_rows(group, W_dec)
    if group.dense:
        return dense_code(group, group.values) @ rows
    values = group.values.to(W_dec.dtype)
    return F.embedding_bag(group.slots, rows, per_sample_weights=values, mode="sum")


def dense_code(group: Group, entries: Tensor) -> Tensor:  # [batch, n_columns]
    code = entries.new_zeros(entries.shape[0], group.n_columns)
    return code.scatter_(1, group.slots, entries)


def decoder_rows(group: Group, W_dec: Tensor) -> Tensor:  # [n_columns, d_in]
    return W_dec if group.columns is None else W_dec.index_select(0, group.columns)


def accumulate(total: Tensor | None, part: Tensor, columns: Tensor | None, n: int) -> Tensor:
    """total[columns] += part (every row when columns is None), total of n rows, zero at first."""
    if columns is None:
        return part if total is None else total.add_(part)
    if total is None:
        total = part.new_zeros(n, *part.shape[1:])
    return total.index_add_(0, columns, part)


class TopKAutoencoder(torch.autograd.Function):
    """Returns (values [batch, k] after ReLU, indices [batch, k], reconstruction with b_dec,
    AuxK reconstruction without b_dec; an empty tensor when k_aux = 0)."""

    @staticmethod
    def forward(
        ctx,
        x: Tensor,  # [batch, d_in]
        W_enc: Tensor,
        b_enc: Tensor,
        W_dec: Tensor,
        b_dec: Tensor,
        k: int,
        dead_latents: Tensor | None,  # [n_dead] latent ids; None or k_aux = 0 skips AuxK
        k_aux: int,
        sparse: bool | None,  # None: by size
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        main, aux, centered = select(x, (W_enc, b_enc, b_dec), k, dead_latents, k_aux, sparse)
        groups = [main] if aux is None else [main, aux]
        reconstruction = decode(groups[0], W_dec) + b_dec
        aux_reconstruction = decode(groups[1], W_dec) if len(groups) > 1 else x.new_zeros(0)
        device = x.device.type
        ctx.autocast_dtype = (
            torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        )
        ctx.layout = [(g.columns is not None, g.n_columns, g.dense) for g in groups]
        saved = [
            t for g in groups for t in (g.values, g.latents, g.slots, g.columns) if t is not None
        ]
        ctx.save_for_backward(x, centered, W_enc, W_dec, b_dec, *saved)
        ctx.mark_non_differentiable(groups[0].latents)
        ctx.set_materialize_grads(False)
        return groups[0].values, groups[0].latents, reconstruction, aux_reconstruction

    @staticmethod
    @once_differentiable
    def backward(
        ctx, grad_values: Tensor | None, _: None, grad_recon: Tensor | None, grad_aux: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        x, centered, W_enc, W_dec, b_dec, *saved = ctx.saved_tensors
        groups = []
        for has_columns, n_columns, dense in ctx.layout:
            values, latents, slots, *rest = saved[: 3 + has_columns]
            saved = saved[3 + has_columns :]
            groups.append(
                Group(values, latents, slots, rest[0] if rest else None, n_columns, dense)
            )
        need_x, need_W_enc, need_b_enc, need_W_dec, need_b_dec = ctx.needs_input_grad[:5]
        with torch.autocast(x.device.type, enabled=False):
            backward = Backward(x, centered, W_enc, W_dec, b_dec, ctx.autocast_dtype)
            grads = backward(groups, [grad_recon, grad_aux], grad_values, need_x)
        grad_x, grad_W_enc_rows, grad_b_enc, grad_W_dec, grad_b_dec = grads
        # W_enc's gradient in W_enc's layout, copied by blocks of rows (autograd would copy the
        # transposed view itself, about twice as slowly).
        need_W_enc = need_W_enc and grad_W_enc_rows is not None
        return (
            grad_x.to(x.dtype) if need_x and grad_x is not None else None,
            transposed(grad_W_enc_rows) if need_W_enc else None,
            grad_b_enc if need_b_enc else None,
            grad_W_dec if need_W_dec else None,
            grad_b_dec if need_b_dec else None,
            None,
            None,
            None,
            None,
        )


class SparseEntries(NamedTuple):
    """The sparse groups' entries, concatenated, in latent order."""

    order: LatentOrder
    tokens: Tensor  # [entries] token (row of x) of each sorted entry
    grad_rows: Tensor  # [entries] row of the stacked ∂x̂ of each sorted entry
    values: Tensor  # [entries] sorted values after ReLU


class Backward:
    """The gradients of one TopKAutoencoder call, group by group."""

    def __init__(self, x, centered, W_enc, W_dec, b_dec, autocast_dtype: torch.dtype | None):
        self.x, self.W_enc, self.W_dec, self.b_dec = x, W_enc, W_dec, b_dec
        self.n_features = W_enc.shape[1]
        self.centered = centered.to(W_enc.dtype)  # [batch, d_in]: x − b_dec, from the forward
        self.matmul_dtype = autocast_dtype or W_dec.dtype
        # Accumulated as one row per latent: [n_features, d_in] (W_enc's gradient transposed;
        # the caller copies it into W_enc's layout).
        self.grad_W_enc_rows = self.grad_W_dec = self.grad_b_enc = None
        self.pre_grads: list[tuple[Group, Tensor]] = []  # for ∂x

    def matmul(self, a: Tensor, b: Tensor) -> Tensor:
        dtype = self.matmul_dtype
        return (a.to(dtype) @ b.to(dtype)).to(self.W_dec.dtype)

    def __call__(
        self,
        groups: list[Group],
        grad_outs: list[Tensor | None],
        grad_values: Tensor | None,
        need_x: bool,
    ) -> tuple[Tensor | None, ...]:
        sparse_parts = []
        for number, (group, grad_out) in enumerate(zip(groups, grad_outs, strict=False)):
            extra = grad_values if number == 0 else None
            if grad_out is None and extra is None:
                continue
            grad_out = torch.zeros_like(self.x) if grad_out is None else grad_out
            grad_out = grad_out.to(self.W_dec.dtype)
            if group.dense:
                self.dense_group(group, grad_out, extra)
            else:
                sparse_parts.append((group, grad_out, extra))
        if sparse_parts:
            self.sparse_groups(sparse_parts, need_x)
        if self.grad_b_enc is None:
            return (None,) * 5
        grad_b_dec = -(self.W_enc @ self.grad_b_enc)
        if grad_outs[0] is not None:
            grad_b_dec = grad_b_dec + grad_outs[0].sum(0)
        grad_x = None
        if need_x:
            W_enc_rows = self.W_enc.T.contiguous()  # [n_features, d_in]
            grad_x = sum(
                F.embedding_bag(g.latents, W_enc_rows, per_sample_weights=gp, mode="sum")
                for g, gp in self.pre_grads
            )
        grads = (self.grad_W_enc_rows, self.grad_b_enc, self.grad_W_dec)
        return grad_x, *grads, grad_b_dec.to(self.b_dec.dtype)

    def dense_group(self, group: Group, grad_out: Tensor, extra: Tensor | None) -> None:
        rows = decoder_rows(group, self.W_dec)
        value_grad = self.matmul(grad_out, rows.T).gather(1, group.slots)
        if extra is not None:
            value_grad = value_grad + extra.to(value_grad.dtype)
        grad_pre = value_grad * (group.values > 0)  # [batch, width], through the ReLU
        self.pre_grads.append((group, grad_pre))
        code, grad_code = dense_code(group, group.values), dense_code(group, grad_pre)
        columns, n = group.columns, self.n_features
        self.grad_W_dec = accumulate(self.grad_W_dec, self.matmul(code.T, grad_out), columns, n)
        grad_enc = self.matmul(grad_code.T, self.centered)
        self.grad_W_enc_rows = accumulate(self.grad_W_enc_rows, grad_enc, columns, n)
        self.grad_b_enc = accumulate(self.grad_b_enc, grad_code.sum(0), columns, n)

    def sparse_groups(self, parts: list[tuple[Group, Tensor, Tensor | None]], need_x: bool) -> None:
        groups = [group for group, _, _ in parts]
        entries = sort_entries(groups, self.n_features, self.W_dec.dtype)
        grad_outs = torch.cat([grad_out for _, grad_out, _ in parts])  # [groups · batch, d_in]
        # ∂x̂_b · W_dec[j] per entry, latent by latent: each decoder row is read once.
        order = entries.order
        dots = sampled_dots(order.crow, entries.grad_rows, self.W_dec, grad_outs)
        if any(extra is not None for *_, extra in parts):
            extras = [torch.zeros_like(g.values) if e is None else e for g, _, e in parts]
            extra = torch.cat([e.flatten() for e in extras]).to(dots.dtype)
            dots = dots + extra.index_select(0, order.order)
        grad_pre = dots * (entries.values > 0)  # through the ReLU, in latent order
        enc_rows = sum_rows_by_latent(order, self.centered, entries.tokens, grad_pre)
        dec_rows = sum_rows_by_latent(order, grad_outs, entries.grad_rows, entries.values)
        grad_b_enc = grad_pre.new_zeros(self.n_features).index_add_(0, order.latents, grad_pre)
        n = self.n_features
        self.grad_W_enc_rows = accumulate(self.grad_W_enc_rows, enc_rows, None, n)
        self.grad_W_dec = accumulate(self.grad_W_dec, dec_rows, None, n)
        self.grad_b_enc = accumulate(self.grad_b_enc, grad_b_enc, None, n)
        if need_x:
            unsorted = torch.empty_like(grad_pre).index_copy_(0, order.order, grad_pre)
            sizes = [g.latents.numel() for g in groups]
            for group, part in zip(groups, unsorted.split(sizes), strict=True):
                self.pre_grads.append((group, part.view(group.latents.shape)))


def sort_entries(groups: list[Group], n_features: int, dtype: torch.dtype) -> SparseEntries:
    """Every entry of the groups in latent order; equal latents in the concatenation's order."""
    batch = groups[0].latents.shape[0]
    order = sort_by_latent(torch.cat([g.latents.flatten() for g in groups]), n_features)
    token_rows = torch.arange(batch, device=groups[0].latents.device)
    widths = [g.latents.shape[1] for g in groups]
    tokens = torch.cat([token_rows.repeat_interleave(w) for w in widths])
    grad_rows = torch.cat(
        [(token_rows + i * batch).repeat_interleave(w) for i, w in enumerate(widths)]
    )
    values = torch.cat([g.values.flatten() for g in groups]).to(dtype)
    return SparseEntries(
        order,
        tokens.index_select(0, order.order),
        grad_rows.index_select(0, order.order),
        values.index_select(0, order.order),
    )
