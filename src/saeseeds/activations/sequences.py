"""A corpus cut into token sequences for the model, in an order that does not depend on the budget.

The documents are tokenised in corpus order (EOS after each) and the stream is cut into chunks of
``seq_len`` tokens (``seq_len - 1`` and a BOS in front when ``prepend_bos``). Consecutive chunks
form blocks of :data:`BLOCK_TOKENS` tokens (the last block holds what is left), and each block is
shuffled by a generator seeded with (split_seed, block). The held-out sequences are the first
``n_heldout`` of block 0; the training sequences are the rest of block 0, then block 1, ... So
every training prefix is a uniform sample of the text (of all of it, for a corpus of up to a
block: the embedded ones), and the held-out set never moves with ``data.n_tokens``.

Tokenising is paid once per (corpus, tokenizer, sequence length, split seed): each block is kept
under ``<cache_dir>/token_blocks/`` (int32 token ids, 0.35% of the size of float16 activations at
d_in = 576) with the point in the corpus where the next block starts, so a later process, a part
of a parallel build or a streamed shard reads the block it needs instead of tokenising the corpus
up to it. Memory holds one block at a time. It must not run models or know about activations.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import Tensor

from saeseeds.activations.corpora import Corpus
from saeseeds.activations.shards import seeded_generator
from saeseeds.activations.store import held_lock
from saeseeds.errors import DataError
from saeseeds.io import atomic_write_bytes

log = logging.getLogger(__name__)

BLOCK_TOKENS = 1 << 24  # tokens per shuffled block: 64 MiB of int32 token ids
TOKEN_BLOCKS_DIR = "token_blocks"
_TOKENISE_CHARS = 1 << 20  # documents are tokenised in batches of about this many characters

Checkpoint = tuple[int, int]  # (document index, tokens of it already in earlier blocks)
# The last block read in this process, so that its jobs (and a streamed source reading shard after
# shard of one block) do not read it again: {(stream, block): (chunks, next start)}, one entry.
_RECENT: dict[tuple[str, str, int], tuple[Tensor | None, Checkpoint | None]] = {}


class SequenceStream:
    """Held-out and training sequences of ``corpus``: [seq_len] int64 token ids each."""

    def __init__(
        self,
        corpus: Corpus,
        tokenizer: Any,
        seq_len: int,
        prepend_bos: bool,
        split_seed: int,
        n_heldout: int,
        tokenizer_identity: str = "",
        cache_dir: str | Path | None = None,
        corpus_identity: dict[str, Any] | None = None,
    ):
        self.corpus, self.tokenizer, self.seq_len = corpus, tokenizer, seq_len
        self.split_seed, self.n_heldout = split_seed, n_heldout
        self.bos = tokenizer.bos_token_id if prepend_bos else None
        if prepend_bos and self.bos is None:
            raise DataError("The tokenizer has no BOS token; set data.prepend_bos=false.")
        self.chunk_len = seq_len - 1 if prepend_bos else seq_len
        self.block_chunks = max(1, BLOCK_TOKENS // self.chunk_len)
        # ``corpus_identity``: the corpus's identity where the caller has it already.
        self.corpus_identity = corpus_identity or corpus.identity()
        identity = json.dumps(
            [self.corpus_identity, tokenizer_identity, self.chunk_len, split_seed, BLOCK_TOKENS],
            sort_keys=True,
        )
        self.key = hashlib.sha256(identity.encode()).hexdigest()[:16]
        self.folder = (
            Path(cache_dir).expanduser() / TOKEN_BLOCKS_DIR / self.key if cache_dir else None
        )

    # ---- blocks ----

    def block(self, index: int) -> Tensor | None:
        """Block ``index``: its chunks [n, chunk_len] int32, shuffled; None past the corpus."""
        memo = (self.key, str(self.folder), index)
        found = _RECENT.get(memo)
        if found is None:
            found = self._read(index) or self._tokenise_through(index)
            _RECENT.clear()
            _RECENT[memo] = found
        return found[0]

    def _path(self, index: int) -> Path | None:
        return None if self.folder is None else self.folder / f"block-{index:06d}.safetensors"

    def _read(self, index: int) -> tuple[Tensor | None, Checkpoint | None] | None:
        """A kept block and where the next one starts; None when it is not kept."""
        path = self._path(index)
        if path is None or not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                facts = json.loads((handle.metadata() or {})["block"])
                chunks = handle.get_tensor("chunks") if facts["chunks"] else None
        except Exception:  # noqa: BLE001 - damaged: tokenised again
            return None
        following = facts["next"]
        return chunks, (tuple(following) if following is not None else None)

    def _start_of(self, index: int) -> tuple[int, Checkpoint | None]:
        """The latest kept block start at or before ``index``: (block, where it starts)."""
        for earlier in range(index - 1, -1, -1):
            found = self._read(earlier)
            if found is not None:
                return earlier + 1, found[1]
        return 0, (0, 0)

    def _tokenise_through(self, index: int) -> tuple[Tensor | None, Checkpoint | None]:
        """Tokenise from the latest kept block on through block ``index``, keeping each."""
        lock = held_lock(self.folder / "tokenise") if self.folder else contextlib.nullcontext()
        with lock:
            found = self._read(index)  # another process may have tokenised it meanwhile
            if found is not None:
                return found
            first, start = self._start_of(index)
            if start is None:  # the corpus ended before this block
                return None, None
            kind = self.corpus_identity["kind"]
            log.info("Tokenising the %s corpus, blocks %d to %d", kind, first, index)
            result: tuple[Tensor | None, Checkpoint | None] = (None, None)
            for number, chunks, following in self._tokenised_blocks(first, start):
                self._check_unchanged()
                self._keep(number, chunks, following)
                if number == index:
                    result = (chunks, following)
                    break
            return result

    def _check_unchanged(self) -> None:
        """Refuse text read after the corpus changed: the blocks are keyed by the identity the
        corpus had when this stream was made, and a corpus read from installed files (an
        upgrade during a sweep) can change in between, or while it is tokenised."""
        now = self.corpus.identity()
        if now != self.corpus_identity:
            kind = self.corpus_identity.get("kind", "?")
            raise DataError(
                f"The {kind} corpus changed while it was read: its identity is now "
                f"{json.dumps(now, sort_keys=True)[:300]}, not the "
                f"{json.dumps(self.corpus_identity, sort_keys=True)[:300]} its tokens were to be "
                "kept under (were its files modified, for example by a package install?). "
                "Nothing was kept from the changed text; run the command again."
            )

    def _keep(self, index: int, chunks: Tensor, following: Checkpoint | None) -> None:
        path = self._path(index)
        if path is None:
            return
        facts = {"chunks": len(chunks), "next": list(following) if following else None}
        tensors = {"chunks": chunks.contiguous()} if len(chunks) else {}
        try:
            atomic_write_bytes(path, save(tensors, metadata={"block": json.dumps(facts)}))
        except OSError as error:  # an unwritable cache costs tokenising again, nothing more
            log.warning("Could not keep token block %d in %s: %s", index, self.folder, error)

    def _tokenised_blocks(
        self, first: int, start: Checkpoint
    ) -> Iterator[tuple[int, Tensor, Checkpoint | None]]:
        """(block, shuffled chunks, where the next block starts) from block ``first``, which
        starts at ``start``; the last block's next start is None."""
        block_tokens = self.block_chunks * self.chunk_len
        pending = array("i")
        owners: list[list[int]] = []  # [document, start in pending, its tokens before that]
        last_document = start[0] - 1
        number = first
        for document, piece in self._pieces(*start):
            owners.append([document, len(pending), start[1] if document == start[0] else 0])
            pending.extend(piece)
            last_document = document
            while len(pending) >= block_tokens:
                following = _locate(owners, block_tokens, len(pending), last_document)
                yield number, self._shuffled(pending[:block_tokens], number), following
                del pending[:block_tokens]
                owners = _shift(owners, block_tokens, len(pending) + block_tokens)
                number += 1
        usable = len(pending) // self.chunk_len * self.chunk_len
        yield number, self._shuffled(pending[:usable], number), None

    def _pieces(self, document: int, skip: int) -> Iterator[tuple[int, list[int]]]:
        """(index, token ids and EOS) of each document from ``document`` on, the first without
        its first ``skip`` tokens; tokenised in batches, which fast tokenizers spread over cores."""
        eos = self.tokenizer.eos_token_id
        documents = itertools.islice(self.corpus.documents(), document, None)
        index, batch, size = document, [], 0
        for text in itertools.chain(documents, [None]):
            if text is not None:
                batch.append(text)
                size += len(text)
            if batch and (text is None or size >= _TOKENISE_CHARS):
                encoded = self.tokenizer(batch, add_special_tokens=False, verbose=False)
                for ids in encoded["input_ids"]:
                    piece = ids if eos is None else [*ids, eos]
                    yield index, piece[skip:] if index == document else piece
                    index += 1
                batch, size = [], 0

    def _shuffled(self, tokens: array, index: int) -> Tensor:
        if not tokens:
            return torch.empty(0, self.chunk_len, dtype=torch.int32)
        chunks = torch.frombuffer(tokens, dtype=torch.int32).view(-1, self.chunk_len)
        order = torch.randperm(len(chunks), generator=seeded_generator(self.split_seed, index))
        return chunks[order]

    def _with_bos(self, chunks: Tensor) -> Tensor:  # [n, chunk_len] -> [n, seq_len] int64
        chunks = chunks.long()
        if self.bos is None:
            return chunks
        return torch.cat([torch.full((len(chunks), 1), self.bos, dtype=torch.int64), chunks], 1)

    # ---- the two splits ----

    def heldout(self) -> Tensor:
        """The held-out sequences [n_heldout, seq_len]."""
        first = self.block(0)
        n_chunks = 0 if first is None else len(first)
        if n_chunks <= self.n_heldout:
            raise DataError(
                f"The corpus has {n_chunks * self.chunk_len} tokens, too few for the "
                f"{self.n_heldout} held-out sequences of {self.seq_len} tokens and any training "
                "(data.heldout_tokens, data.eval_sequences, data.seq_len). Add text."
            )
        return self._with_bos(first[: self.n_heldout])

    def count_train(self, limit: int) -> int:
        """Training sequences the corpus gives, counted up to ``limit``."""
        needed, total = limit + self.n_heldout, 0
        for index in itertools.count():
            chunks = self.block(index)
            total += 0 if chunks is None else len(chunks)
            if total >= needed:
                return limit
            if chunks is None or len(chunks) < self.block_chunks:  # the last block
                return max(0, total - self.n_heldout)
        raise AssertionError("unreachable")

    def train(self, start: int) -> Iterator[Tensor]:
        """Training sequences from index ``start`` on, one [seq_len] tensor at a time."""
        index, offset = divmod(start + self.n_heldout, self.block_chunks)  # full blocks before
        while (chunks := self.block(index)) is not None and offset < len(chunks):
            for first in range(offset, len(chunks), 4096):  # bounded int64 copies
                yield from self._with_bos(chunks[first : first + 4096])
            if len(chunks) < self.block_chunks:
                return
            index, offset = index + 1, 0


def _locate(owners: list[list[int]], position: int, end: int, last: int) -> Checkpoint:
    """Where the token at ``position`` of the pending stream comes from: (document, offset)."""
    for number, (document, start, before) in enumerate(owners):
        stop = owners[number + 1][1] if number + 1 < len(owners) else end
        if start <= position < stop:
            return document, before + position - start
    return last + 1, 0  # the cut falls at the end of the last document read


def _shift(owners: list[list[int]], cut: int, end: int) -> list[list[int]]:
    """The owners of the pending stream once its first ``cut`` tokens are gone."""
    kept = []
    for number, (document, start, before) in enumerate(owners):
        stop = owners[number + 1][1] if number + 1 < len(owners) else end
        if stop > cut:
            kept.append([document, max(start - cut, 0), before + max(0, cut - start)])
    return kept
