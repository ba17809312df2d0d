"""All analyses of one analysable group, in the order they depend on each other.

Pairs first (the only expensive step; a progress bar advances per pair), then the functional
agreement of matched pairs, group statistics with bootstrap intervals, reappearance, overlap vs
seeds, firing-frequency correlations, subspaces, the trajectory over the training snapshots,
convergence, the random baseline and the example pairs. What needs a condition's geometry
control is added once every group is analysed (:func:`compare_across_groups`). With argmax
matching (no assignment) the analyses that need one are not run, and are listed as such. Writing
the results is :mod:`report`'s job.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from saeseeds.analysis.baselines import Baseline, random_baseline
from saeseeds.analysis.config import resolve_matching
from saeseeds.analysis.convergence import convergence, stability_rise
from saeseeds.analysis.errors import AnalysisConfigError
from saeseeds.analysis.examples import example_pairs
from saeseeds.analysis.functional import (
    PairAgreement,
    compare_with_control,
    functional_summary,
    measure_group,
)
from saeseeds.analysis.group_stats import (
    GroupPairs,
    compute_pairs,
    frequency_points,
    group_statistics,
    spearman,
)
from saeseeds.analysis.grouping import Group
from saeseeds.analysis.imported import (
    NEEDS_HELDOUT_STATS,
    heldout_note,
    seeds_without_heldout_stats,
)
from saeseeds.analysis.pair_metrics import (
    ARGMAX,
    HUNGARIAN,
    ComputeSettings,
)
from saeseeds.analysis.reappearance import (
    FeatureVersions,
    best_match_by_seed,
    feature_versions,
    overlap_vs_seeds,
    reappearance_by_seed,
    reappearance_summary,
)
from saeseeds.analysis.redundancy import nearest_by_seed, redundancy
from saeseeds.analysis.similarity import available_memory_bytes, matrix_bytes
from saeseeds.analysis.subspaces import unstable_bases, unstable_subspace_overlap
from saeseeds.analysis.trajectory import (
    TrajectoryPoint,
    attach_lead,
    common_fractions,
    final_point,
    snapshot_points,
    trajectory_summary,
)

HEADLINE = {HUNGARIAN: "decoder_median", ARGMAX: "mmcs"}
"""The group statistic a condition is judged on, per matching mode."""


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
    matching: str = HUNGARIAN
    """``hungarian`` or ``argmax`` (:func:`config.resolve_matching`)."""
    subspace_bases: dict[int, np.ndarray] = field(default_factory=dict)
    """{seed: principal directions of its unstable features [d_in, ≤ d_in]}."""
    versions: FeatureVersions | None = None
    """The first seed's features, their best matches in every seed and the cosines between them."""
    nearest_neighbour: dict[int, np.ndarray] = field(default_factory=dict)
    """{seed: [n_features]}: nearest other live feature's decoder cosine in the same dictionary
    (NaN for dead features); computed with metrics.redundancy."""
    trajectory: list[TrajectoryPoint] = field(default_factory=list)
    """The group at each training snapshot and, last, at the end (fraction 1); with
    metrics.trajectory."""
    agreements: dict[tuple[int, int], PairAgreement] = field(default_factory=dict)
    """Per seed pair with held-out codes: its matched pairs' activation correlations."""

    @property
    def label(self) -> str:
        return self.group.label

    @property
    def headline_statistic(self) -> str:
        """decoder_median with Hungarian matching, mmcs with argmax."""
        return HEADLINE[self.matching]

    @property
    def headline(self) -> float:
        return self.statistics[self.headline_statistic]["value"]


def not_computed(matching: str, cfg: Any) -> dict[str, list[str]]:
    """What argmax matching leaves out: the pair statistics Hungarian matching would have given,
    the group results that need an assignment and features.csv's matched_* columns."""
    if matching == HUNGARIAN:
        return {"statistics": [], "results": [], "features_csv_columns": []}
    encoder, live = bool(cfg.metrics.encoder), bool(cfg.live_only)
    prefixes = ["decoder_"] + (["live_decoder_"] if live else [])
    if encoder:
        prefixes += ["encoder_"] + (["live_encoder_"] if live else [])
    names = [
        f"{prefix}{name}"
        for prefix in prefixes
        for name in ["median", "mean"] + [f"stability@{tau:g}" for tau in cfg.thresholds]
    ]
    names += ["pwmcc", "n_matched"] + (["n_live_a", "n_live_b", "live_n_matched"] if live else [])
    if encoder:
        names += ["shared", "agreement"] + (["live_shared", "live_agreement"] if live else [])
    switches = {
        "overlap_vs_seeds": cfg.metrics.overlap,
        "matched_cosine_vs_firing_frequency": cfg.metrics.frequency,
        "functional_agreement": cfg.metrics.functional,
        "examples": True,
    }
    return {
        "statistics": names,
        "results": [name for name, enabled in switches.items() if enabled],
        "features_csv_columns": ["matched_feature_seedS", "matched_cosine_seedS"],
    }


def check_hungarian_fits(groups: list[Group], cfg: Any) -> None:
    """Refuse, before any work, a Hungarian matching whose n² matrix exceeds available memory."""
    for group in groups:
        n_features = group.runs[0].n_features
        if resolve_matching(cfg.matching, n_features, cfg.argmax_above) == HUNGARIAN:
            _check_fits(group.label, n_features)


def _check_fits(label: str, n_features: int) -> None:
    needed, available = matrix_bytes(n_features, n_features), available_memory_bytes()
    if available is not None and needed > available:
        raise AnalysisConfigError(
            f"Group {label}: Hungarian matching of {n_features} features needs a "
            f"{needed / 2**30:.1f} GiB similarity matrix, and {available / 2**30:.1f} GiB of "
            "memory is available. Use matching=argmax (MMCS and reappearance without an "
            f"assignment), or matching=auto with argmax_above below {n_features}."
        )


