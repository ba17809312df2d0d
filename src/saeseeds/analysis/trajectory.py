"""The stability trajectory: a group's statistics at each training snapshot, and whether a
condition's lead over its geometry control grows, holds or shrinks over the last half.

Training saves each run's folded weights at fixed fractions of its steps (``snapshots/`` with
its ``index.json``; docs/contract.md). For every fraction that all seeds of a group recorded,
the seed pairs are matched and summarised exactly as the final weights are (the same
:func:`group_stats.compute_pairs` and :func:`group_stats.group_statistics`, on the snapshot
directions; live-only matching is left out, as firing counts exist only for the final weights).
The final weights are the trajectory's last point, fraction 1. Across groups: the beyond-geometry
share and the lead over the geometry control at each fraction, and the change of the lead from
the snapshot nearest half-way to the end (:func:`group_stats.change_of_groups`). Runs without
snapshots (older folders, imports) have no trajectory, and the report says so.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open

from saeseeds import contract
from saeseeds.analysis.controls import beyond_geometry
from saeseeds.analysis.group_stats import (
    GroupPairs,
    change_of_groups,
    compute_pairs,
    difference_of_groups,
    group_statistics,
    pair_matrix,
)
from saeseeds.analysis.grouping import Group
from saeseeds.analysis.loading import RunFolder, unit_rows
from saeseeds.analysis.pair_metrics import ComputeSettings
from saeseeds.analysis.reappearance import best_match_by_seed

LEAD_FROM = 0.5
"""The lead's change is measured from the snapshot nearest this fraction to the end."""
TRAJECTORY_STATISTICS = ("decoder_median", "pwmcc", "decoder_stability@0.9", "shared", "mmcs")


@dataclass
class TrajectoryPoint:
    """A group's pairs and statistics at one fraction of training (1: the final weights)."""

    fraction: float
    pairs: GroupPairs
    statistics: dict[str, dict[str, float]]
    best_match: dict[int, np.ndarray]  # {seed: [n_features]}, as GroupReport.best_match
    step: int | None = None
    tokens_seen: int | None = None
    heldout_fvu: float | None = None
    """Mean over the seeds of the held-out FVU at this point."""
    extras: dict[str, Any] = field(default_factory=dict)
    """Filled across groups: ``beyond_geometry_fraction``, ``lead`` (over the geometry control)."""


class SnapshotError(Exception):
    """A snapshot that is listed but cannot be used; the message says why."""


def read_index(run: RunFolder) -> dict[str, dict[str, Any]]:
    """{"0.25": entry, ...} of the run's snapshots/index.json; {} without one or when unreadable."""
    path = run.path / contract.SNAPSHOTS_DIR / contract.SNAPSHOT_INDEX
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        entries = index["snapshots"] if index.get("format") == contract.SNAPSHOTS_FORMAT else []
        return {f"{float(entry['fraction']):g}": entry for entry in entries}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def common_fractions(runs: list[RunFolder]) -> tuple[list[float], str | None]:
    """The snapshot fractions every run recorded, ascending, and a note when some runs recorded
    fractions that others did not (or none at all)."""
    indexes = [read_index(run) for run in runs]
    shared = set.intersection(*(set(index) for index in indexes)) if indexes else set()
    every = set().union(*(set(index) for index in indexes)) if indexes else set()
    note = None
    if every - shared:
        lacking = [str(run.seed) for run, index in zip(runs, indexes, strict=True) if not index]
        note = (
            f"snapshots at {', '.join(sorted(every - shared, key=float))} are not in every "
            "seed's folder" + (f" (none in seed {', '.join(lacking)})" if lacking else "")
            + "; only fractions every seed has are compared"
        )  # fmt: skip
    return sorted(float(key) for key in shared), note


def snapshot_run(run: RunFolder, entry: dict[str, Any]) -> RunFolder:
    """``run`` with the directions of one snapshot (its firing counts stay the final ones)."""
    path = run.path / contract.SNAPSHOTS_DIR / str(entry.get("file"))
    try:
        with safe_open(str(path), framework="numpy") as handle:
            decoder = handle.get_tensor("W_dec")
            encoder = handle.get_tensor("W_enc")
    except (SafetensorError, OSError, ValueError) as error:
        raise SnapshotError(f"seed {run.seed}: {path.name} is unreadable ({error})") from error
    shape = (run.n_features, run.d_in)
    if decoder.shape != shape or encoder.shape != shape[::-1]:
        raise SnapshotError(f"seed {run.seed}: {path.name} does not have the run's shapes")
    if not (np.isfinite(decoder).all() and np.isfinite(encoder).all()):
        raise SnapshotError(f"seed {run.seed}: {path.name} holds NaN or infinite weights")
    return dataclasses.replace(
        run,
        decoder_directions=unit_rows(np.ascontiguousarray(decoder, dtype=np.float32)),
        encoder_directions=unit_rows(np.ascontiguousarray(encoder.T, dtype=np.float32)),
    )


