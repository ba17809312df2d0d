"""Pair statistics on dictionaries whose matched cosines are known by construction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from saeseeds.analysis.loading import RunFolder
from saeseeds.analysis.pair_metrics import ComputeSettings, compare_pair, pair_statistics

SETTINGS = ComputeSettings(solver="lapjv", block_size=4)


def run(seed: int, decoder: np.ndarray, encoder: np.ndarray | None = None, fire=None) -> RunFolder:
    n_features = decoder.shape[0]
    return RunFolder(
        path=Path(f"seed{seed}"),
        seed=seed,
        cfg={},
        comparable_config={},
        decoder_directions=decoder.astype(np.float32),
        encoder_directions=(decoder if encoder is None else encoder).astype(np.float32),
        fire_counts=np.full(n_features, 5) if fire is None else np.asarray(fire),
        n_tokens=100,
    )


def rotated(angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows e_i and rows cos θ_i e_i + sin θ_i e_{n+i}: cosine of row i with row i is cos θ_i,
    and every other pair is orthogonal."""
    n = len(angles)
    base = np.eye(2 * n)[:n]  # [n, 2n]
    turned = np.cos(angles)[:, None] * base + np.sin(angles)[:, None] * np.eye(2 * n)[n:]
    return base, turned


def test_matched_cosines_equal_known_rotation_angles():
    angles = np.deg2rad(np.array([0, 10, 20, 30, 40, 50, 60, 70, 80, 5, 15]))
    base, turned = rotated(angles)
    permutation = np.random.default_rng(0).permutation(len(angles))
    pair = compare_pair(run(1, base), run(2, turned[permutation]), SETTINGS)
    np.testing.assert_array_equal(pair.decoder.columns, np.argsort(permutation))
    np.testing.assert_allclose(pair.decoder.cosines, np.cos(angles), atol=1e-6)

    stats = pair_statistics(pair, [0.7, 0.9], shared_threshold=0.7)
    cosines = np.cos(angles)
    assert stats["decoder_median"] == pytest.approx(np.median(cosines), abs=1e-6)
    assert stats["decoder_mean"] == pytest.approx(cosines.mean(), abs=1e-6)
    assert stats["decoder_stability@0.7"] == pytest.approx(np.mean(cosines >= 0.7))
    assert stats["decoder_stability@0.9"] == pytest.approx(np.mean(cosines >= 0.9))
    # Every other pair is orthogonal, so each row maximum is the matched cosine.
    assert stats["mmcs"] == pytest.approx(cosines.mean(), abs=1e-6)


def test_shared_and_agreement_combine_decoder_and_encoder():
    decoder_angles = np.deg2rad(np.array([0, 10, 20, 30, 40, 50, 60, 70]))
    encoder_angles = np.deg2rad(np.array([50, 10, 0, 0, 30, 20, 10, 5]))
    decoder_a, decoder_b = rotated(decoder_angles)
    encoder_a, encoder_b = rotated(encoder_angles)
    swap = np.array([1, 0, 2, 3, 4, 5, 6, 7])  # the encoder partners of rows 0 and 1 swap
    encoder_b = encoder_b[swap]
    pair = compare_pair(run(1, decoder_a, encoder_a), run(2, decoder_b, encoder_b), SETTINGS)
    stats = pair_statistics(pair, [0.7], shared_threshold=0.7)
    c_dec, c_enc = np.cos(decoder_angles), np.cos(encoder_angles)
    assert stats["shared"] == pytest.approx(np.mean((c_dec > 0.7) & (c_enc > 0.7)))
    assert stats["agreement"] == pytest.approx(6 / 8)
    assert stats["encoder_median"] == pytest.approx(np.median(c_enc), abs=1e-6)


