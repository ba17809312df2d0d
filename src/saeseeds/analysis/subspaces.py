"""Do the unstable features of different seeds span the same subspace? (Gerasimov et al.)

Per seed, the top-r right singular vectors of the unstable features' decoder rows span U [d_in, r].
For two seeds the projection overlap ‖U_aᵀU_b‖²_F / r is 1 for the same subspace and r/d_in in
expectation for independent random r-dimensional subspaces. Real activations are anisotropic, so
r/d_in is a weak reference: :func:`compare_with_control` puts the overlap beside a trained
control's (the same overlap of the control's own unstable features, at the same r), with a
delete-one-seed jackknife interval on the difference (:mod:`group_stats`).
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np

from saeseeds.analysis.group_stats import GroupPairs, difference_of_groups, outcome

STATISTIC = "subspace_overlap"  # a mean over pairs (group_stats.aggregate)


def principal_directions(directions: np.ndarray) -> np.ndarray:  # [d_in, min(n, d_in)]
    """Right singular vectors of [n, d_in] directions, by decreasing singular value.

    They are the eigenvectors of the d_in × d_in Gram matrix, which is much cheaper than an SVD
    of thousands of rows.
    """
    rows = directions.astype(np.float64)
    eigenvalues, eigenvectors = np.linalg.eigh(rows.T @ rows)
    order = np.argsort(eigenvalues)[::-1][: min(rows.shape)]
    return eigenvectors[:, order]


def top_subspace(directions: np.ndarray, rank: int) -> np.ndarray:  # [d_in, rank]
    """Orthonormal basis of the top-``rank`` right singular vectors of [n, d_in] directions."""
    return principal_directions(directions)[:, :rank]


def projection_overlap(basis_a: np.ndarray, basis_b: np.ndarray) -> float:
    """‖U_aᵀU_b‖²_F / r for two [d_in, r] orthonormal bases."""
    return float(np.sum((basis_a.T @ basis_b) ** 2) / basis_a.shape[1])


def unstable_bases(group: GroupPairs, unstable: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """{seed: principal directions [d_in, min(n_unstable, d_in)] of its unstable features}."""
    return {
        seed: principal_directions(group.run(seed).decoder_directions[mask])
        for seed, mask in unstable.items()
    }


def unstable_subspace_overlap(
    group: GroupPairs,
    unstable: dict[int, np.ndarray],
    max_rank: int,
    bases: dict[int, np.ndarray] | None = None,
) -> dict[str, object]:
    """Per pair: r, overlap and the random expectation r/d_in; their means over pairs.
    ``bases`` are :func:`unstable_bases` of ``unstable`` when already computed."""
    d_in = group.runs[0].d_in
    bases = unstable_bases(group, unstable) if bases is None else bases
    pairs = []
    for seed_a, seed_b in combinations(group.seeds, 2):
        rank = min(max_rank, bases[seed_a].shape[1], bases[seed_b].shape[1])
        entry = {"seed_a": seed_a, "seed_b": seed_b, "rank": rank}
        if rank == 0:
            pairs.append({**entry, "overlap": float("nan"), "random_expectation": float("nan")})
            continue
        overlap = projection_overlap(bases[seed_a][:, :rank], bases[seed_b][:, :rank])
        pairs.append({**entry, "overlap": overlap, "random_expectation": rank / d_in})
    measured = [pair for pair in pairs if pair["rank"] > 0]
    return {
        "pairs": pairs,
        "mean_overlap": float(np.mean([p["overlap"] for p in measured])) if measured else None,
        "mean_random_expectation": (
            float(np.mean([p["random_expectation"] for p in measured])) if measured else None
        ),
        "n_unstable_by_seed": {str(seed): int(mask.sum()) for seed, mask in unstable.items()},
    }


def overlap_matrix(bases: dict[int, np.ndarray], rank: int) -> np.ndarray:  # [S, S]
    """Projection overlap of every pair of seeds at one rank; NaN on the diagonal."""
    seeds = sorted(bases)
    matrix = np.full((len(seeds), len(seeds)), np.nan)
    for i, j in combinations(range(len(seeds)), 2):
        basis_a, basis_b = bases[seeds[i]][:, :rank], bases[seeds[j]][:, :rank]
        matrix[i, j] = matrix[j, i] = projection_overlap(basis_a, basis_b)
    return matrix


def _pair_list(bases: dict[int, np.ndarray], matrix: np.ndarray) -> list[dict[str, Any]]:
    seeds = sorted(bases)
    return [
        {"seed_a": seeds[i], "seed_b": seeds[j], "overlap": float(matrix[i, j])}
        for i, j in combinations(range(len(seeds)), 2)
    ]


def compare_with_control(
    condition: dict[int, np.ndarray],
    control: dict[int, np.ndarray],
    max_rank: int,
    confidence: float,
) -> dict[str, Any]:
    """The condition's unstable-subspace overlap beside a control's, at one common rank.

    r = min(max_rank, d_in, the unstable count of every seed of both groups), so both overlaps
    are measured on subspaces of the same dimension. The group value is the mean over pairs; the
    difference has a jackknife-t interval (``None`` values and a ``reason`` when r = 0).
    """
    d_in = next(iter(condition.values())).shape[0]
    counts = {
        "condition": {seed: basis.shape[1] for seed, basis in condition.items()},
        "control": {seed: basis.shape[1] for seed, basis in control.items()},
    }
    rank = min([max_rank, d_in] + [n for side in counts.values() for n in side.values()])
    entry: dict[str, Any] = {"rank": rank, "random_expectation": rank / d_in}
    if rank == 0:
        empty = [
            f"{side} seed {seed}" for side, by_seed in counts.items()
            for seed, n in by_seed.items() if n == 0
        ]  # fmt: skip
        keys = ("condition", "control", "difference", "standard_error", "p_value")
        return {
            **entry,
            **dict.fromkeys(keys),
            "random_expectation": None,
            "difference_ci": [None, None],
            "outcome": None,
            "reason": f"no unstable features in {', '.join(empty)}",
            "condition_pairs": [],
            "control_pairs": [],
        }
    condition_matrix, control_matrix = (
        overlap_matrix(condition, rank),
        overlap_matrix(control, rank),
    )
    difference = difference_of_groups(condition_matrix, control_matrix, STATISTIC, confidence)
    return {
        **entry,
        "condition": difference["value_a"],
        "control": difference["value_b"],
        "difference": difference["difference"],
        "difference_ci": difference["difference_ci"],
        "p_value": difference["p_value"],
        "standard_error": difference["standard_error"],
        "outcome": outcome(difference["difference_ci"]),
        "reason": (
            "r = d_in: every subspace is the whole space, so the overlap says nothing"
            if rank == d_in
            else None
        ),
        "condition_pairs": _pair_list(condition, condition_matrix),
        "control_pairs": _pair_list(control, control_matrix),
    }
