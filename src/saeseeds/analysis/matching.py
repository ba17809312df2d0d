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

from dataclasses import dataclass

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
        column_of_row = _solve_lapjv(similarity)[:n_rows]
        rows = np.flatnonzero(column_of_row < n_cols)
        columns = column_of_row[rows]
    else:
        raise ValueError(f"unknown solver {solver!r}; choose lapjv or scipy")
    rows, columns = np.asarray(rows, dtype=np.int64), np.asarray(columns, dtype=np.int64)
    return Matching(rows, columns, similarity[rows, columns].astype(np.float32))