def test_live_only_matching_is_rectangular_with_matched_pair_denominators():
    angles = np.deg2rad(np.array([5, 10, 15, 20, 25, 30, 35, 40, 60, 80]))
    base, turned = rotated(angles)
    fire_a = np.array([0, 0, 0, 3, 3, 3, 3, 3, 3, 3])  # 7 live
    fire_b = np.array([3, 3, 3, 3, 3, 0, 3, 3, 3, 3])  # 9 live
    pair = compare_pair(run(1, base, fire=fire_a), run(2, turned, fire=fire_b), SETTINGS)
    live = pair.decoder_live
    assert (pair.n_live_a, pair.n_live_b) == (7, 9)
    assert len(live.rows) == 7  # min(7, 9) matched pairs
    np.testing.assert_array_equal(live.rows, np.arange(3, 10))
    assert set(live.columns.tolist()) <= {0, 1, 2, 3, 4, 6, 7, 8, 9}
    # Row 5's partner is dead in b, so it is matched to an orthogonal live feature.
    expected = np.cos(angles[3:]).copy()
    expected[2] = 0.0
    np.testing.assert_allclose(live.cosines, expected, atol=1e-6)

    stats = pair_statistics(pair, [0.7, 0.9], shared_threshold=0.7)
    assert stats["live_n_matched"] == 7
    assert stats["live_decoder_stability@0.7"] == pytest.approx(np.sum(expected >= 0.7) / 7)
    assert stats["live_decoder_stability@0.9"] == pytest.approx(np.sum(expected >= 0.9) / 7)
    assert stats["live_decoder_median"] == pytest.approx(np.median(expected), abs=1e-6)
    assert stats["live_shared"] == pytest.approx(np.sum(expected > 0.7) / 7)
    # The full matching still pairs every feature with its rotated copy.
    np.testing.assert_allclose(pair.decoder.cosines, np.cos(angles), atol=1e-6)


def test_scipy_and_lapjv_give_the_same_live_only_statistics():
    angles = np.deg2rad(np.linspace(0, 85, 12))
    base, turned = rotated(angles)
    fire_a = np.array([0, 3] * 6)
    fire_b = np.array([3, 3, 0] * 4)
    results = [
        pair_statistics(
            compare_pair(
                run(1, base, fire=fire_a),
                run(2, turned, fire=fire_b),
                ComputeSettings(solver=solver, block_size=5),
            ),
            [0.7],
            0.7,
        )
        for solver in ("lapjv", "scipy")
    ]
    for name in ("live_decoder_mean", "decoder_mean", "live_shared", "agreement"):
        assert results[0][name] == pytest.approx(results[1][name], abs=1e-6)


def test_decoder_solve_in_a_worker_process_gives_the_sequential_result():
    rng = np.random.default_rng(0)
    unit = lambda m: m / np.linalg.norm(m, axis=1, keepdims=True)  # noqa: E731
    decoder_a, encoder_a = unit(rng.normal(size=(40, 8))), unit(rng.normal(size=(40, 8)))
    decoder_b = unit(decoder_a[rng.permutation(40)] + 0.3 * rng.normal(size=(40, 8)))
    encoder_b = unit(rng.normal(size=(40, 8)))
    fire = np.array([0, 4] * 20)  # half dead: live-only matchings too
    runs = run(1, decoder_a, encoder_a, fire), run(2, decoder_b, encoder_b, fire[::-1])
    sequential = compare_pair(*runs, ComputeSettings(block_size=7))
    overlapped = compare_pair(*runs, ComputeSettings(block_size=7, background_min_features=1))
    assert "overlapped_s" in overlapped.timings and "overlapped_s" not in sequential.timings
    for name in ("decoder", "encoder", "decoder_live", "encoder_live"):
        expected, got = getattr(sequential, name), getattr(overlapped, name)
        np.testing.assert_array_equal(got.rows, expected.rows)
        np.testing.assert_array_equal(got.columns, expected.columns)
        np.testing.assert_array_equal(got.cosines, expected.cosines)
    for key in sequential.best:
        np.testing.assert_array_equal(overlapped.best[key], sequential.best[key])
