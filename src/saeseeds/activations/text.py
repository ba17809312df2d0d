"""Activations of a language model on text: the ``data=pydocs|pysource|text_files|hf_dataset``
source.

Ties a model (:mod:`.models`), a hook (:mod:`.hooks`) and a corpus (:mod:`.corpora`, cut into
sequences by :mod:`.sequences`) to the activation store (:mod:`.store`, built by
:mod:`.store_build`), and hands evaluation what it needs of the model and the held-out text
(:meth:`TextActivationSource.text_context`). With ``data.store=false`` the same shards are computed
in memory when training reads them (:class:`StreamedShards`) and nothing is written. It must not
know about SAEs or training.

The training rows are one stream: row r is position ``first + r % kept`` of training sequence
``r // kept``. Shard i holds rows [i·R, (i+1)·R), shuffled by a generator seeded with
(split_seed, i), and is computed from its own first sequence on, in forward batches that start
there, so its bytes do not depend on which process builds it or what it built before.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saeseeds.activations import hooks, models
from saeseeds.activations.base import (
    ActivationSource,
    ActivationSplits,
    TextContext,
    check_token_budget,
)
from saeseeds.activations.corpora import Corpus, remembered_identity
from saeseeds.activations.sequences import BLOCK_TOKENS, SequenceStream
from saeseeds.activations.shards import (
    RowStats,
    ShardSequence,
    TrainingRows,
    dtype_name,
    seeded_generator,
    storage_dtype,
)
from saeseeds.activations.store import store_identity, store_key
from saeseeds.activations.store_build import ensure_store
from saeseeds.config.hook import HookConfig
from saeseeds.config.model import ModelConfig
from saeseeds.errors import DataError

log = logging.getLogger(__name__)


class TextActivationSource(ActivationSource):
    """Activations of ``model`` at ``hook`` on ``corpus``, from a store on disk (built once) or
    computed as training reads them (``store=false``)."""

    def __init__(
        self,
        model: ModelConfig | dict[str, Any],
        hook: HookConfig | dict[str, Any],
        corpus: Corpus,
        seq_len: int = 128,
        n_tokens: int = 131_072,
        heldout_tokens: int = 8192,
        batch_size: int = 1024,
        prepend_bos: bool = True,
        drop_first_position: bool = True,
        split_seed: int = 0,
        eval_sequences: int = 8,
        context_before: int = 12,
        context_after: int = 4,
        shard_tokens: int = 65_536,
        store_dtype: str = "float16",
        store: bool = True,
        cache_dir: str | Path = "outputs/cache",
        model_cache_dir: str | Path = "~/.cache/saeseeds",
    ):
        self.model_config = ModelConfig(**model) if isinstance(model, dict) else model
        self.hook = hooks.resolve_hook(hook)
        self.corpus = corpus
        self.seq_len, self.n_tokens, self.batch_size = seq_len, n_tokens, batch_size
        self.heldout_tokens, self.split_seed = heldout_tokens, split_seed
        self.prepend_bos, self.drop_first_position = prepend_bos, drop_first_position
        self.eval_sequences = eval_sequences
        self.context_before, self.context_after = context_before, context_after
        self.shard_tokens, self.use_store = shard_tokens, store
        self.store_dtype = storage_dtype(store_dtype)
        self.cache_dir, self.model_cache_dir = cache_dir, model_cache_dir
        self._check_knobs()
        self.first_position = 1 if drop_first_position else 0  # first position with activations
        self.kept_per_sequence = seq_len - self.first_position
        self.n_heldout_sequences = max(
            eval_sequences, math.ceil(heldout_tokens / self.kept_per_sequence)
        )
        self.model: models.LoadedModel | None = None
        self.store_key: str | None = None
        self.store_dir: Path | None = None
        self.store_hit: bool | None = None
        self.heldout_token_ids: Tensor | None = None
        self.heldout_rows: Tensor | None = None
        self._corpus_identity: dict[str, Any] | None = None

    def _check_knobs(self) -> None:
        check_token_budget(self.n_tokens, self.batch_size, "data")
        if self.seq_len < 2:
            raise DataError(f"data.seq_len must be at least 2, got {self.seq_len}.")
        if self.heldout_tokens < 1:
            raise DataError(f"data.heldout_tokens must be at least 1, got {self.heldout_tokens}.")
        if self.eval_sequences < 1:
            raise DataError(f"data.eval_sequences must be at least 1, got {self.eval_sequences}.")
        if min(self.context_before, self.context_after) < 0:
            raise DataError("data.context_before and data.context_after must be >= 0.")
        if self.shard_tokens < 1:
            raise DataError(
                f"data.shard_tokens must be a positive integer, got {self.shard_tokens}."
            )

    def corpus_identity(self) -> dict[str, Any]:
        """The corpus's identity (remembered for the embedded corpora: see
        :func:`saeseeds.activations.corpora.remembered_identity`), once per source: checking a
        record stats every file the corpus is made from."""
        if self._corpus_identity is None:
            self._corpus_identity = remembered_identity(self.corpus, self.model_cache_dir)
        return self._corpus_identity

    # ---- activations ----

    def builder(self) -> TextShardBuilder:
        """Check the corpus, hook and context (cheap checks first), load the model, and return
        what computes this source's store."""
        self.corpus.check()
        self._check_against_architecture()
        self.model = models.load_model(self.model_config, self.model_cache_dir)
        hooks.check_hook_exists(self.hook, self.model.bridge, self.model.name)
        self._check_context(self.model.n_ctx)
        builder = TextShardBuilder(self, self.model)
        self.store_key = store_key(builder.key_fields)
        return builder

    def load(self) -> ActivationSplits:
        builder = self.builder()
        if self.use_store:
            store, built = ensure_store(self.cache_dir, builder, self.n_tokens)
            self.store_dir, self.store_hit, shards = store.folder, not built, store
            heldout = store.heldout()
        else:
            available = builder.available_rows(self.n_tokens)
            if available < self.n_tokens:
                raise builder.too_few_rows(available, self.n_tokens)
            heldout = builder.heldout()[0]
            shards = StreamedShards(builder, d_in=int(heldout["activations"].shape[1]))
        self.heldout_token_ids = heldout["tokens"]
        self.heldout_rows = heldout["activations"].float()  # [n_heldout, d]
        train = TrainingRows(shards, self.n_tokens)
        return ActivationSplits(
            train=train, heldout=self.heldout_rows, provenance=self._provenance(builder)
        )

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

    def _provenance(self, builder: TextShardBuilder) -> dict[str, Any]:
        assert self.model is not None and self.heldout_rows is not None
        corpus = self.corpus_identity()
        identity = store_identity(self.store_key or "", builder.key_fields, self.n_tokens)
        return {
            "source": f"text:{corpus['kind']}",
            **self.model.provenance(),
            "model_init": self.model_config.init,
            **(
                {"model_seed": self.model_config.seed} if self.model_config.init == "random" else {}
            ),
            "hook_name": self.hook.name,
            "dtype": dtype_name(self.store_dtype),
            "activation_store_key": self.store_key,
            "activation_store_dir": str(self.store_dir) if self.store_dir else None,
            "activation_store_hit": self.store_hit,
            "streamed": not self.use_store,
            "corpus": corpus,
            "seq_len": self.seq_len,
            "prepend_bos": self.prepend_bos,
            "drop_first_position": self.drop_first_position,
            "split_seed": self.split_seed,
            "shard_tokens": self.shard_tokens,
            "n_train_tokens": self.n_tokens,
            "n_heldout_tokens": int(self.heldout_rows.shape[0]),
            "data_identity": identity,
        }

    def text_context(self) -> TextContext:
        if self.model is None or self.heldout_token_ids is None or self.heldout_rows is None:
            raise RuntimeError("Call load() before text_context().")
        return TextContext(
            model=self.model,
            hook=self.hook,
            heldout_tokens=self.heldout_token_ids,
            heldout_activations=self.heldout_rows,
            first_position=self.first_position,
            prepend_bos=self.prepend_bos,
            eval_sequences=self.eval_sequences,
            forward_batch_size=self.model_config.forward_batch_size,
            context_before=self.context_before,
            context_after=self.context_after,
            store_key=self.store_key or "",
            eval_dtype=self.model_config.eval_dtype,
            model_cache_dir=str(self.model_cache_dir),
        )


