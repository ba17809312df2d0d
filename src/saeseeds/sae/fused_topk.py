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


def select(pre: Tensor, k: int, dead_latents: Tensor | None, k_aux: int, sparse: bool | None):
    """The main group (top k of each row) and, when k_aux > 0, the AuxK group (top k_aux among
    the dead latents' columns: the same latents as masking the live ones with −inf, without a
    second [batch, n_features] tensor)."""
    n_features = pre.shape[1]
    top_pre, indices = pre.topk(k, dim=-1, sorted=False)  # [batch, k]
    main = Group(
        F.relu(top_pre), indices, indices, None, n_features, use_dense(n_features, k, sparse)
    )
    if k_aux == 0:
        return main, None
    aux_pre, dead_slots = pre.index_select(1, dead_latents).topk(k_aux, sorted=False)
    n_dead = len(dead_latents)
    dense = use_dense(n_dead, k_aux, sparse)
    aux = Group(F.relu(aux_pre), dead_latents[dead_slots], dead_slots, dead_latents, n_dead, dense)
    return main, aux


def decode(group: Group, W_dec: Tensor) -> Tensor:  # [batch, d_in], no b_dec
    if group.dense:
        return dense_code(group, group.values) @ decoder_rows(group, W_dec)
    values = group.values.to(W_dec.dtype)
    return F.embedding_bag(group.latents, W_dec, per_sample_weights=values, mode="sum")


def dense_code(group: Group, entries: Tensor) -> Tensor:  # [batch, n_columns]
    code = entries.new_zeros(entries.shape[0], group.n_columns)
    return code.scatter_(1, group.slots, entries)


def decoder_rows(group: Group, W_dec: Tensor) -> Tensor:  # [n_columns, d_in]
    return W_dec if group.columns is None else W_dec.index_select(0, group.columns)


def value_grads(group: Group, grad_out: Tensor, W_dec: Tensor) -> Tensor:  # [batch, width]
    """∂x̂_b · W_dec[j] for each chosen entry."""
    if group.dense:
        return (grad_out @ decoder_rows(group, W_dec).T).gather(1, group.slots)
    batch, width = group.latents.shape
    # The per-entry dot products embedding_bag's own backward computes, without its dense
    # weight gradient (which sorts the indices again).
    offsets = torch.arange(0, batch * width, width, device=grad_out.device)
    bags = torch.arange(batch, device=grad_out.device).repeat_interleave(width)
    dots = torch.ops.aten._embedding_bag_per_sample_weights_backward(
        grad_out, W_dec, group.latents.flatten(), offsets, bags, 0, -1
    )
    return dots.view(batch, width)


def accumulate(total: Tensor | None, part: Tensor, columns: Tensor | None, n: int) -> Tensor:
    """total[columns] += part (every row when columns is None), total of n rows, zero at first."""
    if columns is None:
        return part if total is None else total.add_(part)
    if total is None:
        total = part.new_zeros(n, *part.shape[1:])
    return total.index_add_(0, columns, part)


def sum_rows_by_latent(
    latents: Tensor, n_features: int, terms: list[tuple[Tensor, Tensor, Tensor]]
) -> list[Tensor]:  # each [n_features, d]
    """For each (rows, row_ids, weights) term: out[j] = Σ_{e: latents[e] = j} weights[e] ·
    rows[row_ids[e]]. One stable sort groups the entries by latent for every term;
    ``embedding_bag`` then sums each latent's rows in that fixed order (deterministic)."""
    sorted_latents, order = latents.sort(stable=True)
    starts = torch.searchsorted(sorted_latents, torch.arange(n_features, device=latents.device))
    return [
        F.embedding_bag(ids[order], rows, starts, per_sample_weights=weights[order], mode="sum")
        for rows, ids, weights in terms
    ]


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
        pre = encoder_pre_activations(x, W_enc, b_enc, b_dec)  # [batch, n_features]
        groups = [g for g in select(pre, k, dead_latents, k_aux, sparse) if g is not None]
        del pre
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
    batch, n_features = x.shape[0], W_enc.shape[1]
    centered = (x - b_dec).to(W_enc.dtype)  # [batch, d_in]
    # Accumulated as one row per latent: [n_features, d_in] (W_enc's gradient transposed).
    grad_W_enc_rows = grad_W_dec = grad_b_enc = None
    sparse_terms, pre_grads = [], []
    for number, (group, grad_out) in enumerate(zip(groups, grad_outs, strict=False)):
        extra = grad_values if number == 0 else None
        if grad_out is None and extra is None:
            continue
        grad_out = torch.zeros_like(x, dtype=W_dec.dtype) if grad_out is None else grad_out
        grad_out = grad_out.to(W_dec.dtype)
        value_grad = value_grads(group, grad_out, W_dec)
        if extra is not None:
            value_grad = value_grad + extra.to(value_grad.dtype)
        grad_pre = value_grad * (group.values > 0)  # [batch, width], through the ReLU
        pre_grads.append((group, grad_pre))
        if group.dense:
            code, grad_code = dense_code(group, group.values), dense_code(group, grad_pre)
            columns = group.columns
            grad_W_dec = accumulate(grad_W_dec, code.T @ grad_out, columns, n_features)
            grad_W_enc_rows = accumulate(
                grad_W_enc_rows, grad_code.T @ centered, columns, n_features
            )
            grad_b_enc = accumulate(grad_b_enc, grad_code.sum(0), columns, n_features)
        else:
            sparse_terms.append((group, grad_out, grad_pre, number))
    if sparse_terms:
        latents = torch.cat([g.latents.flatten() for g, *_ in sparse_terms])
        width_rows = [
            torch.arange(batch, device=x.device).repeat_interleave(g.latents.shape[1])
            for g, *_ in sparse_terms
        ]
        token_rows = torch.cat(width_rows)
        output_rows = torch.cat([rows + i * batch for i, rows in enumerate(width_rows)])
        grad_pre_flat = torch.cat([grad_pre.flatten() for _, _, grad_pre, _ in sparse_terms])
        values_flat = torch.cat([g.values.flatten().to(W_dec.dtype) for g, *_ in sparse_terms])
        grad_rows = torch.cat([grad_out for _, grad_out, _, _ in sparse_terms])
        enc_rows, dec_rows = sum_rows_by_latent(
            latents,
            n_features,
            [(centered, token_rows, grad_pre_flat), (grad_rows, output_rows, values_flat)],
        )
        grad_W_enc_rows = accumulate(grad_W_enc_rows, enc_rows, None, n_features)
        grad_W_dec = accumulate(grad_W_dec, dec_rows, None, n_features)
        sparse_b_enc = torch.zeros_like(W_enc[0]).index_add_(0, latents, grad_pre_flat)
        grad_b_enc = accumulate(grad_b_enc, sparse_b_enc, None, n_features)
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
