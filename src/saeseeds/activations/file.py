"""A user's own activations: one [N, d_in] matrix in a .safetensors or .npy file, or a store folder.

A file is read in its own dtype with positioned reads, never whole: the held-out rows
(``data.heldout_tokens`` of them, picked at random with ``split_seed``, so the split does not move
with the SAE seed) are read once, and the training rows are the remaining rows in file order, cut
into virtual shards of ``data.shard_tokens`` rows that are read one at a time. The file's sha256
and a check that every value is finite take one pass over it, done once and remembered under
``paths.cache_dir`` by the file's path, size, modification time and inode. A folder written by
the store (``<cache_dir>/stores/...``, or by ``build_store.py``) is read as it is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saeseeds.activations.base import ActivationSource, ActivationSplits, check_token_budget
from saeseeds.activations.matrix_file import MatrixFile, open_matrix, scan
from saeseeds.activations.shards import ShardSequence, TrainingRows, dtype_name
from saeseeds.activations.store import ActivationStore, is_store, store_identity
from saeseeds.errors import DataError
from saeseeds.io import atomic_write_json

log = logging.getLogger(__name__)
SUFFIXES = (".safetensors", ".npy")
FILE_HASHES_DIR = "file_hashes"


class ActivationFileSource(ActivationSource):
    def __init__(
        self,
        path: str,
        key: str | None,
        n_tokens: int | None,
        heldout_tokens: int,
        batch_size: int,
        split_seed: int,
        shard_tokens: int = 65_536,
        cache_dir: str | Path = "outputs/cache",
    ):
        self.path = Path(path).expanduser()
        self.key, self.n_heldout = key, heldout_tokens
        self.batch_size, self.split_seed = batch_size, split_seed
        self.shard_tokens, self.cache_dir = shard_tokens, cache_dir
        if shard_tokens < 1:
            raise DataError(f"data.shard_tokens={shard_tokens} must be a positive integer.")
        if self.path.is_dir():
            if not is_store(self.path):
                raise DataError(
                    f"data.path={str(path)!r} is a folder without a manifest.json: not an "
                    "activation store. Give a .safetensors or .npy file, or a store folder."
                )
            self.store: ActivationStore | None = ActivationStore(self.path)
            self.matrix: MatrixFile | None = None
            available = sum(self.store.shard_rows(i) for i in range(self.store.n_shards))
        else:
            self.store = None
            if self.path.suffix not in SUFFIXES:
                raise DataError(
                    f"data.path={str(path)!r} has suffix {self.path.suffix!r}; "
                    f"activation files must be one of {SUFFIXES}, or a store folder."
                )
            if not self.path.is_file():
                raise DataError(f"data.path={str(path)!r}: no such activations file.")
            if heldout_tokens < 1:
                raise DataError(f"data.heldout_tokens={heldout_tokens} must be at least 1.")
            self.matrix = open_matrix(self.path, key)
            available = self.matrix.rows - heldout_tokens
            if available < 1:
                raise DataError(
                    f"data.heldout_tokens={heldout_tokens} leaves no training rows in {self.path} "
                    f"({self.matrix.rows} rows); lower data.heldout_tokens."
                )
        if n_tokens is not None and n_tokens > available:
            held = "" if self.store else f", {heldout_tokens} held out"
            raise DataError(
                f"data.n_tokens={n_tokens} exceeds the {available} training rows of {self.path} "
                f"({self.matrix.rows if self.matrix else available} rows{held})."
            )
        self.n_tokens = n_tokens if n_tokens is not None else available
        check_token_budget(self.n_tokens, batch_size, f"data.path={self.path}")
        self.file_sha256: str | None = None
        if self.matrix is not None:
            self.file_sha256, finite = remembered_scan(self.matrix, cache_dir)
            if not finite:
                raise DataError(f"{self.path} contains NaN or infinite activations.")

    def load(self) -> ActivationSplits:
        if self.store is not None:
            heldout = self.store.heldout()["activations"].float()
            train = TrainingRows(self.store, self.n_tokens)
            return ActivationSplits(train=train, heldout=heldout, provenance=self.provenance())
        assert self.matrix is not None
        heldout_rows = sample_rows(
            self.matrix.rows, self.n_heldout, torch.Generator().manual_seed(self.split_seed)
        )
        heldout = read_rows(self.matrix, heldout_rows).float()  # [n_heldout, d_in]
        shards = FileShards(self.matrix, heldout_rows, self.shard_tokens)
        train = TrainingRows(shards, self.n_tokens)
        return ActivationSplits(train=train, heldout=heldout, provenance=self.provenance())

    def provenance(self) -> dict[str, Any]:
        if self.store is not None:
            fields = self.store.manifest.get("key_fields", {})
            return {
                "source": "activation_store",
                "model_name": fields.get("model_name", "unknown"),
                "hook_name": fields.get("hook_name", "unknown"),
                "dtype": dtype_name(self.store.dtype),
                "path": str(self.path.resolve()),
                "activation_store_key": self.store.key,
                "activation_store_dir": str(self.path.resolve()),
                "store_provenance": self.store.provenance(),
                "data_identity": store_identity(self.store.key, fields, self.n_tokens),
            }
        assert self.matrix is not None
        identity = {
            "kind": "activation_file",
            "file_sha256": self.file_sha256,
            "key": self.key,
            "split_seed": self.split_seed,
            "heldout_tokens": self.n_heldout,
            "n_train_tokens": self.n_tokens,
        }
        return {
            "source": "activation_file",
            "model_name": "unknown",
            "hook_name": "unknown",
            "dtype": dtype_name(self.matrix.dtype),
            "path": str(self.path.resolve()),
            "file_sha256": self.file_sha256,
            "data_identity": identity,
        }


class FileShards(ShardSequence):
    """The rows of a matrix file that are not held out, in file order, as shards of
    ``rows_per_shard`` rows (the last one shorter)."""

    def __init__(self, matrix: MatrixFile, heldout_rows: Tensor, rows_per_shard: int):
        self.matrix, self.rows_per_shard = matrix, rows_per_shard
        self.d_in, self.dtype = matrix.cols, matrix.dtype
        self.heldout_rows = heldout_rows  # sorted file rows
        self.n_train = matrix.rows - len(heldout_rows)
        self.n_shards = -(-self.n_train // rows_per_shard)
        # Training row t is file row t + #{j : heldout[j] - j <= t}.
        self._skips = heldout_rows - torch.arange(len(heldout_rows))

    def shard_rows(self, index: int) -> int:
        return min(self.rows_per_shard, self.n_train - index * self.rows_per_shard)

    def file_row(self, train_row: int) -> int:
        return train_row + int(torch.searchsorted(self._skips, train_row, right=True))

    def read(self, index: int) -> Tensor:
        first = index * self.rows_per_shard
        start, stop = self.file_row(first), self.file_row(first + self.shard_rows(index) - 1) + 1
        block = self.matrix.read_rows(start, stop)  # [stop - start, d_in]
        inside = self.heldout_rows[(self.heldout_rows >= start) & (self.heldout_rows < stop)]
        if len(inside) == 0:
            return block
        keep = torch.ones(stop - start, dtype=torch.bool)
        keep[inside - start] = False
        return block[keep]

    def describe(self) -> str:
        return str(self.matrix.path)


def sample_rows(n_rows: int, count: int, generator: torch.Generator) -> Tensor:
    """``count`` distinct rows of ``n_rows``, sorted; memory grows with ``count`` only."""
    if n_rows <= 4 * count or n_rows <= 1 << 20:
        return torch.randperm(n_rows, generator=generator)[:count].sort().values
    chosen: dict[int, None] = {}
    while len(chosen) < count:
        for row in torch.randint(
            n_rows, (2 * (count - len(chosen)),), generator=generator
        ).tolist():
            chosen.setdefault(row)
    return torch.tensor(list(chosen)[:count], dtype=torch.int64).sort().values


def read_rows(matrix: MatrixFile, rows: Tensor) -> Tensor:
    """The given sorted rows, read in runs of consecutive rows."""
    pieces, values = [], rows.tolist()
    start = 0
    for position in range(1, len(values) + 1):
        if position == len(values) or values[position] != values[position - 1] + 1:
            pieces.append(matrix.read_rows(values[start], values[position - 1] + 1))
            start = position
    return torch.cat(pieces) if pieces else torch.empty(0, matrix.cols, dtype=matrix.dtype)


def remembered_scan(matrix: MatrixFile, cache_dir: str | Path) -> tuple[str, bool]:
    """:func:`saeseeds.activations.matrix_file.scan`, done once per version of the file."""
    path = matrix.path.resolve()
    status = os.stat(path)
    facts = {
        "path": str(path),
        "size": status.st_size,
        "mtime_ns": status.st_mtime_ns,
        "inode": status.st_ino,
    }
    name = hashlib.sha256(str(path).encode()).hexdigest()[:32] + ".json"
    record_path = Path(cache_dir).expanduser() / FILE_HASHES_DIR / name
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if all(record.get(field) == value for field, value in facts.items()):
            return record["sha256"], bool(record["finite"])
    except (OSError, ValueError, KeyError):
        pass
    log.info("Hashing and checking %s (once per version of the file)", path)
    sha256, finite = scan(matrix)
    try:
        atomic_write_json(record_path, {**facts, "sha256": sha256, "finite": finite})
    except OSError as error:  # an unwritable cache costs a re-hash next time, nothing more
        log.warning("Could not remember the hash of %s: %s", path, error)
    return sha256, finite