class TextShardBuilder:
    """Computes the held-out tensors and any training shard of a text source (the
    :class:`saeseeds.activations.store_build.ShardBuilder` of text stores)."""

    def __init__(self, source: TextActivationSource, model: models.LoadedModel):
        self.source, self.model = source, model
        self.dtype, self.rows_per_shard = source.store_dtype, source.shard_tokens
        self.kept = source.kept_per_sequence
        self.label = f"{model.name}-{source.hook.name}"
        self.sequences = SequenceStream(
            source.corpus,
            model.tokenizer,
            source.seq_len,
            source.prepend_bos,
            source.split_seed,
            source.n_heldout_sequences,
            model.tokenizer_hash,
            source.cache_dir,
            source.corpus_identity(),
        )
        self._cursor: Any = None  # (next sequence index, iterator) of the training sequences
        self._previous: tuple[int, Tensor] | None = None  # the last sequence handed out

    @property
    def key_fields(self) -> dict[str, Any]:
        source, config = self.source, self.source.model_config
        return {
            "model_name": self.model.name,
            "model_weight_hash": self.model.weight_hash,
            "model_init": config.init,
            "model_seed": config.seed if config.init == "random" else None,
            "model_dtype": dtype_name(self.model.dtype),  # as resolved (model.dtype=auto)
            "hook_name": source.hook.name,
            "corpus": source.corpus_identity(),
            "tokenizer_hash": self.model.tokenizer_hash,
            "seq_len": source.seq_len,
            "n_heldout_sequences": source.n_heldout_sequences,
            "prepend_bos": source.prepend_bos,
            "drop_first_position": source.drop_first_position,
            "split_seed": source.split_seed,
            "store_dtype": dtype_name(self.dtype),
            "shard_tokens": self.rows_per_shard,
            "sequence_block_tokens": BLOCK_TOKENS,
        }

    def provenance(self) -> dict[str, Any]:
        return {**self.model.provenance(), "model_load_seconds": round(self.model.load_seconds, 3)}

    def heldout(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        tokens = self.sequences.heldout()  # [n_heldout_sequences, seq_len]
        log.info(
            "Held-out activations: %d sequences of %d tokens", len(tokens), self.source.seq_len
        )
        activations = self._activations(tokens, "held-out")
        return {"activations": activations, "tokens": tokens.to(torch.int32)}, {
            "sequences": len(tokens)
        }

    def available_rows(self, limit: int) -> int:
        sequences = self.sequences.count_train(math.ceil(limit / self.kept))
        return min(limit, sequences * self.kept)

    def too_few_rows(self, available: int, needed: int) -> DataError:
        return DataError(
            f"The corpus gives {available} training tokens after the "
            f"{self.source.n_heldout_sequences} held-out sequences, fewer than the {needed} needed "
            "(data.n_tokens, data.heldout_tokens, data.seq_len). Lower data.n_tokens or add text."
        )

    def shard(self, index: int) -> Tensor:
        first_sequence, offset = divmod(index * self.rows_per_shard, self.kept)
        n_sequences = math.ceil((offset + self.rows_per_shard) / self.kept)
        tokens = self._train_sequences(first_sequence, n_sequences)
        rows = self._activations(tokens, f"shard {index}")[offset : offset + self.rows_per_shard]
        if len(rows) == 0:
            raise self.too_few_rows(index * self.rows_per_shard, (index + 1) * self.rows_per_shard)
        order = torch.randperm(len(rows), generator=seeded_generator(self.source.split_seed, index))
        return rows[order]

    def _train_sequences(self, start: int, count: int) -> Tensor:
        """Training sequences [start, start + count) (fewer at the end of the corpus), read on
        from where the last call stopped when it can."""
        picked: list[Tensor] = []
        if self._previous is not None and self._previous[0] == start:
            picked.append(self._previous[1])  # a sequence shared with the previous shard
        position = start + len(picked)
        if self._cursor is None or self._cursor[0] > position:
            self._cursor = [position, self.sequences.train(position)]
        while self._cursor[0] < position:
            next(self._cursor[1], None)
            self._cursor[0] += 1
        while len(picked) < count:
            sequence = next(self._cursor[1], None)
            if sequence is None:
                break
            picked.append(sequence)
            self._cursor[0] += 1
        if picked:
            self._previous = (start + len(picked) - 1, picked[-1])
        return torch.stack(picked) if picked else torch.empty(0, self.source.seq_len)

    @torch.no_grad()
    def _activations(self, tokens: Tensor, what: str) -> Tensor:
        """Hook activations of ``tokens`` [n, seq_len] with the first positions dropped, as rows
        [n·kept, d] in the store's dtype; forward batches start at the first sequence."""
        batch = self.source.model_config.forward_batch_size
        pieces = []
        for start in range(0, len(tokens), batch):
            chunk = tokens[start : start + batch].long().to(self.model.device)
            acts = hooks.read_activations(self.model.bridge, self.source.hook, chunk)
            acts = acts[:, self.source.first_position :].to("cpu", self.model.dtype)
            pieces.append(acts.reshape(-1, acts.shape[-1]).to(self.dtype))
        rows = torch.cat(pieces) if pieces else torch.empty(0, self.model.d_model, dtype=self.dtype)
        if not torch.isfinite(rows).all():
            raise DataError(
                f"The activations of {what} do not fit data.store_dtype="
                f"{dtype_name(self.dtype)} (values beyond its range, or not finite in the model); "
                "use data.store_dtype=bfloat16 or float32."
            )
        return rows


_STREAMED_STATS: dict[tuple, RowStats] = {}  # one streamed source's shard statistics at a time


class StreamedShards(ShardSequence):
    """The shards of a text store computed in memory when read (``data.store=false``): the same
    bytes as the store's, and nothing on disk. The last ``keep`` shards and every shard's
    statistics are kept, so that jobs of one process do not repeat the statistics pass."""

    def __init__(self, builder: TextShardBuilder, d_in: int, keep: int = 2):
        self.builder, self.keep, self.d_in, self.dtype = builder, keep, d_in, builder.dtype
        self.key = store_key(builder.key_fields)
        self._recent: OrderedDict[int, Tensor] = OrderedDict()
        if any(memo[0] != self.key for memo in _STREAMED_STATS):
            _STREAMED_STATS.clear()

    def shard_rows(self, index: int) -> int:
        return self.builder.rows_per_shard

    def read(self, index: int) -> Tensor:
        if index not in self._recent:
            self._recent[index] = self.builder.shard(index)
            while len(self._recent) > self.keep:
                self._recent.popitem(last=False)
        return self._recent[index]

    def shard_stats(self, index: int, rows: int, scatter: bool) -> RowStats:
        memo = (self.key, index, rows, scatter)
        if memo not in _STREAMED_STATS:
            _STREAMED_STATS[memo] = RowStats.of(self.read(index)[:rows], scatter)
        return _STREAMED_STATS[memo]

    def describe(self) -> str:
        return f"the activations streamed from {self.builder.label}"
