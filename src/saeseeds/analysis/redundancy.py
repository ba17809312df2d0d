"""Near-duplicate features inside one dictionary.

A dictionary that spends many latents on one direction inflates every cross-seed statistic: each
copy in seed a finds a copy in seed b, whatever the rest of the dictionary does. So, per run, each
live feature's nearest other feature of the same dictionary is found (decoder cosine, dead features
excluded on both sides), and the group reports the share of live features whose nearest neighbour
is at or above a threshold (0.9 by default: the same direction up to noise), averaged over seeds,
with the median nearest-neighbour cosine. Top-K SAEs trained to convergence have almost none; a
high share says the matched cosines of that group partly count copies of the same few directions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from saeseeds.analysis.loading import RunFolder
from saeseeds.analysis.similarity import cosine_similarity


def nearest_neighbour_cosines(
    directions: np.ndarray,  # [n, d_in], unit rows
    *,
    block_size: int = 2048,
    device: str = "cpu",
) -> np.ndarray:  # [n]
    """Each row's largest cosine with any other row, computed a block of rows at a time."""
    n_rows = directions.shape[0]
    nearest = np.full(n_rows, np.nan, dtype=np.float32)
    if n_rows < 2:
        return nearest
    block = np.empty((min(block_size, n_rows), n_rows), np.float32)  # [block, n], reused
    for start in range(0, n_rows, block_size):
        stop = min(start + block_size, n_rows)
        cosines = cosine_similarity(
            directions[start:stop], directions, block_size=block_size, device=device,
            out=block[: stop - start],
        )  # fmt: skip
        cosines[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # not itself
        nearest[start:stop] = cosines.max(axis=1)
    return nearest


def redundancy(
    runs: list[RunFolder], threshold: float, *, block_size: int = 2048, device: str = "cpu"
) -> dict[str, Any]:
    """Near-duplicate share and median nearest-neighbour cosine of the live decoder rows, per
    seed and averaged over seeds."""
    per_seed = {}
    for run in runs:
        live = run.decoder_directions[run.live_mask]  # [n_live, d_in]
        nearest = nearest_neighbour_cosines(live, block_size=block_size, device=device)
        per_seed[str(run.seed)] = {
            "n_live": int(live.shape[0]),
            "near_duplicate_share": float(np.mean(nearest >= threshold)) if len(live) > 1 else None,
            "median_nearest_neighbour": float(np.median(nearest)) if len(live) > 1 else None,
        }

    def mean(key: str) -> float | None:
        values = [entry[key] for entry in per_seed.values() if entry[key] is not None]
        return float(np.mean(values)) if values else None

    return {
        "threshold": float(threshold),
        "near_duplicate_share": mean("near_duplicate_share"),
        "median_nearest_neighbour": mean("median_nearest_neighbour"),
        "per_seed": per_seed,
    }
