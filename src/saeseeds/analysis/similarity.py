"""Cosine-similarity matrices between two sets of unit directions, built in row blocks.

The only large allocation is the float32 result (one 16384² matrix is 1 GiB); each block is
written straight into it, so temporary memory stays at one block. On a CUDA GPU (``device=auto``
when one is present) the blocks are computed there; on CPU numpy does it. torch is imported only
when a GPU is asked for or visible, so a CPU-only analysis does not pay its memory.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def _gpu_visible() -> bool:
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()


def select_device(requested: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` without one fails."""
    requested = str(requested)  # a Device member or its name
    if requested == "cpu" or (requested == "auto" and not _gpu_visible()):
        return "cpu"
    try:
        import torch

        available = torch.cuda.is_available()
    except ImportError:
        available = False
    if requested == "cuda" and not available:
        from saeseeds.analysis.errors import AnalysisConfigError

        raise AnalysisConfigError(
            "device=cuda but torch sees no CUDA GPU; use device=auto (a GPU when present, "
            "else the CPU) or device=cpu."
        )
    return "cuda" if available else "cpu"


def matrix_bytes(n_rows: int, n_cols: int) -> int:
    """Size of one float32 similarity matrix."""
    return 4 * n_rows * n_cols


def available_memory_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (Linux); None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def cosine_similarity(
    rows: np.ndarray,  # [n_rows, d_in], unit rows
    columns: np.ndarray,  # [n_cols, d_in], unit rows
    *,
    block_size: int = 2048,
    device: str = "cpu",
    square: bool = False,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """C[i, j] = rows[i] · columns[j] as float32 [n_rows, n_cols].

    With ``square=True`` the result is [m, m], m = max(n_rows, n_cols), zero outside the
    top-left block: the padded form an assignment solver for square matrices needs. ``out``
    (float32, that shape) receives the result, e.g. a buffer in shared memory.
    """
    n_rows, n_cols = rows.shape[0], columns.shape[0]
    shape = (max(n_rows, n_cols),) * 2 if square else (n_rows, n_cols)
    exact_fit = shape == (n_rows, n_cols)
    if out is not None:
        if out.shape != shape or out.dtype != np.float32:
            raise ValueError(f"out must be float32 {shape}, got {out.dtype} {out.shape}")
        similarity = out
        if not exact_fit:
            similarity.fill(0.0)
    else:
        similarity = np.empty(shape, np.float32) if exact_fit else np.zeros(shape, np.float32)
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    columns = np.ascontiguousarray(columns, dtype=np.float32)
    if device == "cuda":
        _fill_on_gpu(similarity, rows, columns, block_size)
        return similarity
    columns_t = columns.T  # [d_in, n_cols]
    for start in range(0, n_rows, block_size):
        stop = min(start + block_size, n_rows)
        if exact_fit:
            np.matmul(rows[start:stop], columns_t, out=similarity[start:stop])
        else:
            similarity[start:stop, :n_cols] = rows[start:stop] @ columns_t
    return similarity


def _fill_on_gpu(
    similarity: np.ndarray, rows: np.ndarray, columns: np.ndarray, block_size: int
) -> None:
    import torch

    columns_gpu = torch.from_numpy(columns).cuda()  # [n_cols, d_in]
    n_cols = columns.shape[0]
    for start in range(0, rows.shape[0], block_size):
        stop = min(start + block_size, rows.shape[0])
        block = torch.from_numpy(rows[start:stop]).cuda() @ columns_gpu.T
        similarity[start:stop, :n_cols] = block.cpu().numpy()
    del columns_gpu


class _BestMatches:
    """Row and column argmax/max of a similarity matrix, accumulated over its row blocks.

    numpy's argmax over axis 0 is slow on a row-major block, so per block the column maxima are
    reduced along rows (cheap) and located with one comparison and ``nonzero``.
    """

    def __init__(self, n_rows: int, n_cols: int):
        self.row_best = np.empty(n_rows, dtype=np.int64)  # [n_rows]
        self.row_max = np.empty(n_rows, dtype=np.float32)  # [n_rows]
        self.column_max = np.full(n_cols, -np.inf, dtype=np.float32)  # [n_cols]
        self.column_best = np.zeros(n_cols, dtype=np.int64)  # [n_cols]

    def add(self, start: int, block: np.ndarray) -> None:  # block: rows start.., [block, n_cols]
        stop = start + block.shape[0]
        self.row_best[start:stop] = block.argmax(axis=1)
        self.row_max[start:stop] = block[np.arange(block.shape[0]), self.row_best[start:stop]]
        block_max = block.max(axis=0)  # [n_cols]
        improved = block_max > self.column_max  # [n_cols]
        if not improved.any():
            return
        # Columns that did not improve compare against +inf and so have no hit.
        target = np.where(improved, block_max, np.float32(np.inf))  # [n_cols]
        hit_rows, hit_columns = np.nonzero(block == target)
        # nonzero runs row-major, so the first hit of a column is its smallest row, as argmax.
        first_columns, first_hits = np.unique(hit_columns, return_index=True)
        self.column_best[first_columns] = hit_rows[first_hits] + start
        self.column_max[improved] = block_max[improved]

    def result(self) -> dict[str, np.ndarray]:
        return {
            "row_max": self.row_max,
            "row_best": self.row_best,
            "column_max": self.column_max,
            "column_best": self.column_best,
        }


def best_matches(similarity: np.ndarray, block_size: int = 2048) -> dict[str, np.ndarray]:
    """Per row and per column of a stored matrix: the best partner (argmax) and its cosine."""
    n_rows, n_cols = similarity.shape
    best = _BestMatches(n_rows, n_cols)
    for start in range(0, n_rows, block_size):
        best.add(start, similarity[start : start + block_size])
    return best.result()


def best_matches_between(
    rows: np.ndarray,  # [n_rows, d_in], unit rows
    columns: np.ndarray,  # [n_cols, d_in], unit rows
    *,
    block_size: int = 2048,
    device: str = "cpu",
) -> dict[str, np.ndarray]:
    """:func:`best_matches` of rows · columnsᵀ without storing it: each block of ``block_size``
    rows is computed, reduced and dropped, so memory stays at one block (argmax matching)."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    columns = np.ascontiguousarray(columns, dtype=np.float32)
    n_rows, n_cols = rows.shape[0], columns.shape[0]
    best = _BestMatches(n_rows, n_cols)
    block = np.empty((min(block_size, n_rows), n_cols), np.float32)  # [block, n_cols], reused
    for start in range(0, n_rows, block_size):
        stop = min(start + block_size, n_rows)
        cosine_similarity(
            rows[start:stop], columns, block_size=block_size, device=device,
            out=block[: stop - start],
        )  # fmt: skip
        best.add(start, block[: stop - start])
    return best.result()
