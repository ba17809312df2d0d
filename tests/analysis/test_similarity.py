"""Blocked similarity extras: best partners per row and column, and device selection."""

from __future__ import annotations

import numpy as np
import pytest

from saeseeds.analysis.similarity import best_matches, cosine_similarity, select_device
from tests.analysis.run_folders import random_directions


def test_best_matches_equal_full_argmax_and_max():
    similarity = cosine_similarity(random_directions(70, 10, 0), random_directions(50, 10, 1))
    best = best_matches(similarity, block_size=16)
    np.testing.assert_array_equal(best["row_best"], similarity.argmax(axis=1))
    np.testing.assert_array_equal(best["column_best"], similarity.argmax(axis=0))
    np.testing.assert_allclose(best["row_max"], similarity.max(axis=1))
    np.testing.assert_allclose(best["column_max"], similarity.max(axis=0))


def test_cpu_is_always_available_and_auto_falls_back_to_it(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert select_device("cpu") == "cpu"
    assert select_device("auto") == "cpu"


@pytest.mark.gpu
def test_gpu_blocks_equal_cpu_blocks():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device: make test-gpu")
    rows, columns = random_directions(300, 64, 2), random_directions(200, 64, 3)
    on_gpu = cosine_similarity(rows, columns, device="cuda", block_size=64)
    np.testing.assert_allclose(on_gpu, cosine_similarity(rows, columns), atol=1e-5)


def test_ties_resolve_to_the_first_index_like_argmax():
    rng = np.random.default_rng(1)
    similarity = np.round(rng.uniform(size=(300, 200)), 1).astype(np.float32)  # many ties
    best = best_matches(similarity, block_size=7)
    np.testing.assert_array_equal(best["row_best"], similarity.argmax(axis=1))
    np.testing.assert_array_equal(best["column_best"], similarity.argmax(axis=0))
