"""Activations of a language model on text: the ``data=pydocs|text_files|hf_dataset`` source.

Ties a model (:mod:`.models`), a hook (:mod:`.hooks`) and a corpus (:mod:`.corpora`) to the
activation cache (:mod:`.cache`), and hands evaluation what it needs of the model and the held-out
text (:meth:`TextActivationSource.text_context`). It must not know about SAEs or training.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saeseeds.activations import cache as activation_cache
from saeseeds.activations import hooks, models
from saeseeds.activations.base import (
    ActivationSource,
    ActivationSplits,
    TextContext,
    check_token_budget,
)
from saeseeds.activations.corpora import Corpus, pack_sequences, sequences_needed
from saeseeds.config.hook import HookConfig
from saeseeds.config.model import ModelConfig
from saeseeds.errors import DataError

log = logging.getLogger(__name__)


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

    def text_context(self) -> TextContext:
        if self.model is None or self.cached is None:
            raise RuntimeError("Call load() before text_context().")
        return TextContext(
            model=self.model,
            hook=self.hook,
            heldout_tokens=self.cached.tensors["heldout_tokens"],
            heldout_activations=self.cached.tensors["heldout_activations"],
            first_position=self.first_position,
            prepend_bos=self.prepend_bos,
            eval_sequences=self.eval_sequences,
            forward_batch_size=self.model_config.forward_batch_size,
            context_before=self.context_before,
            context_after=self.context_after,
            cache_key=self.cached.key,
        )
