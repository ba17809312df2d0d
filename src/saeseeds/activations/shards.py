"""Training rows as an ordered sequence of shards: the one shape every activation source takes.

A source's training activations are shards 0, 1, 2, ... with known row counts, each readable on
its own in bounded memory as a ``[rows, d_in]`` tensor in the source's storage dtype: files of a
store on disk, blocks of a user's file, shards generated from (seed, index), or shards a language
model computes on demand. :class:`TrainingRows` is the prefix of ``n_rows`` rows a job trains on,
with its exact statistics (:class:`RowStats`) summed shard by shard. This module owns that
interface, the statistics and the seed derivation that makes generated shards reproducible at any
token count; it must not know where rows come from nor in which order training reads them.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from saeseeds.errors import DataError

STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_STATS_BLOCK = 64  # rows reduced at a time (see RowStats.of)


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from ``parts`` (e.g. ``(data_seed, "train", shard)``), the same on every
    machine and Python, so that shard i is the same whatever else is generated."""
    digest = hashlib.sha256(repr(tuple(parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def seeded_generator(*parts: Any) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def storage_dtype(name: str, field: str = "data.store_dtype") -> torch.dtype:
    if name not in STORAGE_DTYPES:
        raise DataError(
            f"{field}={name!r} is not valid; choose one of {', '.join(STORAGE_DTYPES)}."
        )
    return STORAGE_DTYPES[name]


@dataclass
class RowStats:
    """Exact sums over a set of rows, in float64, that merge across shards."""

    count: int
    total: Tensor  # [d_in] float64: Σ x
    squared_norms: float  # Σ ‖x‖²
    scatter: Tensor | None = None  # [d_in, d_in] float64: Σ (x − mean)(x − mean)ᵀ

    @classmethod
    def of(cls, rows: Tensor, scatter: bool = False) -> RowStats:
        """Statistics of ``rows`` [n, d_in] in float64, the same bits whatever the number of CPU
        threads: blocks of :data:`_STATS_BLOCK` rows are reduced in a fixed order, each by
        operations too small for torch or BLAS to split across threads."""
        n_rows, d_in = rows.shape
        total = torch.zeros(d_in, dtype=torch.float64)
        squared_norms = torch.zeros((), dtype=torch.float64)
        for start in range(0, n_rows, _STATS_BLOCK):
            block = rows[start : start + _STATS_BLOCK].double()
            total += block.sum(0)
            squared_norms += block.pow(2).sum(1).sum()
        centered_scatter = None
        if scatter:
            mean = total / max(n_rows, 1)
            centered_scatter = torch.zeros(d_in, d_in, dtype=torch.float64)
            for start in range(0, n_rows, _STATS_BLOCK):
                centered = rows[start : start + _STATS_BLOCK].double() - mean
                centered_scatter += centered.T @ centered
        return cls(n_rows, total, float(squared_norms), centered_scatter)

    @property
    def mean(self) -> Tensor:  # [d_in] float64
        return self.total / self.count

    def merge(self, other: RowStats) -> RowStats:
        """The statistics of both sets of rows (Chan et al.'s pairwise update of the scatter)."""
        count = self.count + other.count
        scatter = None
        if self.scatter is not None and other.scatter is not None:
            scatter = self.scatter + other.scatter
            if self.count and other.count:
                delta = other.mean - self.mean
                scatter = scatter + torch.outer(delta, delta) * (self.count * other.count / count)
        return RowStats(
            count, self.total + other.total, self.squared_norms + other.squared_norms, scatter
        )

    def covariance(self) -> Tensor:
        """Unbiased covariance [d_in, d_in] float64."""
        if self.scatter is None:
            raise ValueError("these statistics were computed without the scatter matrix")
        if self.count < 2:
            raise DataError(f"a covariance needs at least 2 rows, got {self.count}.")
        return self.scatter / (self.count - 1)


class ShardSequence:
    """Shards 0 .. n_shards−1 of rows; subclasses implement :meth:`shard_rows` and :meth:`read`.

    ``n_shards`` may be ``None`` for sources that can make as many shards as asked for (generated
    data, a store that is extended on demand).
    """

    d_in: int
    dtype: torch.dtype
    n_shards: int | None = None

    def shard_rows(self, index: int) -> int:
        """Rows in shard ``index``."""
        raise NotImplementedError

    def read(self, index: int) -> Tensor:
        """Shard ``index`` as ``[shard_rows(index), d_in]`` in :attr:`dtype`, bounded in memory."""
        raise NotImplementedError

    def read_into(self, index: int, out: Tensor) -> None:
        """Fill ``out`` ``[rows, d_in]`` (:attr:`dtype`) with the first rows of shard ``index``;
        a store reads the file straight into it."""
        out.copy_(self.read(index)[: len(out)])

    def shard_stats(self, index: int, rows: int, scatter: bool) -> RowStats:
        """Statistics of the first ``rows`` rows of shard ``index`` (a store has them on disk)."""
        return RowStats.of(self.read(index)[:rows], scatter)

    def describe(self) -> str:
        return type(self).__name__


@dataclass
class TrainingRows:
    """The first ``n_rows`` rows of ``shards``: what a job trains on. Never held in memory whole."""

    shards: ShardSequence
    n_rows: int

    def __post_init__(self) -> None:
        self.used_rows: list[int] = []  # rows of each shard that the prefix uses
        remaining, index = self.n_rows, 0
        while remaining > 0:
            if self.shards.n_shards is not None and index >= self.shards.n_shards:
                raise DataError(
                    f"{self.shards.describe()} holds {self.n_rows - remaining} training rows, "
                    f"fewer than the {self.n_rows} asked for (data.n_tokens)."
                )
            take = min(self.shards.shard_rows(index), remaining)
            self.used_rows.append(take)
            remaining -= take
            index += 1
        self._stats: dict[bool, RowStats] = {}

    def __len__(self) -> int:
        return self.n_rows

    @property
    def d_in(self) -> int:
        return int(self.shards.d_in)

    @property
    def dtype(self) -> torch.dtype:
        return self.shards.dtype

    @property
    def n_shards(self) -> int:
        return len(self.used_rows)

    def read(self, index: int) -> Tensor:
        """The rows of shard ``index`` that the prefix uses, in the storage dtype."""
        return self.shards.read(index)[: self.used_rows[index]]

    def read_into(self, index: int, out: Tensor) -> None:
        """Fill ``out`` ``[used_rows[index], d_in]`` with the rows of shard ``index`` that the
        prefix uses."""
        self.shards.read_into(index, out)

    def stats(self, scatter: bool = False) -> RowStats:
        """Exact statistics of the whole prefix (summed per shard; computed once)."""
        if scatter not in self._stats and True in self._stats:
            return self._stats[True]
        if scatter not in self._stats:
            merged = RowStats(0, torch.zeros(self.d_in, dtype=torch.float64), 0.0)
            if scatter:
                merged.scatter = torch.zeros(self.d_in, self.d_in, dtype=torch.float64)
            for index, rows in enumerate(self.used_rows):
                merged = merged.merge(self.shards.shard_stats(index, rows, scatter))
            self._stats[scatter] = merged
        return self._stats[scatter]

    def mean_squared_norm(self) -> float:
        stats = self.stats()
        value = stats.squared_norms / max(stats.count, 1)
        return value if math.isfinite(value) else float("nan")


class GeneratedShards(ShardSequence):
    """Shards computed by ``make(index, rows)``: all of ``shard_rows`` rows when it is an int (as
    many shards as asked for; a training prefix takes the first rows of its last one, so a row is
    the same at every token count), or one count per shard when it is a list."""

    def __init__(
        self,
        make: Any,
        d_in: int,
        shard_rows: int | list[int],
        dtype: torch.dtype,
        label: str,
    ):
        if isinstance(shard_rows, int) and shard_rows < 1:
            raise DataError(f"data.shard_tokens={shard_rows} must be a positive integer.")
        self.make, self.d_in, self.rows, self.dtype, self.label = (
            make,
            d_in,
            shard_rows,
            dtype,
            label,
        )
        self.n_shards = None if isinstance(shard_rows, int) else len(shard_rows)

    def shard_rows(self, index: int) -> int:
        return self.rows if isinstance(self.rows, int) else self.rows[index]

    def read(self, index: int) -> Tensor:
        return self.make(index, self.shard_rows(index)).to(self.dtype)

    def describe(self) -> str:
        return self.label
