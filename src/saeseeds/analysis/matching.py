"""Hungarian matching: the one-to-one assignment of features maximising total cosine.

Two solvers reach the same optimum (tested): ``lapjv`` (Jonker-Volgenant, the default) and
scipy's ``linear_sum_assignment`` (the reference). On 16384² float32 cosine matrices of d_in=576
dictionaries (``scripts/bench_analysis.py --compare-solvers``, 2 shared cores) lapjv took
7-14 s (trained-like) and 12-13 s (random) with no memory beyond the matrix; scipy 19-25 s and
38-45 s with +3.9 GiB (a float64 copy, negated again for ``maximize``). ``lap``/``lapx`` were
1.7-3.6× slower than lapjv. lapjv needs a square matrix: rectangular problems are solved on a
zero-padded square (:func:`similarity.cosine_similarity` with ``square=True``), which has the
same optimum because every dummy row or column adds the same constant.
"""

from __future__ import annotations

from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.shared_memory import SharedMemory

import numpy as np


@dataclass
class Matching:
    """Matched pairs (rows[i], columns[i]) and their cosines; len = min(n_rows, n_cols)."""

    rows: np.ndarray  # [n_matched] int64, increasing
    columns: np.ndarray  # [n_matched] int64
    cosines: np.ndarray  # [n_matched] float32

    @property
    def total(self) -> float:
        return float(self.cosines.astype(np.float64).sum())


def _solve_lapjv(similarity: np.ndarray) -> np.ndarray:
    """Column assigned to each row of a square matrix, maximising the total."""
    import lapjv

    if similarity.shape[0] != similarity.shape[1]:
        size = max(similarity.shape)
        padded = np.zeros((size, size), dtype=np.float32)
        padded[: similarity.shape[0], : similarity.shape[1]] = similarity
        return _solve_lapjv(padded)[: similarity.shape[0]]
    if not similarity.flags.c_contiguous or similarity.dtype != np.float32:
        similarity = np.ascontiguousarray(similarity, dtype=np.float32)
    # lapjv minimises; negating in place (and back) avoids a second n² buffer.
    np.negative(similarity, out=similarity)
    try:
        column_of_row = lapjv.lapjv(similarity)[0]
    finally:
        np.negative(similarity, out=similarity)
    return np.asarray(column_of_row, dtype=np.int64)


def match(
    similarity: np.ndarray,
    n_rows: int | None = None,
    n_cols: int | None = None,
    solver: str = "lapjv",
) -> Matching:
    """Maximum-total one-to-one matching on ``similarity[:n_rows, :n_cols]``.

    ``similarity`` may be a zero-padded square (``n_rows``/``n_cols`` give the real block); the
    lapjv path negates it in place during the solve and restores it afterwards.
    """
    n_rows = similarity.shape[0] if n_rows is None else n_rows
    n_cols = similarity.shape[1] if n_cols is None else n_cols
    if n_rows == 0 or n_cols == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Matching(empty, empty, np.zeros(0, dtype=np.float32))
    if solver == "scipy":
        from scipy.optimize import linear_sum_assignment

        rows, columns = linear_sum_assignment(similarity[:n_rows, :n_cols], maximize=True)
    elif solver == "lapjv":
        return matching_from_assignment(similarity, _solve_lapjv(similarity), n_rows, n_cols)
    else:
        raise ValueError(f"unknown solver {solver!r}; choose lapjv or scipy")
    rows, columns = np.asarray(rows, dtype=np.int64), np.asarray(columns, dtype=np.int64)
    return Matching(rows, columns, similarity[rows, columns].astype(np.float32))


class SharedMatrix:
    """A float32 square matrix in shared memory, so a worker process can solve it without a copy.

    lapjv holds the GIL for its whole solve, so a thread cannot overlap it with other work; a
    process can. On 2+ cores one pair's decoder solve then runs beside its encoder matrix and
    solve, with two n² matrices alive (never a third).
    """

    def __init__(self, size: int):
        self.shape = (size, size)
        self.memory = SharedMemory(create=True, size=max(1, size * size * 4))
        self.array = np.ndarray(self.shape, dtype=np.float32, buffer=self.memory.buf)

    def solve_in_background(self) -> Future:
        """Column assigned to each row, computed in the worker process."""
        return _worker_pool().submit(_solve_shared, self.memory.name, self.shape)

    def release(self) -> None:
        del self.array  # the buffer must have no views left before it is closed
        self.memory.close()
        self.memory.unlink()


def matching_from_assignment(
    similarity: np.ndarray, column_of_row: np.ndarray, n_rows: int, n_cols: int
) -> Matching:
    """A Matching from a square solve of the (possibly padded) ``similarity``."""
    column_of_row = column_of_row[:n_rows]
    rows = np.flatnonzero(column_of_row < n_cols)
    columns = column_of_row[rows]
    return Matching(rows, columns, similarity[rows, columns].astype(np.float32))


_POOL: ProcessPoolExecutor | None = None


def _worker_pool() -> ProcessPoolExecutor:
    global _POOL
    if _POOL is None:
        # spawn, not fork: the parent may hold BLAS/OpenMP threads, which fork does not survive.
        _POOL = ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"))
    return _POOL


def _solve_shared(name: str, shape: tuple[int, int]) -> np.ndarray:
    memory = SharedMemory(name=name)
    try:
        similarity = np.ndarray(shape, dtype=np.float32, buffer=memory.buf)
        column_of_row = _solve_lapjv(similarity)
        del similarity
        return column_of_row
    finally:
        memory.close()
