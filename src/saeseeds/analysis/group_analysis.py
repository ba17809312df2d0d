"""All analyses of one analysable group, in the order they depend on each other.

Pairs first (the only expensive step; a progress bar advances per pair), then group statistics
with bootstrap intervals, reappearance, overlap vs seeds, firing-frequency correlations,
subspaces, the random baseline and the example pairs. Writing the results is :mod:`report`'s job.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np

from saeseeds.analysis.baselines import Baseline, random_baseline
from saeseeds.analysis.convergence import convergence
from saeseeds.analysis.examples import example_pairs
from saeseeds.analysis.group_stats import (
    GroupPairs,
    frequency_points,
    group_statistics,
    spearman,
)
from saeseeds.analysis.grouping import Group
from saeseeds.analysis.pair_metrics import ComputeSettings, compare_pair, pair_statistics
from saeseeds.analysis.reappearance import (
    best_match_by_seed,
    overlap_vs_seeds,
    reappearance_by_seed,
    reappearance_summary,
)
from saeseeds.analysis.subspaces import unstable_subspace_overlap


@dataclass
class GroupReport:
    """The results of one group, ready for the report, the figures and W&B."""

    group: Group
    pairs: GroupPairs
    statistics: dict[str, dict[str, float]]
    reappearance: dict[int, np.ndarray] = field(default_factory=dict)
    """{seed: p_i [n_features]}"""
    best_match: dict[int, np.ndarray] = field(default_factory=dict)
    """{seed: mean over other seeds of max_j C_dec[i, j], [n_features]}"""
    beyond_geometry: dict[int, np.ndarray] = field(default_factory=dict)
    """{seed: bool [n_features]}: best match above the geometry control's 95th percentile."""
    extras: dict[str, Any] = field(default_factory=dict)
    """reappearance summary, overlap curve, frequency correlation, subspaces, p-value, ..."""
    baseline: Baseline | None = None
    examples: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.group.label

    @property
    def median(self) -> float:
        return self.statistics["decoder_median"]["value"]


def compute_pairs(
    group: Group, cfg: Any, settings: ComputeSettings, advance: Callable[[], None]
) -> GroupPairs:
    """Match every seed pair of the group; ``advance`` is called after each pair."""
    group_pairs = GroupPairs(runs=group.runs)
    for run_a, run_b in combinations(group.runs, 2):
        pair = compare_pair(run_a, run_b, settings)
        key = (run_a.seed, run_b.seed)
        group_pairs.pairs[key] = pair
        group_pairs.statistics[key] = pair_statistics(
            pair, list(cfg.thresholds), cfg.shared_threshold
        )
        advance()
    return group_pairs


def analyse_group(
    group: Group, cfg: Any, settings: ComputeSettings, advance: Callable[[], None]
) -> GroupReport:
    """Every enabled metric of DESIGN.md's "Stability metrics" for one group."""
    timings: dict[str, float] = {}
    start = time.perf_counter()
    pairs = compute_pairs(group, cfg, settings, advance)
    timings["pairs_s"] = time.perf_counter() - start
    for pair in pairs.pairs.values():
        for key, value in pair.timings.items():
            timings[key] = timings.get(key, 0.0) + value

    start = time.perf_counter()
    statistics = group_statistics(
        pairs, cfg.bootstrap.n_samples, cfg.bootstrap.confidence, cfg.bootstrap.seed
    )
    report = GroupReport(group, pairs, statistics, timings=timings)
    report.best_match = best_match_by_seed(pairs)
    report.extras["convergence"] = convergence(group.runs)
    metrics = cfg.metrics
    if metrics.reappearance:
        report.reappearance = reappearance_by_seed(pairs, cfg.reappearance.threshold)
        report.extras["reappearance"] = reappearance_summary(
            pairs, report.reappearance, cfg.reappearance.epsilon
        )
    if metrics.overlap:
        report.extras["overlap_vs_seeds"] = overlap_vs_seeds(pairs, cfg.shared_threshold)
    if metrics.frequency:
        frequencies, cosines = frequency_points(pairs)
        report.extras["matched_cosine_vs_firing_frequency"] = spearman(frequencies, cosines)
    if metrics.subspaces:
        unstable = {seed: p <= cfg.reappearance.epsilon for seed, p in report.reappearance.items()}
        report.extras["subspaces"] = unstable_subspace_overlap(
            pairs, unstable, cfg.subspace.max_rank
        )
    timings["group_statistics_s"] = time.perf_counter() - start

    if metrics.baseline:
        start = time.perf_counter()
        report.baseline = random_baseline(
            group.runs[0].n_features,
            group.runs[0].d_in,
            len(group.runs),
            cfg.baseline.n_samples,
            settings,
            list(cfg.thresholds),
            cfg.shared_threshold,
            cfg.baseline.seed,
        )
        report.extras["baseline"] = {
            "chance": report.baseline.chance(),
            "p_value": report.baseline.p_value(report.median),
            "n_samples": len(report.baseline.samples),
            "null_medians": report.baseline.null_medians().tolist(),
        }
        timings["baseline_s"] = time.perf_counter() - start
    report.examples = example_pairs(pairs, report.median, cfg.report.examples_per_feature)
    return report
