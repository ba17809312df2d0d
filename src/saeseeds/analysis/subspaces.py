"""Do the unstable features of different seeds span the same subspace? (Gerasimov et al.)

Per seed, the top-r right singular vectors of the unstable features' decoder rows span U [d_in, r].
For two seeds the projection overlap ‖U_aᵀU_b‖²_F / r is 1 for the same subspace and r/d_in in
expectation for independent random r-dimensional subspaces.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from saeseeds.analysis.group_stats import GroupPairs


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


def unstable_subspace_overlap(
    group: GroupPairs, unstable: dict[int, np.ndarray], max_rank: int
) -> dict[str, object]:
    """Per pair: r, overlap and the random expectation r/d_in; their means over pairs."""
    d_in = group.runs[0].d_in
    bases = {  # [d_in, min(n_unstable, d_in)] per seed
        seed: principal_directions(group.run(seed).decoder_directions[mask])
        for seed, mask in unstable.items()
    }
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
