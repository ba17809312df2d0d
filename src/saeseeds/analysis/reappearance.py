"""Per-feature views across all seeds of a group.

- Reappearance (Gerasimov et al.): for feature i of seed a, p_i = share of the other seeds b
  with max_j C_dec[i, j] >= θ. Stable: p_i >= 1 - ε; unstable: p_i <= ε.
- Best-match cosine per feature: max_j C_dec[i, j] against each other seed, averaged.
- A feature's versions: each feature of a reference seed with its best match in every other seed,
  and the decoder cosines between all those versions (the report page's feature card).
- Overlap vs number of seeds (Paulo & Belrose): for a base seed, the share of its latents
  shared (c_dec > 0.7 and c_enc > 0.7) with none of m other seeds, m = 1 … S-1, averaged over
  the subsets of m other seeds and over base seeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from math import comb

import numpy as np

from saeseeds.analysis.group_stats import GroupPairs, spearman

MAX_SUBSETS = 200
VERSION_BLOCK = 4096
"""Features whose versions are compared at once (bounds memory to block × S × d_in floats)."""


def reappearance_by_seed(group: GroupPairs, threshold: float) -> dict[int, np.ndarray]:
    """{seed: p [n_features]}: share of other seeds where the feature has a match >= θ."""
    result = {}
    for seed in group.seeds:
        others = [other for other in group.seeds if other != seed]
        hits = np.stack([group.max_cosine(seed, other) >= threshold for other in others])
        result[seed] = hits.mean(axis=0)  # [n_features]
    return result


def best_match_by_seed(group: GroupPairs) -> dict[int, np.ndarray]:
    """{seed: [n_features]}: each feature's best-match cosine max_j C_dec[i, j], averaged over the
    other seeds. The per-feature statistic behind "reproduced beyond geometry"."""
    return {
        seed: np.mean(
            [group.max_cosine(seed, other) for other in group.seeds if other != seed], axis=0
        )
        for seed in group.seeds
    }


@dataclass
class FeatureVersions:
    """Each feature of the reference seed (the group's first) and its best match in every seed."""

    seeds: list[int]
    """The group's seeds; the first is the reference."""
    latents: np.ndarray  # [S, n_features] int64
    """latents[s, i]: the version of reference feature i in seeds[s] (its argmax partner;
    i itself in the reference)."""
    cosines: np.ndarray  # [n_features, S, S] float32
    """Decoder cosines between the versions of each reference feature."""

    @property
    def reference_seed(self) -> int:
        return self.seeds[0]


def feature_versions(group: GroupPairs) -> FeatureVersions:
    """Best matches of the first seed's features in every seed, and their decoder cosines."""
    reference = group.seeds[0]
    n_features = group.run(reference).n_features
    latents = np.stack([
        np.arange(n_features) if seed == reference else group.best_partner(reference, seed)
        for seed in group.seeds
    ]).astype(np.int64)  # fmt: skip
    cosines = np.empty((n_features, len(group.seeds), len(group.seeds)), dtype=np.float32)
    for start in range(0, n_features, VERSION_BLOCK):
        stop = min(start + VERSION_BLOCK, n_features)
        directions = np.stack(
            [
                group.run(seed).decoder_directions[latents[index, start:stop]]
                for index, seed in enumerate(group.seeds)
            ],
            axis=1,
        )  # [block, S, d_in]
        cosines[start:stop] = np.einsum("nsd,ntd->nst", directions, directions)
    return FeatureVersions(group.seeds, latents, cosines)


def reappearance_summary(
    group: GroupPairs, reappearance: dict[int, np.ndarray], epsilon: float
) -> dict[str, object]:
    """Stable / unstable shares, the distribution of p, and p against firing frequency."""
    all_p = np.concatenate([reappearance[seed] for seed in group.seeds])
    with_stats = all(group.run(seed).fire_counts is not None for seed in group.seeds)
    frequencies = (  # NaN (no correlation) for imported runs without held-out statistics
        np.concatenate([group.run(seed).firing_frequency for seed in group.seeds])
        if with_stats
        else np.full(len(all_p), np.nan)
    )
    values, counts = np.unique(np.round(all_p, 6), return_counts=True)
    stable = all_p >= 1.0 - epsilon
    unstable = all_p <= epsilon
    return {
        "epsilon": float(epsilon),
        "stable_share": float(stable.mean()),
        "unstable_share": float(unstable.mean()),
        "mean_reappearance": float(all_p.mean()),
        "distribution": {
            f"{value:g}": int(count) for value, count in zip(values, counts, strict=True)
        },
        "stable_share_by_seed": {
            str(seed): float(np.mean(reappearance[seed] >= 1.0 - epsilon)) for seed in group.seeds
        },
        "unstable_share_by_seed": {
            str(seed): float(np.mean(reappearance[seed] <= epsilon)) for seed in group.seeds
        },
        "spearman_vs_firing_frequency": spearman(frequencies, all_p),
    }


def _subsets(items: list[int], size: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    if comb(len(items), size) <= MAX_SUBSETS:
        return list(combinations(items, size))
    return [tuple(rng.choice(items, size=size, replace=False)) for _ in range(MAX_SUBSETS)]


def overlap_vs_seeds(group: GroupPairs, threshold: float, seed: int = 0) -> dict[int, float]:
    """{m: mean share of a base seed's latents shared with none of m other seeds}."""
    rng = np.random.default_rng(seed)
    seeds = group.seeds
    curve: dict[int, list[float]] = {m: [] for m in range(1, len(seeds))}
    for base in seeds:
        others = [other for other in seeds if other != base]
        shared = {other: group.shared(base, other, threshold) for other in others}
        for m in curve:
            for subset in _subsets(others, m, rng):
                shared_with_any = np.logical_or.reduce([shared[other] for other in subset])
                curve[m].append(float(np.mean(~shared_with_any)))
    return {m: float(np.mean(values)) for m, values in curve.items()}
