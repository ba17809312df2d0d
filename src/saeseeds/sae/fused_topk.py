"""The Top-K SAE's training forward (encoder, Top-K, ReLU, AuxK selection, decoders) as one
autograd function with a hand-written backward, dense or sparse by size.

The chosen latents come in two groups: the k per token and (AuxK) the k_aux per token among the
dead latents. A *sparse* group decodes by gathering its chosen decoder rows (``embedding_bag``,
batch·width·d_in gathers); a *dense* group scatters its values into a [batch, columns] code
that one matmul decodes (batch·columns·d_in multiply-adds, each far cheaper than a gather).
Dense pays for small dictionaries, and for AuxK when few latents are dead; sparse for large
ones. The maths is the same either way.

The backward touches only the chosen entries. For values v = ReLU(p) at latents j of token b:
∂v = ∂v_out + ∂x̂_b · W_dec[j], ∂p = ∂v · 1[p > 0], ∂W_dec[j] += v · ∂x̂_b,
∂W_enc[:, j] += ∂p · (x_b − b_dec), ∂b_enc[j] += ∂p, ∂b_dec = Σ_b ∂x̂_b − W_enc ∂b_enc,
∂x_b = Σ ∂p · W_enc[:, j]. The sparse groups' entries are sorted by latent once, and both weight
gradients are summed in that order by ``embedding_bag`` (deterministic: no scatter atomics).
The dense [batch, n_features] pre-activations are freed after the forward. The sparse encoder
backward is EleutherAI sparsify's idea; here it also covers the decoder and the AuxK encoder
gradient, which sparsify drops.

Autocast: the forward runs under the caller's autocast state (the encoder matmul, and a dense
decode, in bf16 as in plain autograd); the backward has autocast off and returns gradients in
the parameters' dtype.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from saeseeds.sae.kernels import encoder_pre_activations

# A group decodes densely when it has at most this many columns per chosen entry: a dense
# multiply-add costs roughly a tenth of an embedding_bag gather on CPU (scripts/
# bench_train_step.py times both paths).
DENSE_COLUMNS_PER_ENTRY = 8
# The forward computes the [batch, n_features] pre-activations in blocks of rows of about this
# size: in cache, and under glibc's largest mmap threshold (32 MiB), so a block freed in one step
# is reused by the next instead of being faulted in again.
PRE_ACTIVATION_BLOCK_BYTES = 16 * 2**20


class Group(NamedTuple):
    """One set of chosen latents."""

    values: Tensor  # [batch, width], after ReLU
    latents: Tensor  # [batch, width], latent ids
    slots: Tensor  # [batch, width], positions among ``columns``
    columns: Tensor | None  # [n_columns] latent ids of a dense code's columns; None: all
    n_columns: int
    dense: bool


def use_dense(n_columns: int, width: int, sparse: bool | None) -> bool:
    """``sparse`` True/False forces a path; None picks by size."""
    if sparse is not None:
        return not sparse
    return n_columns <= DENSE_COLUMNS_PER_ENTRY * width


def select(
    x: Tensor,
    weights: tuple[Tensor, Tensor, Tensor],
    k: int,
    dead_latents: Tensor | None,
    k_aux: int,
    sparse: bool | None,
) -> tuple[Group, Group | None]:
    """The main group (top k of each row of the pre-activations) and, when k_aux > 0, the AuxK
    group (top k_aux among the dead latents' columns: the same latents as masking the live ones
    with −inf, without a second [batch, n_features] tensor).

    The pre-activations are computed and searched a block of rows at a time, so the block stays
    in cache and is never a fresh [batch, n_features] allocation (a fresh 256 MB buffer costs
    the operating system ~70 ms of page faults per step at 4096 × 16384). Each row's result is
    the same as for the whole batch at once.
    """
    W_enc, b_enc, b_dec = weights
    n_features = W_enc.shape[1]
    rows = max(1, PRE_ACTIVATION_BLOCK_BYTES // (4 * n_features))
    tops, auxes = [], []
    for block in x.split(rows):
        pre = encoder_pre_activations(block, W_enc, b_enc, b_dec)  # [rows, n_features]
        tops.append(pre.topk(k, dim=-1, sorted=False))
        if k_aux > 0:
            auxes.append(pre.index_select(1, dead_latents).topk(k_aux, sorted=False))
    top_pre, indices = (torch.cat(parts) for parts in zip(*tops, strict=True))  # [batch, k]
    main = Group(
        F.relu(top_pre), indices, indices, None, n_features, use_dense(n_features, k, sparse)
    )
    if k_aux == 0:
        return main, None
    aux_pre, dead_slots = (torch.cat(parts) for parts in zip(*auxes, strict=True))
    n_dead = len(dead_latents)
    dense = use_dense(n_dead, k_aux, sparse)
    aux_latents = dead_latents.take(dead_slots)
    return main, Group(F.relu(aux_pre), aux_latents, dead_slots, dead_latents, n_dead, dense)


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


def dense_value_grads(group: Group, grad_out: Tensor, W_dec: Tensor) -> Tensor:  # [batch, width]
    """∂x̂_b · W_dec[j] for each chosen entry of a dense group."""
    return (grad_out @ decoder_rows(group, W_dec).T).gather(1, group.slots)


def accumulate(total: Tensor | None, part: Tensor, columns: Tensor | None, n: int) -> Tensor:
    """total[columns] += part (every row when columns is None), total of n rows, zero at first."""
    if columns is None:
        return part if total is None else total.add_(part)
    if total is None:
        total = part.new_zeros(n, *part.shape[1:])
    return total.index_add_(0, columns, part)


class SparseEntries(NamedTuple):
    """The sparse groups' chosen entries, concatenated and sorted by latent (stable)."""

    order: Tensor  # [entries] positions in the concatenation, in latent order
    latents: Tensor  # [entries] sorted latent ids
    starts: Tensor  # [n_features] each latent's first position
    tokens: Tensor  # [entries] token (row of x) of each sorted entry
    grad_rows: Tensor  # [entries] row of the stacked ∂x̂ of each sorted entry
    values: Tensor  # [entries] sorted values after ReLU


