"""A corpus cut into token sequences for the model, in an order that does not depend on the budget.

The documents are tokenised in corpus order (EOS after each) and the stream is cut into chunks of
``seq_len`` tokens (``seq_len - 1`` and a BOS in front when ``prepend_bos``). Consecutive chunks
form blocks of about :data:`BLOCK_TOKENS` tokens (the last block holds what is left), and each
block is shuffled by a generator seeded with (split_seed, block). The held-out sequences are the
first ``n_heldout`` of block 0; the training sequences are the rest of block 0, then block 1, ...
So every training prefix is a uniform sample of the text (of all of it, for a corpus of up to a
block: the embedded ones), the held-out set never moves with ``data.n_tokens``, and memory holds
one block at a time. It must not run models or know about activations.
"""

from __future__ import annotations

import itertools
import json
from array import array
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from saeseeds.activations.corpora import Corpus
from saeseeds.activations.shards import seeded_generator
from saeseeds.errors import DataError

BLOCK_TOKENS = 1 << 24  # tokens per shuffled block: 64 MiB of int32 token ids
_TOKENISE_CHARS = 1 << 20  # documents are tokenised in batches of about this many characters
# The first block of the last stream read (held-out and small budgets come from it), so that the
# jobs of one process tokenise a corpus once; one block at most.
_FIRST_BLOCK: dict[str, Tensor] = {}


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
    ):
        self.corpus, self.tokenizer, self.seq_len = corpus, tokenizer, seq_len
        self.split_seed, self.n_heldout = split_seed, n_heldout
        self.bos = tokenizer.bos_token_id if prepend_bos else None
        if prepend_bos and self.bos is None:
            raise DataError("The tokenizer has no BOS token; set data.prepend_bos=false.")
        self.chunk_len = seq_len - 1 if prepend_bos else seq_len
        self.block_chunks = max(1, BLOCK_TOKENS // self.chunk_len)
        self.memo_key = json.dumps(
            [corpus.identity(), tokenizer_identity, self.chunk_len, split_seed], sort_keys=True
        )

    # ---- the token stream ----

    def _token_pieces(self) -> Iterator[list[int]]:
        """Each document's token ids and an EOS, in corpus order (tokenised in batches, which
        fast tokenizers spread over the cores)."""
        eos = self.tokenizer.eos_token_id
        batch: list[str] = []
        size = 0
        for document in itertools.chain(self.corpus.documents(), [None]):
            if document is not None:
                batch.append(document)
                size += len(document)
            if batch and (document is None or size >= _TOKENISE_CHARS):
                encoded = self.tokenizer(batch, add_special_tokens=False, verbose=False)
                for ids in encoded["input_ids"]:
                    yield ids if eos is None else [*ids, eos]
                batch, size = [], 0

    def _blocks(self) -> Iterator[Tensor]:
        """Blocks of chunks [n_chunks, chunk_len] int32, each shuffled; the last one partial."""
        first = _FIRST_BLOCK.get(self.memo_key)
        if first is not None and len(first) < self.block_chunks:
            yield first  # the whole corpus is one block
            return
        for index, block in enumerate(self._tokenised_blocks()):
            if index == 0:
                _FIRST_BLOCK.clear()
                _FIRST_BLOCK[self.memo_key] = block
            yield block

    def _tokenised_blocks(self) -> Iterator[Tensor]:
        block_tokens = self.block_chunks * self.chunk_len
        pending, index = array("i"), 0
        for piece in self._token_pieces():
            pending.extend(piece)
            while len(pending) >= block_tokens:
                yield self._shuffled(pending[:block_tokens], index)
                del pending[:block_tokens]
                index += 1
        usable = len(pending) // self.chunk_len * self.chunk_len
        if usable:
            yield self._shuffled(pending[:usable], index)

    def _shuffled(self, tokens: array, index: int) -> Tensor:
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
        first = _FIRST_BLOCK.get(self.memo_key)
        if first is None:
            first = next(self._blocks(), None)
        n_chunks = 0 if first is None else len(first)
        if n_chunks <= self.n_heldout:
            raise DataError(
                f"The corpus has {n_chunks * self.chunk_len} tokens, too few for the "
                f"{self.n_heldout} held-out sequences of {self.seq_len} tokens and any training "
                "(data.heldout_tokens, data.eval_sequences, data.seq_len). Add text."
            )
        return self._with_bos(first[: self.n_heldout])

    def count_train(self, limit: int) -> int:
        """Training sequences the corpus gives, counted up to ``limit`` (tokenising only)."""
        first = _FIRST_BLOCK.get(self.memo_key)
        if first is not None and (len(first) - self.n_heldout >= limit):
            return limit
        if first is not None and len(first) < self.block_chunks:
            return max(0, len(first) - self.n_heldout)
        needed = (limit + self.n_heldout) * self.chunk_len
        tokens = 0
        for piece in self._token_pieces():
            tokens += len(piece)
            if tokens >= needed:
                return limit
        # The last block keeps only whole chunks; earlier blocks are whole chunks already.
        return max(0, tokens // self.chunk_len - self.n_heldout)

    def train(self, start: int) -> Iterator[Tensor]:
        """Training sequences from index ``start`` on, one [seq_len] tensor at a time."""
        skip = start + self.n_heldout  # chunks of the block order before the wanted one
        for block in self._blocks():
            if skip >= len(block):
                skip -= len(block)
                continue
            for start_chunk in range(skip, len(block), 4096):  # bounded int64 copies
                yield from self._with_bos(block[start_chunk : start_chunk + 4096])
            skip = 0
