"""Statistics over the seed pairs of one group, with seed-bootstrap 95% intervals.

The pairs themselves are matched here (:func:`compute_pairs`, for the final weights and for each
training snapshot alike).

Group value of a pair metric: the median over pairs for ``*median`` metrics (the "median
best-match cosine" of the multi-seed study is the median of pair medians), the mean over pairs
for everything else (mean cosine, stability fractions, shared, agreement, MMCS). The interval
resamples seeds with replacement and recomputes the value on the pairs of distinct resampled
seeds. For a difference between two groups (a condition and its control) the delete-one-seed
jackknife standard error and Student's t interval live here too, for any [S, S] matrix of pair
values, and the change of a group value between two points of training (a paired jackknife,
:func:`change_of_groups`). Also here: the oriented views of a pair (seed a's features against
seed b) that the per-feature analyses use, and matched similarity vs firing frequency.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
from scipy import stats as scipy_stats
from scipy.stats import spearmanr

from saeseeds.analysis.loading import RunFolder
from saeseeds.analysis.pair_metrics import (
    ComputeSettings,
    PairResult,
    compare_pair,
    cosines_by_column,
    cosines_by_row,
    pair_statistics,
    shared_masks,
)


@dataclass
class GroupPairs:
    """The pairs of one group, keyed by (seed_a, seed_b) with seed_a < seed_b."""

    runs: list[RunFolder]
    pairs: dict[tuple[int, int], PairResult] = field(default_factory=dict)
    statistics: dict[tuple[int, int], dict[str, float]] = field(default_factory=dict)

    @property
    def seeds(self) -> list[int]:
        return [run.seed for run in self.runs]

    def run(self, seed: int) -> RunFolder:
        return next(run for run in self.runs if run.seed == seed)

    def _pair(self, seed: int, other: int) -> tuple[PairResult, bool]:
        """The stored pair and whether ``seed`` is its row side."""
        if (seed, other) in self.pairs:
            return self.pairs[(seed, other)], True
        return self.pairs[(other, seed)], False

    def max_cosine(self, seed: int, other: int) -> np.ndarray:  # [n_features of seed]
        """max_j C_dec[i, j] for each feature i of ``seed`` against ``other``."""
        pair, forward = self._pair(seed, other)
        return pair.best["row_max" if forward else "column_max"]

    def best_partner(self, seed: int, other: int) -> np.ndarray:  # [n_features of seed]
        pair, forward = self._pair(seed, other)
        return pair.best["row_best" if forward else "column_best"]

    def matched(self, seed: int, other: int) -> tuple[np.ndarray, np.ndarray]:
        """Hungarian decoder partner (-1 if unmatched) and matched cosine per feature of seed."""
        pair, forward = self._pair(seed, other)
        if pair.decoder is None:
            raise ValueError("no assignment with argmax matching; use best_partner/max_cosine")
        n_features = pair.n_features_a if forward else pair.n_features_b
        partner = np.full(n_features, -1, dtype=np.int64)
        own, theirs = (
            (pair.decoder.rows, pair.decoder.columns)
            if forward
            else (pair.decoder.columns, pair.decoder.rows)
        )
        partner[own] = theirs
        cosines = (
            cosines_by_row(pair.decoder, n_features)
            if forward
            else cosines_by_column(pair.decoder, n_features)
        )
        return partner, cosines

    def shared(self, seed: int, other: int, threshold: float) -> np.ndarray:  # [n_features] bool
        pair, forward = self._pair(seed, other)
        shared_a, shared_b = shared_masks(pair, threshold)
        return shared_a if forward else shared_b


def compute_pairs(
    runs: list[RunFolder], cfg: Any, settings: ComputeSettings, advance: Callable[[], None]
) -> GroupPairs:
    """Match every seed pair of a group's runs (sorted by seed) and compute each pair's
    statistics; ``advance`` is called after each pair."""
    group_pairs = GroupPairs(runs=runs)
    for run_a, run_b in combinations(runs, 2):
        pair = compare_pair(run_a, run_b, settings)
        key = (run_a.seed, run_b.seed)
        group_pairs.pairs[key] = pair
        group_pairs.statistics[key] = pair_statistics(
            pair, list(cfg.thresholds), cfg.shared_threshold
        )
        advance()
    return group_pairs


def aggregate(values: np.ndarray, metric: str) -> float:
    """Group value of one pair metric: median of pair medians, mean otherwise."""
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan")
    return float(np.median(values) if metric.endswith("median") else np.mean(values))


def pair_matrix(group: GroupPairs, metric: str) -> np.ndarray:  # [S, S], NaN on the diagonal
    seeds = group.seeds
    matrix = np.full((len(seeds), len(seeds)), np.nan)
    for (seed_a, seed_b), stats in group.statistics.items():
        i, j = seeds.index(seed_a), seeds.index(seed_b)
        matrix[i, j] = matrix[j, i] = stats.get(metric, np.nan)
    return matrix


def leave_one_out(matrix: np.ndarray, metric: str) -> np.ndarray:  # [S]
    """The group value of ``metric`` with each seed left out in turn."""
    n_seeds = matrix.shape[0]
    values = []
    for left_out in range(n_seeds):
        kept = [seed for seed in range(n_seeds) if seed != left_out]
        pairs = np.array([matrix[a, b] for a, b in combinations(kept, 2)])
        values.append(aggregate(pairs, metric))
    return np.array(values)


def _jackknife_spread(values: np.ndarray) -> float:
    """SE² = (S−1)/S · Σ_i (θ_(−i) − θ̄)² from the S leave-one-out values; NaN below 3 seeds."""
    n_seeds = len(values)
    if n_seeds < 3:
        return float("nan")
    return float(np.sqrt((n_seeds - 1) / n_seeds * np.sum((values - values.mean()) ** 2)))


def jackknife_se(matrix: np.ndarray, metric: str) -> float:
    """Delete-one-seed jackknife standard error of a group value, from its [S, S] pair matrix:
    SE² = (S−1)/S · Σ_i (θ_(−i) − θ̄)². NaN below 3 seeds."""
    return _jackknife_spread(leave_one_out(matrix, metric))


def change_of_groups(
    late: list[np.ndarray],
    early: list[np.ndarray],
    signs: list[int],
    metric: str,
    confidence: float,
) -> dict[str, float | list[float]]:
    """Σ sign·(value at ``late`` − value at ``early``) over groups, each given by two [S, S] pair
    matrices of the same seeds (e.g. the final weights and a snapshot). Each group's standard
    error is the jackknife of its paired change (a seed left out of both at once, so what the
    two share cancels); the groups' add in quadrature; t interval on min(S) − 1 degrees."""
    changes, variances = [], []
    for late_matrix, early_matrix in zip(late, early, strict=True):
        upper = np.triu_indices(late_matrix.shape[0], k=1)
        changes.append(
            aggregate(late_matrix[upper], metric) - aggregate(early_matrix[upper], metric)
        )
        paired = leave_one_out(late_matrix, metric) - leave_one_out(early_matrix, metric)
        variances.append(_jackknife_spread(paired) ** 2)
    value = float(sum(sign * change for sign, change in zip(signs, changes, strict=True)))
    standard_error = float(np.sqrt(sum(variances)))
    dof = min(matrix.shape[0] for matrix in late) - 1
    interval, p_value = t_interval(value, standard_error, dof, confidence)
    return {
        "changes": changes,
        "difference": value,
        "difference_ci": interval,
        "p_value": p_value,
        "standard_error": standard_error,
        "dof": dof,
    }