def sort_by_latent(groups: list[Group], n_features: int, dtype: torch.dtype) -> SparseEntries:
    """One stable sort of every sparse entry by latent. All the sparse backward's sums then run
    latent by latent: each decoder row is read once while its entries are summed, the tokens'
    rows stay in cache, and each latent's sum has a fixed order (deterministic: no scatter
    atomics). The order of equal latents is the concatenation's, as the forward listed them."""
    device = groups[0].latents.device
    batch = groups[0].latents.shape[0]
    latents = torch.cat([g.latents.flatten() for g in groups])
    # int32 keys sort ~1.7× faster than int64 (half the memory traffic).
    key_dtype = torch.int32 if n_features < 2**31 else torch.int64
    sorted_keys, order = latents.to(key_dtype).sort(stable=True)
    starts = torch.searchsorted(
        sorted_keys, torch.arange(n_features, device=device, dtype=key_dtype)
    )
    token_rows = torch.arange(batch, device=device)
    tokens = torch.cat([token_rows.repeat_interleave(g.latents.shape[1]) for g in groups])
    grad_rows = torch.cat(
        [
            (token_rows + i * batch).repeat_interleave(g.latents.shape[1])
            for i, g in enumerate(groups)
        ]
    )
    values = torch.cat([g.values.flatten() for g in groups]).to(dtype)
    return SparseEntries(
        order,
        sorted_keys.long(),
        starts,
        tokens.index_select(0, order),
        grad_rows.index_select(0, order),
        values.index_select(0, order),
    )


