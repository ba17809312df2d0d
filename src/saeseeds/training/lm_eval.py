"""Evaluation that needs the language model and the held-out text: the CE-loss score and KL with
the reconstruction spliced in at the hook, and each feature's top activating held-out contexts.

Works from a :class:`saeseeds.activations.base.TextContext`; a source without one (synthetic
data, an activation file, a control) skips both. The clean logits and the zero-ablation CE do not
depend on the SAE, so they are computed once per (store, model) in a process and reused by the
next job of a sweep.

The scoring forward passes of a float32 model run under bf16 autocast where that is measurably
faster (``model.eval_dtype``, :func:`eval_precision`); the SAE inside them always reconstructs in
float32, and the clean and zero-ablation baselines are scored in the same precision as the SAE.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from saeseeds import precision
from saeseeds.activations.base import TextContext
from saeseeds.activations.hooks import (
    logits_and_block_input,
    logits_with_replacement,
    resumes_exactly,
)
from saeseeds.activations.models import MIN_MEASURED_PARAMETERS
from saeseeds.contract import TOP_EXAMPLES_FORMAT, TOP_EXAMPLES_MARKER

MARKER = TOP_EXAMPLES_MARKER
TOP_EXAMPLES_BATCH = 2048
PROBE_SEQUENCES = 2
"""Sequences of the timed scoring forward: bf16's gain at 2 is its gain at 8 (SmolLM2-135M,
AVX-512 bf16: 1.81x at both; 1.32x at 1)."""
PROBE_TOKENS = 16
"""Tokens of the check that a forward resumed at the hook's block is the whole forward: how a
model's loop calls its blocks shows at any length, and four forwards of a whole 128-token
sequence took 1.4 s of SmolLM2-135M in float32 on 2 cores."""
# The clean model's scored log-probabilities and probabilities, its CE and the zero-ablation CE.
_BASELINE_MEMORY: dict[tuple, dict[str, Any]] = {}
# The decoded context of each held-out row (ContextWindows), for one store at a time.
_WINDOW_MEMORY: dict[tuple, dict[int, dict[str, Any]]] = {}
# The precision of the scoring forward, by model, device, setting and sequence length.
_EVAL_CHOICES: dict[tuple, precision.PrecisionChoice] = {}
# Tensors the size of a forward batch's logits, kept between jobs for each job's scoring: a new
# tensor that large (200 MB at 8 x 128 tokens and 49,152 words) is new pages each time, since glibc
# maps every allocation over 32 MB afresh, and faulting them in cost more than the arithmetic
# (log_softmax 310 ms into a new tensor, 19 ms into a kept one; the KL's terms 135 ms and 20 ms).
_SCRATCH: dict[str, Tensor] = {}


# ---- the precision of the scoring forward ----


def eval_precision(context: TextContext) -> precision.PrecisionChoice:
    """float32 or bfloat16 (autocast) for the scoring forward passes of ``context``'s model:
    see :func:`model_eval_precision`."""
    seq_len = int(context.heldout_tokens.shape[1])
    return model_eval_precision(context.model, context.eval_dtype, context.model_cache_dir, seq_len)


def model_eval_precision(
    model: Any, eval_dtype: str, model_cache_dir: str, seq_len: int
) -> precision.PrecisionChoice:
    """The precision of ``model``'s (a LoadedModel) scoring forward passes: the model's own dtype
    when it is not float32, ``eval_dtype`` when set, and for ``auto`` the rule of
    :func:`saeseeds.precision.choose` on this model's forward under autocast (timed on
    :data:`PROBE_SEQUENCES` sequences of ``seq_len`` tokens, once per machine, cached under
    ``model_cache_dir``)."""
    # Looked up before anything is counted: every scoring forward of a job asks again.
    memo_key = (
        model.weight_hash,
        str(model.device),
        str(model.dtype),
        eval_dtype,
        str(model_cache_dir),
        torch.get_num_threads(),
        seq_len,
    )
    if memo_key in _EVAL_CHOICES:
        return _EVAL_CHOICES[memo_key]
    parameters = sum(parameter.numel() for parameter in model.bridge.parameters())
    workload = (
        f"lm_eval_autocast:parameters={parameters}:layers={model.n_layers}:"
        f"d_model={model.d_model}:tokens={PROBE_SEQUENCES}x{seq_len}"
    )
    device = precision.this_device(model.device)
    model_dtype = str(model.dtype).removeprefix("torch.")
    if model_dtype != "float32":
        choice = precision.PrecisionChoice(
            workload,
            model_dtype,
            f"the model runs in {model_dtype} (model.dtype)",
            device_key=device.key,
        )
    elif eval_dtype != "auto":
        choice = precision.PrecisionChoice(
            workload, eval_dtype, "set by model.eval_dtype", device_key=device.key
        )
    else:
        choice = precision.choose(
            device,
            workload,
            model_cache_dir,
            eval_probe(model, seq_len),
            worth_measuring=parameters >= MIN_MEASURED_PARAMETERS,
        )
    _EVAL_CHOICES[memo_key] = choice
    return choice


def eval_probe(model: Any, seq_len: int) -> Callable[[torch.dtype], Callable[[], Any]]:
    """What :func:`saeseeds.precision.measured_choice` times for the scoring forward: ``model``'s
    forward on :data:`PROBE_SEQUENCES` random sequences of ``seq_len`` tokens, under bf16
    autocast for ``torch.bfloat16``."""
    vocabulary = int(model.bridge.cfg.d_vocab)

    def run_in(dtype: torch.dtype) -> Callable[[], Any]:
        generator = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, vocabulary, (PROBE_SEQUENCES, seq_len), generator=generator)

        def forward() -> None:
            with torch.no_grad(), _autocast(model.device, dtype == torch.bfloat16):
                model.bridge(tokens.to(model.device), return_type="logits")

        return forward

    return run_in


def _autocast(device: torch.device, enabled: bool) -> Any:
    """bf16 autocast on ``device`` when ``enabled`` (a float32 model scored in bf16)."""
    if not enabled:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _autocast_on(context: TextContext) -> bool:
    """Whether the scoring forward of ``context`` runs under bf16 autocast."""
    return context.model.dtype == torch.float32 and eval_precision(context).chosen == "bfloat16"


# ---- CE-loss score ----


@torch.no_grad()
def ce_loss_metrics(context: TextContext, reconstruct: Callable[[Tensor], Tensor]) -> dict:
    """CE loss and KL with ``reconstruct`` (raw activations -> raw reconstructions) spliced in.

    Positions before ``first_position`` keep their clean activations in every variant (the SAE
    never saw them), so zero ablation and the SAE replace exactly the positions trained on; a
    zero reconstruction therefore scores 0 and a perfect one 1.
    """
    tokens = context.heldout_tokens[: context.eval_sequences].long()
    baseline = _baseline(context, tokens)
    ce_sae, kl = _ce_and_kl(
        context, tokens, reconstruct, baseline["clean"], baseline["resume_from"]
    )
    ce_clean, ce_zero = baseline["ce_clean"], baseline["ce_zero"]
    denominator = ce_zero - ce_clean
    score = (ce_zero - ce_sae) / denominator if abs(denominator) > 1e-12 else float("nan")
    return {
        "ce_loss_score": score,
        "kl_div": kl,
        "ce_clean": ce_clean,
        "ce_sae": ce_sae,
        "ce_zero_ablation": ce_zero,
    }


def _baseline(context: TextContext, tokens: Tensor) -> dict[str, Any]:
    # The forward batch size too: the clean predictions are kept by forward batch; and the
    # device, whose kernels round differently (one process may score on two).
    memo_key = (
        context.store_key,
        context.eval_sequences,
        context.forward_batch_size,
        context.model.weight_hash,
        _autocast_on(context),
        str(context.model.device),
    )
    if memo_key not in _BASELINE_MEMORY:
        logits, block_inputs = _clean_forward(context, tokens)
        clean = [F.log_softmax(chunk, dim=-1) for chunk in logits]
        del logits
        resume_from = block_inputs if _resumes(context, tokens, block_inputs) else None
        ce_zero, _ = _ce_and_kl(context, tokens, torch.zeros_like, None, resume_from)
        _BASELINE_MEMORY.clear()
        first = context.first_position
        _BASELINE_MEMORY[memo_key] = {
            # The predictions scored, as log-probabilities and probabilities: the KL of every
            # job needs both, and the exponential costs as much as the rest of the KL.
            "clean": [(lp[:, first:-1], lp[:, first:-1].exp()) for lp in clean],
            "ce_clean": _ce(context, tokens, clean),
            "ce_zero": ce_zero,
            # What enters the hook's block, by forward batch: each spliced forward starts there.
            "resume_from": resume_from,
        }
    return _BASELINE_MEMORY[memo_key]


def _clean_forward(context: TextContext, tokens: Tensor) -> tuple[list[Tensor], list | None]:
    """The clean logits of each forward batch (float32, CPU) and what enters the hook's block
    in each (on the model's device; None where no forward can resume there)."""
    logits, block_inputs = [], []
    for chunk_logits, block_input in _by_forward_batch(
        context,
        tokens,
        lambda _, chunk: logits_and_block_input(context.model.bridge, context.hook, chunk),
    ):
        logits.append(chunk_logits.float().cpu())
        block_inputs.append(block_input)
    return logits, None if any(b is None for b in block_inputs) else block_inputs


def _resumes(context: TextContext, tokens: Tensor, block_inputs: list | None) -> bool:
    """Whether the spliced forwards can start at the hook's block (:func:`resumes_exactly`,
    probed on the first ``PROBE_TOKENS`` tokens of the first sequence)."""
    if block_inputs is None:
        return False
    probe = tokens[:1, :PROBE_TOKENS].to(context.model.device)
    with _autocast(context.model.device, _autocast_on(context)):
        return resumes_exactly(context.model.bridge, context.hook, probe)


def _ce_and_kl(
    context: TextContext,
    tokens: Tensor,
    reconstruct: Callable[[Tensor], Tensor],
    clean: list[tuple[Tensor, Tensor]] | None,
    resume_from: list[Tensor] | None = None,
) -> tuple[float, float]:
    """CE with ``reconstruct`` spliced in, and its KL from ``clean`` (the clean model's scored
    log-probabilities and probabilities, by forward batch; None: no KL). ``resume_from``: what
    enters the hook's block in each forward batch, where the forwards start there."""
    first = context.first_position

    def replace(activation: Tensor) -> Tensor:  # [batch, pos, d]
        flat = activation[:, first:].reshape(-1, activation.shape[-1]).float().cpu()
        with torch.autocast(device_type="cpu", enabled=False):  # the SAE: float32, on the CPU
            rebuilt = reconstruct(flat).reshape(activation[:, first:].shape)
        return torch.cat([activation[:, :first], rebuilt.to(activation)], dim=1)

    # One forward batch at a time, into kept tensors: the same operations in the same order as
    # scoring them all at once, so the same bits.
    ce_total, count, kl_total, start, batches = 0.0, 0, 0, 0, 0
    for logits in _logits(context, tokens, replace, resume_from):
        log_probs = _scratch("log_probs", logits.shape)
        torch.log_softmax(_scratch("logits", logits.shape).copy_(logits), dim=-1, out=log_probs)
        del logits  # the forward's own, before the next forward makes its own
        stop = start + len(log_probs)
        chunk_total, chunk_count = _ce_terms(context, tokens[start:stop], log_probs)
        ce_total, count, start = ce_total - chunk_total, count + chunk_count, stop
        if clean is not None and batches < len(clean):
            # KL(clean || spliced) summed over the scored predictions: F.kl_div's own terms
            # (exp(clean) * (clean - spliced)), with exp(clean) computed once per process; the
            # terms go into the logits' kept tensor, whose values are spent.
            log_probs_clean, probs = clean[batches]
            terms = _scratch("logits", log_probs_clean.shape)
            torch.sub(log_probs_clean, log_probs[:, first:-1], out=terms)
            kl_total = kl_total + terms.mul_(probs).sum()
        batches += 1
    kl = float("nan")
    if clean is not None:
        if batches != len(clean):
            raise ValueError(f"{batches} forward batches scored against {len(clean)} clean ones")
        kl = float(kl_total) / (len(tokens) * (tokens.shape[1] - 1 - first))
    return ce_total / count, kl


def _scratch(name: str, shape: torch.Size) -> Tensor:
    """A float32 CPU tensor of ``shape`` kept under ``name`` between calls (see ``_SCRATCH``)."""
    size = shape.numel()
    kept = _SCRATCH.get(name)
    if kept is None or kept.numel() < size:
        kept = _SCRATCH[name] = torch.empty(size, dtype=torch.float32)
    return kept[:size].view(shape)


def _logits(
    context: TextContext,
    tokens: Tensor,
    replace: Callable[[Tensor], Tensor],
    resume_from: list[Tensor] | None = None,
) -> Iterator[Tensor]:
    """The spliced logits [batch, pos, vocab] of each forward batch of ``tokens``, in order, as
    the forward left them, to be used before the next is made. ``resume_from``: what enters the
    hook's block in each batch, to start the forwards there."""

    def spliced(index: int, chunk: Tensor) -> Tensor:
        block_input = resume_from[index] if resume_from is not None else None
        return logits_with_replacement(
            context.model.bridge, context.hook, chunk, replace, resume_from=block_input
        )

    return _by_forward_batch(context, tokens, spliced)


def _by_forward_batch(
    context: TextContext, tokens: Tensor, forward: Callable[[int, Tensor], Any]
) -> Iterator[Any]:
    """``forward(index, chunk)`` on each forward batch of ``tokens`` in order, the chunk on the
    model's device, under the scoring precision; each result is yielded before the next
    forward runs."""
    model, batch = context.model, context.forward_batch_size
    autocast = _autocast_on(context)
    for index, start in enumerate(range(0, len(tokens), batch)):
        chunk = tokens[start : start + batch].to(model.device)
        with _autocast(model.device, autocast):
            result = forward(index, chunk)
        yield result


def _ce(context: TextContext, tokens: Tensor, log_probs: list[Tensor]) -> float:
    """Mean next-token CE over predictions made at positions first_position .. seq_len-2."""
    total, count, index = 0.0, 0, 0
    for lp in log_probs:  # [batch, pos, vocab]
        chunk_total, chunk_count = _ce_terms(context, tokens[index : index + len(lp)], lp)
        total, count, index = total - chunk_total, count + chunk_count, index + len(lp)
    return total / count


def _ce_terms(context: TextContext, tokens: Tensor, log_probs: Tensor) -> tuple[float, int]:
    """(the summed log-probability of each next token, their count) for one forward batch."""
    first = context.first_position
    targets = tokens[:, first + 1 :]  # [batch, pos - first - 1]
    picked = log_probs[:, first:-1].gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return float(picked.sum()), targets.numel()


# ---- top activating examples ----


@torch.no_grad()
def top_examples(
    context: TextContext, encode: Callable[[Tensor], Tensor], n_examples: int
) -> dict[str, Any]:
    """For each feature that fires on held-out text, its ``n_examples`` strongest contexts, with
    the feature's activation at every token of each context."""
    heldout = context.heldout_activations  # [n_heldout, d]
    best_values = best_rows = None  # [n_examples, n_features]
    for start in range(0, len(heldout), TOP_EXAMPLES_BATCH):
        latents = encode(heldout[start : start + TOP_EXAMPLES_BATCH].float())  # [batch, n]
        rows = torch.arange(start, start + len(latents)).unsqueeze(1).expand_as(latents)
        if best_values is not None:
            latents = torch.cat([best_values, latents.cpu()])
            rows = torch.cat([best_rows, rows])
        keep = min(n_examples, len(latents))
        best_values, order = latents.cpu().topk(keep, dim=0)
        best_rows = rows.gather(0, order)
    features: dict[str, list[dict[str, Any]]] = {}
    if best_values is not None:
        windows = ContextWindows(context)
        values, rows = best_values.T.tolist(), best_rows.T.tolist()  # [n_features][n_examples]
        for feature in torch.nonzero(best_values[0] > 0).flatten().tolist():
            features[str(feature)] = [
                windows.example(row, value)
                for value, row in zip(values[feature], rows[feature], strict=True)
                if value > 0
            ]
        add_token_activations(context, encode, features)
    return {"format": TOP_EXAMPLES_FORMAT, "marker": list(MARKER), "features": features}


class PieceDecoder:
    """Decodes token ids to text, and a run of ids to per-token pieces whose concatenation is
    exactly the decoded run (a token that decodes to part of a character gets "" and the token
    that completes it the whole character; leading spaces stay with their token)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, clean_up_tokenization_spaces=False)

    def pieces(self, ids: list[int]) -> list[str]:
        if not ids:
            return []
        prefixes = self.tokenizer.batch_decode(
            [ids[: end + 1] for end in range(len(ids))], clean_up_tokenization_spaces=False
        )
        whole, bounds = prefixes[-1], [0]
        for prefix in prefixes:
            common = 0
            for mine, theirs in zip(prefix, whole, strict=False):
                if mine != theirs:
                    break
                common += 1
            bounds.append(max(bounds[-1], common))
        bounds[-1] = len(whole)
        return [whole[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


class ContextWindows:
    """The text of each held-out row's context, built once per row and process: the rows that
    are top examples of several features (most, in a large dictionary), and of the next job's
    SAE on the same store, are decoded once."""

    def __init__(self, context: TextContext):
        self.context, self.decoder = context, PieceDecoder(context.model.tokenizer)
        memo_key = (
            context.store_key,
            context.model.tokenizer_hash,
            context.context_before,
            context.context_after,
        )
        if memo_key not in _WINDOW_MEMORY:
            _WINDOW_MEMORY.clear()  # one store's windows at a time
            _WINDOW_MEMORY[memo_key] = {}
        self._windows = _WINDOW_MEMORY[memo_key]

    def example(self, row: int, activation: float) -> dict[str, Any]:
        """One top example: the row's context, with the feature's activation at the row."""
        window = self._windows.get(row)
        if window is None:
            window = self._windows[row] = _window(self.context, self.decoder, row)
        return {
            "activation": float(f"{activation:.6g}"),
            "text": window["text"],
            "token": window["token"],
            "tokens": list(window["tokens"]),
            "token_index": window["token_index"],
            # Held-out rows of the context's tokens (-1 where none was kept), until
            # add_token_activations puts the feature's activations there instead.
            "_rows": window["rows"],
        }


def _window(context: TextContext, decoder: PieceDecoder, row: int) -> dict[str, Any]:
    sequence, offset = divmod(row, context.kept_per_sequence)
    position = offset + context.first_position
    ids = context.heldout_tokens[sequence].tolist()
    text_start = 1 if context.prepend_bos else 0  # BOS is not text
    start = max(text_start, position - context.context_before)
    end = min(len(ids), position + 1 + context.context_after)
    before, after = decoder.pieces(ids[start:position]), decoder.pieces(ids[position + 1 : end])
    token = decoder.text(ids[position : position + 1])
    return {
        "text": "".join(before) + MARKER[0] + token + MARKER[1] + "".join(after),
        "token": token,
        "tokens": (*before, token, *after),
        "token_index": len(before),
        "rows": tuple(
            sequence * context.kept_per_sequence + p - context.first_position
            if p >= context.first_position
            else -1
            for p in range(start, end)
        ),
    }


def add_token_activations(
    context: TextContext, encode: Callable[[Tensor], Tensor], features: dict[str, list[dict]]
) -> None:
    """Give each context ``token_activations``: the feature's activation at each of its tokens
    (6 significant digits; None where the position kept no activation), from the held-out rows
    ``ContextWindows.example`` noted; each needed row is encoded once."""
    items, counts, latents, flat_rows = [], [], [], []
    for feature, contexts in features.items():
        for item in contexts:
            rows = item.pop("_rows")
            items.append(item)
            counts.append(len(rows))
            latents.append(int(feature))
            flat_rows.extend(rows)
    activations: list[float | None] = [None] * len(flat_rows)
    rows = torch.tensor(flat_rows, dtype=torch.long)
    wanted = torch.nonzero(rows >= 0).flatten()  # the positions that kept an activation
    if len(wanted):
        latents_of = torch.repeat_interleave(torch.tensor(latents), torch.tensor(counts))[wanted]
        unique_rows, position = torch.unique(rows[wanted], return_inverse=True)
        values = torch.empty(len(wanted))
        order = torch.argsort(position)
        bounds = torch.searchsorted(position[order], torch.arange(0, len(unique_rows) + 1))
        for first in range(0, len(unique_rows), TOP_EXAMPLES_BATCH):
            last = min(first + TOP_EXAMPLES_BATCH, len(unique_rows))
            latents_now = encode(context.heldout_activations[unique_rows[first:last]].float()).cpu()
            chosen = order[bounds[first] : bounds[last]]  # the requests for these rows
            values[chosen] = latents_now[position[chosen] - first, latents_of[chosen]].float()
        for slot, value in zip(wanted.tolist(), values.tolist(), strict=True):
            activations[slot] = float(f"{value:.6g}")
    first = 0
    for item, count in zip(items, counts, strict=True):
        item["token_activations"] = activations[first : first + count]
        first += count