def analyse_group(
    group: Group, cfg: Any, settings: ComputeSettings, advance: Callable[[], None]
) -> GroupReport:
    """Every enabled stability metric (docs/metrics.md) for one group."""
    matching = resolve_matching(cfg.matching, group.runs[0].n_features, cfg.argmax_above)
    without_stats = seeds_without_heldout_stats(group.runs)  # imports without --activations
    live_only = settings.live_only and not without_stats
    settings = dataclasses.replace(settings, matching=matching, live_only=live_only)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    pairs = compute_pairs(group.runs, cfg, settings, advance)
    timings["pairs_s"] = time.perf_counter() - start
    for pair in pairs.pairs.values():
        for key, value in pair.timings.items():
            timings[key] = timings.get(key, 0.0) + value

    metrics = cfg.metrics
    assigned = matching == HUNGARIAN
    start = time.perf_counter()
    measured = measure_group(pairs) if metrics.functional and assigned else None
    statistics = group_statistics(
        pairs, cfg.bootstrap.n_samples, cfg.bootstrap.confidence, cfg.bootstrap.seed
    )
    report = GroupReport(group, pairs, statistics, timings=timings, matching=matching)
    report.extras["matching"] = {
        "mode": matching,
        "requested": str(cfg.matching),
        "argmax_above": int(cfg.argmax_above),
        "headline_statistic": report.headline_statistic,
        "not_computed": not_computed(matching, cfg),
    }
    if without_stats:
        report.extras["heldout_statistics"] = {
            "seeds_without": without_stats,
            "not_computed": list(NEEDS_HELDOUT_STATS),
        }
        if heldout_note(without_stats) not in group.notes:
            group.notes.append(heldout_note(without_stats))
    report.best_match = best_match_by_seed(pairs)
    report.versions = feature_versions(pairs)
    if metrics.reappearance:
        report.reappearance = reappearance_by_seed(pairs, cfg.reappearance.threshold)
        report.extras["reappearance"] = reappearance_summary(
            pairs, report.reappearance, cfg.reappearance.epsilon
        )
    if metrics.overlap and assigned:
        report.extras["overlap_vs_seeds"] = overlap_vs_seeds(pairs, cfg.shared_threshold)
    if metrics.frequency and assigned and not without_stats:
        frequencies, cosines = frequency_points(pairs)
        report.extras["matched_cosine_vs_firing_frequency"] = spearman(frequencies, cosines)
    if metrics.subspaces:
        unstable = {seed: p <= cfg.reappearance.epsilon for seed, p in report.reappearance.items()}
        report.subspace_bases = unstable_bases(pairs, unstable)
        report.extras["subspaces"] = unstable_subspace_overlap(
            pairs, unstable, cfg.subspace.max_rank, report.subspace_bases
        )
    if metrics.redundancy:
        report.nearest_neighbour = nearest_by_seed(
            pairs, block_size=settings.block_size, device=settings.device
        )
        report.extras["redundancy"] = redundancy(
            pairs, cfg.duplicate_threshold, cfg.shared_threshold, nearest=report.nearest_neighbour
        )
    if metrics.functional:
        report.agreements, report.extras["functional"] = functional_summary(
            report, measured, cfg.reappearance.epsilon
        )
    timings["group_statistics_s"] = time.perf_counter() - start

    if metrics.trajectory:
        start = time.perf_counter()
        points, notes = snapshot_points(group, cfg, settings, advance)
        report.trajectory = [*points, final_point(report)]
        report.extras["trajectory"] = {"notes": notes}
        report.extras["trajectory"] = trajectory_summary(report)
        timings["trajectory_s"] = time.perf_counter() - start
    rise = stability_rise(report.trajectory, report.headline_statistic, cfg.bootstrap.confidence)
    report.extras["convergence"] = convergence(group.runs, stability=rise)

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
        statistic = report.headline_statistic
        report.extras["baseline"] = {
            "chance": report.baseline.chance(),
            "statistic": statistic,
            "p_value": report.baseline.p_value(report.headline, statistic),
            "n_samples": len(report.baseline.samples),
            "null_values": report.baseline.null_values(statistic).tolist(),
        }
        timings["baseline_s"] = time.perf_counter() - start
    if assigned and not without_stats:
        report.examples = example_pairs(pairs, report.headline, cfg.report.examples_per_feature)
    return report


def compare_across_groups(reports: list[GroupReport], confidence: float) -> None:
    """What needs a condition's geometry control (found by :func:`controls.attach_controls`):
    the trajectory's beyond-geometry share and lead at each fraction, and the control's
    functional agreement as the baseline."""
    by_label = {report.label: report for report in reports}
    for report in reports:
        entry = report.extras.get("controls", {}).get("gaussian")
        if entry is None:
            continue
        control = by_label[entry["label"]]
        if len(report.trajectory) > 1 and len(control.trajectory) > 1:  # snapshots in both
            attach_lead(report, control, confidence)
        compare_with_control(report, control, confidence)


def pairs_to_match(group: Group, cfg: Any) -> int:
    """The seed pairs :func:`analyse_group` matches: once for the final weights, and once per
    snapshot every seed recorded (with metrics.trajectory)."""
    pairs = len(group.runs) * (len(group.runs) - 1) // 2
    snapshots = len(common_fractions(group.runs)[0]) if cfg.metrics.trajectory else 0
    return pairs * (1 + snapshots)