def latent_major_dots(W_dec: Tensor, grad_outs: Tensor, entries: SparseEntries) -> Tensor:
    """W_dec[j] · grad_outs[r] for each sorted entry (latent j, row r), as a sampled matmul
    whose sparse rows are the latents: each decoder row is read once for all its entries, and
    each dot product is one vectorised reduction (about 3× faster than a BLAS dot per entry)."""
    n_entries = entries.latents.numel()
    crow = torch.cat([entries.starts, entries.starts.new_tensor([n_entries])])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
        pattern = torch.sparse_csr_tensor(
            crow,
            entries.grad_rows,
            W_dec.new_zeros(n_entries),
            size=(W_dec.shape[0], grad_outs.shape[0]),
            check_invariants=False,  # built sorted and in range by construction
        )
        return torch.sparse.sampled_addmm(pattern, W_dec, grad_outs.T, beta=0.0).values()


def sparse_grads(
    entries: SparseEntries,
    grad_outs: Tensor,  # [n_groups · batch, d_in]: each sparse group's ∂x̂, stacked
    extra: Tensor | None,  # [entries] ∂values in concatenation order, or None
    centered: Tensor,
    W_dec: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(∂W_enc rows, ∂W_dec, ∂b_enc, ∂pre in sorted order) of the sparse groups' entries."""
    dots = latent_major_dots(W_dec, grad_outs, entries)  # ∂x̂_b · W_dec[j] per entry
    if extra is not None:
        dots = dots + extra.index_select(0, entries.order)
    grad_pre = dots * (entries.values > 0)  # through the ReLU
    enc_rows, dec_rows = (
        F.embedding_bag(ids, rows, entries.starts, per_sample_weights=weights, mode="sum")
        for rows, ids, weights in (
            (centered, entries.tokens, grad_pre),
            (grad_outs, entries.grad_rows, entries.values),
        )
    )
    grad_b_enc = W_dec.new_zeros(W_dec.shape[0]).index_add_(0, entries.latents, grad_pre)
    return enc_rows, dec_rows, grad_b_enc, grad_pre


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
        main, aux = select(x, (W_enc, b_enc, b_dec), k, dead_latents, k_aux, sparse)
        groups = [main] if aux is None else [main, aux]
        reconstruction = decode(groups[0], W_dec) + b_dec
        aux_reconstruction = decode(groups[1], W_dec) if len(groups) > 1 else x.new_zeros(0)
        ctx.layout = [(g.columns is not None, g.n_columns, g.dense) for g in groups]
        saved = [
            t for g in groups for t in (g.values, g.latents, g.slots, g.columns) if t is not None
        ]
        ctx.save_for_backward(x, W_enc, W_dec, b_dec, *saved)
        ctx.mark_non_differentiable(groups[0].latents)
        ctx.set_materialize_grads(False)
        return groups[0].values, groups[0].latents, reconstruction, aux_reconstruction

    @staticmethod
    @once_differentiable
    def backward(
        ctx, grad_values: Tensor | None, _: None, grad_recon: Tensor | None, grad_aux: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        x, W_enc, W_dec, b_dec, *saved = ctx.saved_tensors
        groups = []
        for has_columns, n_columns, dense in ctx.layout:
            values, latents, slots, *rest = saved[: 3 + has_columns]
            saved = saved[3 + has_columns :]
            groups.append(
                Group(values, latents, slots, rest[0] if rest else None, n_columns, dense)
            )
        need_x, need_W_enc, need_b_enc, need_W_dec, need_b_dec = ctx.needs_input_grad[:5]
        with torch.autocast(x.device.type, enabled=False):
            grads = _backward(
                groups, [grad_recon, grad_aux], grad_values, x, W_enc, W_dec, b_dec, need_x
            )
        grad_x, grad_W_enc, grad_b_enc, grad_W_dec, grad_b_dec = grads
        return (
            grad_x.to(x.dtype) if need_x and grad_x is not None else None,
            grad_W_enc if need_W_enc else None,
            grad_b_enc if need_b_enc else None,
            grad_W_dec if need_W_dec else None,
            grad_b_dec if need_b_dec else None,
            None,
            None,
            None,
            None,
        )


def _backward(
    groups: list[Group],
    grad_outs: list[Tensor | None],
    grad_values: Tensor | None,
    x: Tensor,
    W_enc: Tensor,
    W_dec: Tensor,
    b_dec: Tensor,
    need_x: bool,
) -> tuple[Tensor | None, ...]:
    n_features = W_enc.shape[1]
    centered = (x - b_dec).to(W_enc.dtype)  # [batch, d_in]
    # Accumulated as one row per latent: [n_features, d_in] (W_enc's gradient transposed).
    grad_W_enc_rows = grad_W_dec = grad_b_enc = None
    sparse_parts, pre_grads = [], []
    for number, (group, grad_out) in enumerate(zip(groups, grad_outs, strict=False)):
        extra = grad_values if number == 0 else None
        if grad_out is None and extra is None:
            continue
        grad_out = torch.zeros_like(x, dtype=W_dec.dtype) if grad_out is None else grad_out
        grad_out = grad_out.to(W_dec.dtype)
        if not group.dense:
            sparse_parts.append((group, grad_out, extra))
            continue
        value_grad = dense_value_grads(group, grad_out, W_dec)
        if extra is not None:
            value_grad = value_grad + extra.to(value_grad.dtype)
        grad_pre = value_grad * (group.values > 0)  # [batch, width], through the ReLU
        pre_grads.append((group, grad_pre))
        code, grad_code = dense_code(group, group.values), dense_code(group, grad_pre)
        columns = group.columns
        grad_W_dec = accumulate(grad_W_dec, code.T @ grad_out, columns, n_features)
        grad_W_enc_rows = accumulate(grad_W_enc_rows, grad_code.T @ centered, columns, n_features)
        grad_b_enc = accumulate(grad_b_enc, grad_code.sum(0), columns, n_features)
    if sparse_parts:
        sparse_groups = [group for group, _, _ in sparse_parts]
        entries = sort_by_latent(sparse_groups, n_features, W_dec.dtype)
        extras = [
            (torch.zeros_like(g.values) if e is None else e).flatten() for g, _, e in sparse_parts
        ]
        has_extra = any(e is not None for *_, e in sparse_parts)
        extra = torch.cat(extras).to(W_dec.dtype) if has_extra else None
        grad_outs_stacked = torch.cat([grad_out for _, grad_out, _ in sparse_parts])
        enc_rows, dec_rows, sparse_b_enc, grad_pre_sorted = sparse_grads(
            entries, grad_outs_stacked, extra, centered, W_dec
        )
        grad_W_enc_rows = accumulate(grad_W_enc_rows, enc_rows, None, n_features)
        grad_W_dec = accumulate(grad_W_dec, dec_rows, None, n_features)
        grad_b_enc = accumulate(grad_b_enc, sparse_b_enc, None, n_features)
        if need_x:
            grad_pre_flat = torch.empty_like(grad_pre_sorted)
            grad_pre_flat.index_copy_(0, entries.order, grad_pre_sorted)
            sizes = [g.latents.numel() for g in sparse_groups]
            for group, grad_pre in zip(sparse_groups, grad_pre_flat.split(sizes), strict=True):
                pre_grads.append((group, grad_pre.view(group.latents.shape)))
    if grad_b_enc is None:
        return (None,) * 5
    grad_b_dec = -(W_enc @ grad_b_enc)
    if grad_outs[0] is not None:
        grad_b_dec = grad_b_dec + grad_outs[0].sum(0)
    grad_x = None
    if need_x:
        W_enc_rows = W_enc.T.contiguous()  # [n_features, d_in]
        grad_x = sum(
            F.embedding_bag(g.latents, W_enc_rows, per_sample_weights=gp, mode="sum")
            for g, gp in pre_grads
        )
    return grad_x, grad_W_enc_rows.T, grad_b_enc, grad_W_dec, grad_b_dec.to(b_dec.dtype)
