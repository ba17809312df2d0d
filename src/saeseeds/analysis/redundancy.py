"""Near-duplicate features inside one dictionary.

A dictionary that spends many latents on one direction inflates every cross-seed statistic: each
copy in seed a finds a copy in seed b, whatever the rest of the dictionary does. So, per run, each
live feature's nearest other feature of the same dictionary is found (decoder cosine, dead features
excluded on both sides), and the group reports the share of live features whose nearest neighbour
is at or above a threshold (0.9 by default: the same direction up to noise), averaged over seeds,
with the median nearest-neighbour cosine. Top-K SAEs trained to convergence have almost none; a
high share says the matched cosines of that group partly count copies of the same few directions.

With a one-to-one (Hungarian) matching, the group's median matched decoder cosine and shared
fraction are also given over the **distinct** features only (live, no near-duplicate in their
own dictionary), from the same matchings: what remains of the stability once copies are set aside.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from saeseeds.analysis.group_stats import GroupPairs
from saeseeds.analysis.pair_metrics import cosines_by_column, cosines_by_row, shared_masks
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


def compared_features(run: Any) -> np.ndarray:  # [n_features] bool
    """The live features of a run; every feature of an imported run without held-out
    statistics (nothing says which are dead)."""
    return run.live_mask if run.fire_counts is not None else np.ones(run.n_features, bool)


def nearest_by_seed(
    group: GroupPairs, *, block_size: int = 2048, device: str = "cpu"
) -> dict[int, np.ndarray]:
    """{seed: [n_features]}: each live feature's nearest-neighbour cosine among the live features
    of its own dictionary (:func:`compared_features`); NaN for dead features."""
    result = {}
    for run in group.runs:
        live = compared_features(run)  # [n_features]
        nearest = np.full(run.n_features, np.nan, dtype=np.float32)
        nearest[live] = nearest_neighbour_cosines(
            run.decoder_directions[live], block_size=block_size, device=device
        )
        result[run.seed] = nearest
    return result


def redundancy(
    group: GroupPairs,
    threshold: float,
    shared_threshold: float,
    *,
    block_size: int = 2048,
    device: str = "cpu",
    nearest: dict[int, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Near-duplicate share and median nearest-neighbour cosine of the live decoder rows, per
    seed and averaged over seeds; with an assignment, the stability of the distinct features.
    ``nearest`` is :func:`nearest_by_seed`'s result when the caller already has it."""
    if nearest is None:
        nearest = nearest_by_seed(group, block_size=block_size, device=device)
    per_seed, distinct = {}, {}
    for run in group.runs:
        live = compared_features(run)  # [n_features]
        nearest_live = nearest[run.seed][live]  # [n_live]
        distinct[run.seed] = live.copy()
        distinct[run.seed][live] = nearest_live < threshold
        enough = int(live.sum()) > 1
        per_seed[str(run.seed)] = {
            "n_live": int(live.sum()),
            "n_distinct": int(distinct[run.seed].sum()),
            "near_duplicate_share": float(np.mean(nearest_live >= threshold)) if enough else None,
            "median_nearest_neighbour": float(np.median(nearest_live)) if enough else None,
        }

    def mean(key: str) -> float | None:
        values = [entry[key] for entry in per_seed.values() if entry[key] is not None]
        return float(np.mean(values)) if values else None

    return {
        "threshold": float(threshold),
        "near_duplicate_share": mean("near_duplicate_share"),
        "median_nearest_neighbour": mean("median_nearest_neighbour"),
        "per_seed": per_seed,
        "distinct": distinct_stability(group, distinct, shared_threshold),
    }


def distinct_stability(
    group: GroupPairs, distinct: dict[int, np.ndarray], shared_threshold: float
) -> dict[str, float | None] | None:
    """Median matched decoder cosine and shared fraction over the distinct features of both
    sides of each pair (full Hungarian matchings), averaged over pairs; None without an
    assignment. ``shared`` is None without encoder matchings."""
    medians, shares = [], []
    for (seed_a, seed_b), pair in group.pairs.items():
        if pair.decoder is None:
            return None
        mask_a, mask_b = distinct[seed_a], distinct[seed_b]
        cosines = np.concatenate([
            cosines_by_row(pair.decoder, pair.n_features_a)[mask_a],
            cosines_by_column(pair.decoder, pair.n_features_b)[mask_b],
        ])  # fmt: skip
        cosines = cosines[~np.isnan(cosines)]
        medians.append(float(np.median(cosines)) if len(cosines) else np.nan)
        if pair.encoder is not None:
            shared_a, shared_b = shared_masks(pair, shared_threshold)
            both = np.concatenate([shared_a[mask_a], shared_b[mask_b]])
            shares.append(float(both.mean()) if len(both) else np.nan)

    def mean(values: list[float]) -> float | None:
        kept = [value for value in values if not np.isnan(value)]
        return float(np.mean(kept)) if kept else None

    return {"decoder_median": mean(medians), "shared": mean(shares) if shares else None}