def _mean(values: list[Any]) -> float | None:
    numbers = [float(value) for value in values if isinstance(value, int | float)]
    return float(np.mean(numbers)) if len(numbers) == len(values) and numbers else None


def snapshot_points(
    group: Group, cfg: Any, settings: ComputeSettings, advance: Callable[[], None]
) -> tuple[list[TrajectoryPoint], list[str]]:
    """The group at each snapshot fraction every seed recorded, and notes on what was left out;
    ``advance`` is called after each seed pair matched."""
    fractions, note = common_fractions(group.runs)
    notes = [note] if note else []
    settings = dataclasses.replace(settings, live_only=False)  # no firing counts at snapshots
    points = []
    for fraction in fractions:
        key = f"{fraction:g}"
        entries = [read_index(run)[key] for run in group.runs]
        try:
            runs = [
                snapshot_run(run, entry) for run, entry in zip(group.runs, entries, strict=True)
            ]
        except SnapshotError as error:
            notes.append(f"no point at {key}: {error}")
            for _ in range(len(group.runs) * (len(group.runs) - 1) // 2):
                advance()
            continue
        pairs = compute_pairs(runs, cfg, settings, advance)
        pairs.runs = list(group.runs)  # the same seeds: the snapshot's directions are let go
        bootstrap = cfg.bootstrap
        points.append(
            TrajectoryPoint(
                fraction=fraction,
                pairs=pairs,
                statistics=group_statistics(
                    pairs, bootstrap.n_samples, bootstrap.confidence, bootstrap.seed
                ),
                best_match=best_match_by_seed(pairs),
                step=entries[0].get("step"),
                tokens_seen=entries[0].get("tokens_seen"),
                heldout_fvu=_mean([entry.get("heldout_fvu") for entry in entries]),
            )
        )
    return points, notes


def final_point(report: Any) -> TrajectoryPoint:
    """The final weights as the trajectory's last point."""
    runs = report.group.runs
    return TrajectoryPoint(
        fraction=1.0,
        pairs=report.pairs,
        statistics=report.statistics,
        best_match=report.best_match,
        step=runs[0].metrics.get("steps"),
        tokens_seen=runs[0].metrics.get("tokens_seen"),
        heldout_fvu=_mean([run.metrics.get("fvu") for run in runs]),
    )


def nearest(points: list[TrajectoryPoint], fraction: float) -> TrajectoryPoint | None:
    """The snapshot (not the final point) nearest ``fraction``; None without snapshots."""
    snapshots = [point for point in points if point.fraction < 1.0]
    return min(snapshots, key=lambda point: abs(point.fraction - fraction), default=None)


def by_fraction(points: list[TrajectoryPoint]) -> dict[float, TrajectoryPoint]:
    return {point.fraction: point for point in points}


def attach_lead(condition: Any, control: Any, confidence: float) -> None:
    """At each fraction both groups have: the beyond-geometry share of the condition against the
    control's best matches there, and the condition's lead over the control on the headline
    statistic (jackknife-t interval); then the lead's change over the last half of training."""
    statistic = condition.headline_statistic
    controls = by_fraction(control.trajectory)
    for point in condition.trajectory:
        other = controls.get(point.fraction)
        if other is None or statistic not in other.statistics:
            continue
        share, threshold, _ = beyond_geometry(point, other)
        point.extras["beyond_geometry_fraction"] = share
        point.extras["beyond_geometry_threshold"] = threshold
        lead = difference_of_groups(
            pair_matrix(point.pairs, statistic),
            pair_matrix(other.pairs, statistic),
            statistic,
            confidence,
        )
        point.extras["lead"] = {"control": control.label, **lead}
    condition.extras["trajectory"] = trajectory_summary(condition)
    change = lead_change(condition, control, confidence)
    if change is not None:
        condition.extras["trajectory"]["lead_change"] = change


def lead_change(condition: Any, control: Any, confidence: float) -> dict[str, Any] | None:
    """(lead at the end) − (lead at the snapshot nearest half-way), with its interval: growing
    when the interval is above 0, shrinking when below, else flat. None without that snapshot
    in both groups."""
    statistic = condition.headline_statistic
    start = nearest(condition.trajectory, LEAD_FROM)
    if start is None:
        return None
    controls = by_fraction(control.trajectory)
    if start.fraction not in controls or 1.0 not in controls:
        return None
    end = by_fraction(condition.trajectory)[1.0]
    matrices = [
        [pair_matrix(point.pairs, statistic) for point in (end, start)],
        [
            pair_matrix(point.pairs, statistic)
            for point in (controls[1.0], controls[start.fraction])
        ],
    ]
    change = change_of_groups(
        [matrices[0][0], matrices[1][0]],
        [matrices[0][1], matrices[1][1]],
        [1, -1],
        statistic,
        confidence,
    )
    low, high = change["difference_ci"]
    trend = "flat"
    if np.isfinite(low) and low > 0:
        trend = "growing"
    elif np.isfinite(high) and high < 0:
        trend = "shrinking"
    leads = [point.extras.get("lead", {}).get("difference") for point in (start, end)]
    return {
        "statistic": statistic,
        "control": control.label,
        "from_fraction": start.fraction,
        "lead_from": leads[0],
        "lead_to": leads[1],
        "change": change["difference"],
        "change_ci": change["difference_ci"],
        "p_value": change["p_value"],
        "standard_error": change["standard_error"],
        "trend": trend,
        "sentence": lead_sentence(trend, start.fraction, leads, change),
    }


def lead_sentence(trend: str, start: float, leads: list[Any], change: dict[str, Any]) -> str:
    """The lead's change in words that fit its sign: a lead (condition above the control at both
    points), a gap (below at both), or a difference that changed sign."""
    low, high = change["difference_ci"]
    interval = (
        f"[{low:+.3f}, {high:+.3f}]" if np.isfinite(low) else "no interval: fewer than 3 seeds"
    )
    flat = "no change distinguishable from 0"
    if all(lead is not None and lead >= 0 for lead in leads):
        words = {"growing": "is growing", "shrinking": "is shrinking", "flat": f"is flat ({flat})"}
        opening = f"Its lead over the geometry control {words[trend]}"
    elif all(lead is not None and lead < 0 for lead in leads):
        # The difference rising means the condition closes on the control from below.
        words = {"growing": "is narrowing", "shrinking": "is widening", "flat": f"holds ({flat})"}
        opening = f"It trails the geometry control, and the gap {words[trend]}"
    else:
        words = {"growing": "rose", "shrinking": "fell", "flat": f"did not move ({flat})"}
        opening = f"Its difference from the geometry control (condition − control) {words[trend]}"
    return (
        f"{opening} over the last half of training: "
        f"{leads[0]:+.3f} at {start:.0%} of training, {leads[1]:+.3f} at the end (change "
        f"{change['difference']:+.3f} {interval})."
    )


def _entry(statistics: dict[str, dict[str, float]], name: str) -> dict[str, float] | None:
    return statistics.get(name)


def trajectory_summary(report: Any) -> dict[str, Any]:
    """extras["trajectory"]: one row per point (fraction, step, tokens, held-out FVU, the
    statistics with their intervals, beyond-geometry share, lead over the geometry control)."""
    previous = report.extras.get("trajectory", {})
    rows = []
    stability = stability_name(report)
    for point in report.trajectory:
        row: dict[str, Any] = {
            "fraction": point.fraction,
            "step": point.step,
            "tokens_seen": point.tokens_seen,
            "heldout_fvu": point.heldout_fvu,
        }
        for name in (*TRAJECTORY_STATISTICS, stability):
            entry = _entry(point.statistics, name)
            if entry is not None:
                row[name] = entry
        row.update(point.extras)
        rows.append(row)
    summary = {
        "statistic": report.headline_statistic,
        "stability_statistic": stability,
        "rows": rows,
        "notes": previous.get("notes", []),
        "cost": snapshot_cost(report.group.runs),
    }
    if len(report.trajectory) < 2:
        summary["unavailable"] = previous.get("unavailable") or (
            "these runs have no snapshots (snapshots/index.json): folders written before "
            "snapshots existed, imports, or trainer.snapshots=false"
        )
    return summary


def snapshot_cost(runs: list[RunFolder]) -> dict[str, float] | None:
    """What the snapshots cost training, per run (mean over the seeds that recorded it, from
    metrics.json): bytes, seconds, and those seconds as a share of the fit's."""
    costs = [run.metrics.get("snapshots") for run in runs]
    costs = [cost for cost in costs if isinstance(cost, dict) and cost.get("count")]
    if not costs:
        return None
    fit_times = [float(run.metrics.get("fit_time_s") or 0.0) for run in runs]
    return {
        "count": float(np.mean([cost["count"] for cost in costs])),
        "bytes": float(np.mean([cost["bytes"] for cost in costs])),
        "seconds": float(np.mean([cost["seconds"] for cost in costs])),
        "share_of_fit": float(np.mean([cost["seconds"] for cost in costs]))
        / max(float(np.mean(fit_times)), 1e-9),
    }


def stability_name(report: Any) -> str:
    """stability@0.9 where the analysis computes it, else at its highest threshold."""
    names = [name for name in report.statistics if name.startswith("decoder_stability@")]
    if "decoder_stability@0.9" in names or not names:
        return "decoder_stability@0.9"
    return max(names, key=lambda name: float(name.split("@")[1]))
