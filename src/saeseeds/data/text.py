"""Activations of a language model on text: the ``data=pydocs|text_files|hf_dataset`` source.

Ties a model (:mod:`saeseeds.models`), a hook (:mod:`saeseeds.hooks`) and a corpus
(:mod:`saeseeds.corpus`) to the activation cache (:mod:`saeseeds.activation_cache`), and adds the
two evaluations that need the model and the text: the CE-loss score with the reconstruction
spliced in, and the top activating held-out contexts per feature. It must not know about SAE
training.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from saeseeds import activation_cache, hooks, models
from saeseeds.config.activations import HookConfig, ModelConfig
from saeseeds.corpus import Corpus, pack_sequences, sequences_needed
from saeseeds.data.base import ActivationSource, ActivationSplits, DataError, check_token_budget

log = logging.getLogger(__name__)

TOP_EXAMPLES_FORMAT = "saeseeds.top_examples/1"
MARKER = ("<<", ">>")
_EVAL_MEMORY: dict[tuple, dict[str, Any]] = {}  # clean logits and zero-ablation CE, per cache


class TextActivationSource(ActivationSource):
    """Activations of ``model`` at ``hook`` on ``corpus``, computed once and cached on disk."""

    def __init__(
        self,
        model: ModelConfig | dict[str, Any],
        hook: HookConfig | dict[str, Any],
        corpus: Corpus,
        seq_len: int = 128,
        n_tokens: int = 131_072,
        heldout_fraction: float = 0.05,
        batch_size: int = 1024,
        prepend_bos: bool = True,
        drop_first_position: bool = True,
        split_seed: int = 0,
        eval_sequences: int = 8,
        context_before: int = 12,
        context_after: int = 4,
        cache_dir: str | Path = "outputs/cache",
        model_cache_dir: str | Path = "~/.cache/saeseeds",
    ):
        self.model_config = ModelConfig(**model) if isinstance(model, dict) else model
        self.hook = hooks.resolve_hook(hook)
        self.corpus = corpus
        self.seq_len, self.n_tokens, self.batch_size = seq_len, n_tokens, batch_size
        self.heldout_fraction, self.split_seed = heldout_fraction, split_seed
        self.prepend_bos, self.drop_first_position = prepend_bos, drop_first_position
        self.eval_sequences = eval_sequences
        self.context_before, self.context_after = context_before, context_after
        self.cache_dir, self.model_cache_dir = cache_dir, model_cache_dir
        self._check_knobs()
        self.first_position = 1 if drop_first_position else 0  # first position with activations
        self.kept_per_sequence = seq_len - self.first_position
        self.n_train_sequences = sequences_needed(n_tokens, self.kept_per_sequence)
        self.n_heldout_sequences = max(
            eval_sequences,
            sequences_needed(math.ceil(heldout_fraction * n_tokens), self.kept_per_sequence),
        )
        self.model: models.LoadedModel | None = None
        self.cached: activation_cache.CachedActivations | None = None

    def _check_knobs(self) -> None:
        check_token_budget(self.n_tokens, self.batch_size, "data")
        if self.seq_len < 2:
            raise DataError(f"data.seq_len must be at least 2, got {self.seq_len}.")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise DataError(
                f"data.heldout_fraction must be in (0, 1), got {self.heldout_fraction}."
            )
        if self.eval_sequences < 1:
            raise DataError(f"data.eval_sequences must be at least 1, got {self.eval_sequences}.")
        if min(self.context_before, self.context_after) < 0:
            raise DataError("data.context_before and data.context_after must be >= 0.")

    # ---- activations ----

    def load(self) -> ActivationSplits:
        self.corpus.check()
        self._check_against_architecture()
        self.model = models.load_model(self.model_config, self.model_cache_dir)
        hooks.check_hook_exists(self.hook, self.model.bridge, self.model.name)
        self._check_context(self.model.n_ctx)
        key_fields = self._key_fields()
        label = f"{self.model.name}-{self.hook.name}"
        self.cached = activation_cache.load_or_build(self.cache_dir, label, key_fields, self._build)
        tensors = self.cached.tensors
        # Clones: the in-memory cache is shared with the next job of this process.
        train = tensors["train_activations"][: self.n_tokens].float().clone()  # [n_tokens, d]
        heldout = tensors["heldout_activations"].float().clone()  # [n_heldout, d]
        return ActivationSplits(train=train, heldout=heldout, provenance=self._provenance())

    def _check_against_architecture(self) -> None:
        """Layer range and context from the model's config, before loading its weights."""
        hf_config = models.architecture_config(self.model_config, self.model_cache_dir)
        name = models.display_name(self.model_config)
        hooks.check_layer(self.hook, models.n_layers_of(hf_config), name)
        n_ctx = models.context_length(hf_config)
        if n_ctx is not None:
            self._check_context(n_ctx)

    def _check_context(self, n_ctx: int) -> None:
        if self.seq_len > n_ctx:
            raise DataError(
                f"data.seq_len={self.seq_len} is longer than the context of "
                f"{models.display_name(self.model_config)} ({n_ctx} tokens); use at most {n_ctx}."
            )

    def _key_fields(self) -> dict[str, Any]:
        assert self.model is not None
        return {
            "model_name": self.model.name,
            "model_weight_hash": self.model.weight_hash,
            "model_init": self.model_config.init,
            "model_seed": self.model_config.seed if self.model_config.init == "random" else None,
            "hook_name": self.hook.name,
            "corpus": self.corpus.identity(),
            "tokenizer_hash": self.model.tokenizer_hash,
            "seq_len": self.seq_len,
            "n_train_sequences": self.n_train_sequences,
            "n_heldout_sequences": self.n_heldout_sequences,
            "prepend_bos": self.prepend_bos,
            "drop_first_position": self.drop_first_position,
            "split_seed": self.split_seed,
            "dtype": self.model_config.dtype,
        }

    def _build(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        assert self.model is not None
        sequences = pack_sequences(
            self.corpus,
            self.model.tokenizer,
            self.seq_len,
            self.n_train_sequences,
            self.n_heldout_sequences,
            self.prepend_bos,
            self.split_seed,
        )
        all_tokens = torch.cat([sequences.train, sequences.heldout])  # [n_seq, seq_len]
        log.info(
            "Building the activation cache: %s at %s on %d tokens (%d sequences of %d)",
            self.model.name,
            self.hook.name,
            all_tokens.numel(),
            len(all_tokens),
            self.seq_len,
        )
        activations = self._activations(all_tokens)  # [n_seq * kept, d]
        n_train_rows = len(sequences.train) * self.kept_per_sequence
        tensors = {
            "train_activations": activations[:n_train_rows],
            "heldout_activations": activations[n_train_rows:],
            "train_tokens": sequences.train.to(torch.int32),
            "heldout_tokens": sequences.heldout.to(torch.int32),
        }
        return tensors, {"tokens_run": int(all_tokens.numel())}

    @torch.no_grad()
    def _activations(self, tokens: Tensor) -> Tensor:
        assert self.model is not None
        batch = self.model_config.forward_batch_size
        pieces = []
        with tqdm(total=tokens.numel(), unit="tok", desc="activations", unit_scale=True) as bar:
            for start in range(0, len(tokens), batch):
                chunk = tokens[start : start + batch].to(self.model.device)
                acts = hooks.read_activations(self.model.bridge, self.hook, chunk)
                acts = acts[:, self.first_position :]  # [batch, kept, d]
                pieces.append(acts.reshape(-1, acts.shape[-1]).to("cpu", self.model.dtype))
                bar.update(chunk.numel())
        return torch.cat(pieces)

    def _provenance(self) -> dict[str, Any]:
        assert self.model is not None and self.cached is not None
        return {
            "source": f"text:{self.corpus.identity()['kind']}",
            **self.model.provenance(),
            "model_init": self.model_config.init,
            **(
                {"model_seed": self.model_config.seed} if self.model_config.init == "random" else {}
            ),
            "hook_name": self.hook.name,
            "dtype": self.model_config.dtype,
            "activation_cache_key": self.cached.key,
            "activation_cache_dir": str(self.cached.folder),
            "activation_cache_hit": not self.cached.built,
            "corpus": self.corpus.identity(),
            "seq_len": self.seq_len,
            "prepend_bos": self.prepend_bos,
            "drop_first_position": self.drop_first_position,
            "split_seed": self.split_seed,
            "n_train_tokens": self.n_tokens,
            "n_heldout_tokens": int(self.cached.tensors["heldout_activations"].shape[0]),
        }

    # ---- CE-loss score ----

    def evaluate(self, reconstruct: Callable[[Tensor], Tensor]) -> dict[str, float]:
        """CE loss and KL with the reconstruction spliced in at the hook, on held-out sequences.

        Positions before ``first_position`` keep their clean activations in every variant (the
        SAE never saw them), so zero ablation and the SAE replace exactly the positions trained on;
        a zero reconstruction therefore scores 0 and a perfect one 1.
        """
        model, tokens = self._require_loaded(), self._eval_tokens()
        baseline = self._baseline(model, tokens)
        ce_sae, kl = self._ce_and_kl(model, tokens, reconstruct, baseline["clean_log_probs"])
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

    def _eval_tokens(self) -> Tensor:
        assert self.cached is not None
        return self.cached.tensors["heldout_tokens"][: self.eval_sequences].long()

    def _baseline(self, model: models.LoadedModel, tokens: Tensor) -> dict[str, Any]:
        assert self.cached is not None
        memo_key = (self.cached.key, self.eval_sequences, model.weight_hash)
        if memo_key not in _EVAL_MEMORY:
            clean_log_probs = [
                F.log_softmax(logits, dim=-1) for logits in self._logits(model, tokens, None)
            ]
            ce_clean = self._ce(tokens, clean_log_probs)
            ce_zero, _ = self._ce_and_kl(model, tokens, torch.zeros_like, None)
            _EVAL_MEMORY.clear()
            _EVAL_MEMORY[memo_key] = {
                "clean_log_probs": clean_log_probs,
                "ce_clean": ce_clean,
                "ce_zero": ce_zero,
            }
        return _EVAL_MEMORY[memo_key]

    def _ce_and_kl(
        self,
        model: models.LoadedModel,
        tokens: Tensor,
        reconstruct: Callable[[Tensor], Tensor],
        clean_log_probs: list[Tensor] | None,
    ) -> tuple[float, float]:
        first = self.first_position

        def replace(activation: Tensor) -> Tensor:  # [batch, pos, d]
            flat = activation[:, first:].reshape(-1, activation.shape[-1]).float().cpu()
            rebuilt = reconstruct(flat).reshape(activation[:, first:].shape)
            return torch.cat([activation[:, :first], rebuilt.to(activation)], dim=1)

        log_probs = [
            F.log_softmax(logits, dim=-1) for logits in self._logits(model, tokens, replace)
        ]
        kl = float("nan")
        if clean_log_probs is not None:
            total = sum(
                F.kl_div(lp[:, first:-1], clp[:, first:-1], log_target=True, reduction="sum")
                for lp, clp in zip(log_probs, clean_log_probs, strict=True)
            )
            kl = float(total) / (len(tokens) * (self.seq_len - 1 - first))
        return self._ce(tokens, log_probs), kl

    def _logits(
        self, model: models.LoadedModel, tokens: Tensor, replace: Callable[[Tensor], Tensor] | None
    ) -> list[Tensor]:
        batch = self.model_config.forward_batch_size
        outputs = []
        for start in range(0, len(tokens), batch):
            chunk = tokens[start : start + batch].to(model.device)
            logits = hooks.logits_with_replacement(model.bridge, self.hook, chunk, replace)
            outputs.append(logits.float().cpu())  # [batch, pos, vocab]
        return outputs

    def _ce(self, tokens: Tensor, log_probs: list[Tensor]) -> float:
        """Mean next-token CE over predictions made at positions first_position .. seq_len-2."""
        first, total, count, index = self.first_position, 0.0, 0, 0
        for lp in log_probs:  # [batch, pos, vocab]
            targets = tokens[index : index + len(lp), first + 1 :]  # [batch, pos - first - 1]
            picked = lp[:, first:-1].gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            total -= float(picked.sum())
            count += targets.numel()
            index += len(lp)
        return total / count

    # ---- top activating examples ----

    @torch.no_grad()
    def top_examples(self, encode: Callable[[Tensor], Tensor], n_examples: int) -> dict[str, Any]:
        """For each feature that fires on held-out text, its ``n_examples`` strongest contexts."""
        self._require_loaded()
        assert self.cached is not None
        heldout = self.cached.tensors["heldout_activations"]  # [n_heldout, d]
        best_values = best_rows = None  # [n_examples, n_features]
        for start in range(0, len(heldout), 2048):
            latents = encode(heldout[start : start + 2048].float())  # [batch, n_features]
            rows = torch.arange(start, start + len(latents)).unsqueeze(1).expand_as(latents)
            if best_values is not None:
                latents = torch.cat([best_values, latents.cpu()])
                rows = torch.cat([best_rows, rows])
            keep = min(n_examples, len(latents))
            best_values, order = latents.cpu().topk(keep, dim=0)
            best_rows = rows.gather(0, order)
        features: dict[str, list[dict[str, Any]]] = {}
        if best_values is not None:
            for feature in torch.nonzero(best_values[0] > 0).flatten().tolist():
                features[str(feature)] = [
                    self._context(int(row), float(value))
                    for value, row in zip(
                        best_values[:, feature], best_rows[:, feature], strict=True
                    )
                    if value > 0
                ]
        return {"format": TOP_EXAMPLES_FORMAT, "marker": list(MARKER), "features": features}

    def _context(self, row: int, activation: float) -> dict[str, Any]:
        assert self.cached is not None and self.model is not None
        sequence = row // self.kept_per_sequence
        position = row % self.kept_per_sequence + self.first_position
        ids = self.cached.tensors["heldout_tokens"][sequence].tolist()
        text_start = 1 if self.prepend_bos else 0  # BOS is not text
        start = max(text_start, position - self.context_before)
        end = min(len(ids), position + 1 + self.context_after)
        token = self._decode(ids[position : position + 1])
        text = (
            self._decode(ids[start:position])
            + MARKER[0]
            + token
            + MARKER[1]
            + self._decode(ids[position + 1 : end])
        )
        return {"activation": float(f"{activation:.6g}"), "text": text, "token": token}

    def _decode(self, ids: list[int]) -> str:
        assert self.model is not None
        return self.model.tokenizer.decode(ids, clean_up_tokenization_spaces=False)

    def _require_loaded(self) -> models.LoadedModel:
        if self.model is None or self.cached is None:
            raise RuntimeError("Call load() before evaluate() or top_examples().")
        return self.model