def t_interval(
    difference: float, standard_error: float, dof: int, confidence: float
) -> tuple[list[float], float]:
    """(interval, two-sided p-value) of a difference with Student's t on ``dof`` degrees."""
    if not (dof >= 1 and standard_error > 0):
        return [float("nan"), float("nan")], float("nan")
    half_width = scipy_stats.t.ppf(0.5 + confidence / 2, dof) * standard_error
    p_value = 2 * scipy_stats.t.sf(abs(difference) / standard_error, dof)
    return [difference - half_width, difference + half_width], float(p_value)


def contrast_of_groups(
    matrices: list[np.ndarray], signs: list[int], metric: str, confidence: float
) -> dict[str, float | list[float]]:
    """Σ sign·(group value of ``metric``) over groups given by their [S, S] pair matrices, with
    the jackknife SEs added in quadrature and a t interval on min(S) − 1 degrees."""
    values = [aggregate(m[np.triu_indices(m.shape[0], k=1)], metric) for m in matrices]
    value = float(sum(sign * v for sign, v in zip(signs, values, strict=True)))
    standard_error = float(np.sqrt(sum(jackknife_se(m, metric) ** 2 for m in matrices)))
    dof = min(m.shape[0] for m in matrices) - 1
    interval, p_value = t_interval(value, standard_error, dof, confidence)
    return {
        "values": values,
        "difference": value,
        "difference_ci": interval,
        "p_value": p_value,
        "standard_error": standard_error,
    }


