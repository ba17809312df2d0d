"""Hungarian matching: known permutations, brute force, and lapjv reaching scipy's optimum."""

from __future__ import annotations

from itertools import permutations

import numpy as np
import pytest

from saeseeds.analysis.matching import match
from saeseeds.analysis.similarity import cosine_similarity
from tests.analysis.run_folders import random_directions

SOLVERS = ["lapjv", "scipy"]


@pytest.mark.parametrize("solver", SOLVERS)
def test_recovers_a_known_permutation_exactly(solver):
    dictionary = random_directions(200, 32, seed=0)  # [200, 32]
    permutation = np.random.default_rng(1).permutation(200)
    permuted = dictionary[permutation]  # row j of permuted is row permutation[j]
    matching = match(cosine_similarity(dictionary, permuted, block_size=64), solver=solver)
    inverse = np.argsort(permutation)
    np.testing.assert_array_equal(matching.rows, np.arange(200))
    np.testing.assert_array_equal(matching.columns, inverse)
    np.testing.assert_allclose(matching.cosines, 1.0, atol=1e-5)


def brute_force_maximum(similarity: np.ndarray) -> float:
    n_rows, n_cols = similarity.shape
    if n_rows <= n_cols:
        return max(
            sum(similarity[i, cols[i]] for i in range(n_rows))
            for cols in permutations(range(n_cols), n_rows)
        )
    return brute_force_maximum(similarity.T)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (5, 5), (7, 7), (4, 7), (7, 5), (2, 6)])
def test_total_equals_brute_force_maximum(solver, shape):
    rng = np.random.default_rng(sum(shape))
    for _ in range(5):
        similarity = rng.uniform(-1, 1, size=shape).astype(np.float32)
        matching = match(similarity.copy(), solver=solver)
        assert len(matching.rows) == min(shape)
        assert len(set(matching.columns.tolist())) == min(shape)
        assert matching.total == pytest.approx(brute_force_maximum(similarity), abs=1e-5)


def test_padded_square_gives_the_rectangular_optimum():
    rows, columns = random_directions(30, 8, seed=2), random_directions(45, 8, seed=3)
    padded = cosine_similarity(rows, columns, square=True, block_size=7)  # [45, 45]
    assert padded.shape == (45, 45) and np.all(padded[30:] == 0)
    reference = match(cosine_similarity(rows, columns), solver="scipy")
    fast = match(padded, 30, 45, solver="lapjv")
    assert len(fast.rows) == 30 and fast.columns.max() < 45
    assert fast.total == pytest.approx(reference.total, abs=1e-4)
    np.testing.assert_allclose(
        fast.cosines, cosine_similarity(rows, columns)[fast.rows, fast.columns]
    )


@pytest.mark.parametrize("kind", ["random", "trained-like"])
def test_lapjv_reaches_the_scipy_optimum_on_realistic_matrices(kind):
    rng = np.random.default_rng(4)
    first = random_directions(600, 64, seed=5)
    if kind == "random":
        second = random_directions(600, 64, seed=6)
    else:  # 70% of features reappear (permuted, noisy), 30% are new
        second = first[rng.permutation(600)] + 0.3 * rng.standard_normal((600, 64)) / 8
        new = rng.random(600) < 0.3
        second[new] = rng.standard_normal((int(new.sum()), 64))
        second = second / np.linalg.norm(second, axis=1, keepdims=True)
    similarity = cosine_similarity(first, second.astype(np.float32))
    reference = match(similarity, solver="scipy")
    fast = match(similarity, solver="lapjv")
    assert fast.total == pytest.approx(reference.total, rel=1e-6)
    # The in-place negation of the lapjv path leaves the matrix as it was.
    np.testing.assert_array_equal(similarity, cosine_similarity(first, second.astype(np.float32)))


def test_blocked_similarity_equals_the_direct_product():
    rows, columns = random_directions(101, 12, seed=7), random_directions(57, 12, seed=8)
    np.testing.assert_allclose(
        cosine_similarity(rows, columns, block_size=10), rows @ columns.T, atol=1e-6
    )