def difference_of_groups(
    matrix_a: np.ndarray, matrix_b: np.ndarray, metric: str, confidence: float
) -> dict[str, float | list[float]]:
    """Group value of ``metric`` for a minus b, from their [S, S] pair matrices."""
    result = contrast_of_groups([matrix_a, matrix_b], [1, -1], metric, confidence)
    value_a, value_b = result.pop("values")
    return {"value_a": value_a, "value_b": value_b, **result}


def outcome(interval: list[float]) -> str:
    """``beats`` (interval above 0), ``is below`` or ``is not distinguishable from``."""
    low, high = interval
    if np.isnan(low) or low <= 0 <= high:
        return "is not distinguishable from"
    return "beats" if low > 0 else "is below"


def bootstrap_values(
    matrix: np.ndarray, metric: str, n_samples: int, rng: np.random.Generator
) -> np.ndarray:  # [n_samples], NaN where a resample has no pair of distinct seeds
    """Group values of a pair metric when the seeds are resampled with replacement."""
    n_seeds = matrix.shape[0]
    upper = np.triu_indices(n_seeds, k=1)
    values = np.full(n_samples, np.nan)
    for index in range(n_samples):
        chosen = rng.integers(0, n_seeds, size=n_seeds)
        # Pairs of the same seed drawn twice have no value (NaN) and drop out in aggregate().
        values[index] = aggregate(matrix[np.ix_(chosen, chosen)][upper], metric)
    return values


def percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def bootstrap_interval(
    matrix: np.ndarray, metric: str, n_samples: int, confidence: float, rng: np.random.Generator
) -> tuple[float, float]:
    """Percentile interval of the group value when the seeds are resampled with replacement."""
    return percentile_interval(bootstrap_values(matrix, metric, n_samples, rng), confidence)


def group_statistics(
    group: GroupPairs, n_bootstrap: int, confidence: float, seed: int
) -> dict[str, dict[str, float]]:
    """{metric: {value, ci_low, ci_high}} for every pair metric of the group."""
    metrics = sorted({name for stats in group.statistics.values() for name in stats})
    rng = np.random.default_rng(seed)
    summary = {}
    for metric in metrics:
        matrix = pair_matrix(group, metric)
        value = aggregate(matrix[np.triu_indices(len(group.seeds), k=1)], metric)
        low, high = (
            bootstrap_interval(matrix, metric, n_bootstrap, confidence, rng)
            if n_bootstrap > 0
            else (float("nan"), float("nan"))
        )
        summary[metric] = {"value": value, "ci_low": low, "ci_high": high}
    return summary


def seed_matrix(group: GroupPairs, metric: str) -> np.ndarray:
    """[S, S] matrix of a pair metric for the heatmaps (diagonal 1 for cosines and fractions)."""
    matrix = pair_matrix(group, metric)
    np.fill_diagonal(matrix, 1.0)
    return matrix


def spearman(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Spearman rank correlation, NaN when either side is constant or too short."""
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    if len(x) < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return {"rho": float("nan"), "p_value": float("nan"), "n": int(len(x))}
    result = spearmanr(x, y)
    return {"rho": float(result.statistic), "p_value": float(result.pvalue), "n": int(len(x))}


def frequency_points(group: GroupPairs) -> tuple[np.ndarray, np.ndarray]:
    """(firing frequency, matched decoder cosine) for each feature of each seed vs each other."""
    frequencies, cosines = [], []
    for seed, other in combinations(group.seeds, 2):
        for own, partner in ((seed, other), (other, seed)):
            frequencies.append(group.run(own).firing_frequency)
            cosines.append(group.matched(own, partner)[1].astype(np.float64))
    return np.concatenate(frequencies), np.concatenate(cosines)
