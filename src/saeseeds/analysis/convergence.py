"""Were a group's SAEs still improving when training stopped, or their stability still rising?

Training records the held-out FVU at 25%, 50%, 75% and 100% of its steps (``heldout_fvu_curve``
in metrics.json). A run is still improving when its FVU fell by more than ``threshold`` (2%,
relative) over the last quarter; a group is flagged when any run is.

Stability is judged from the trajectory (:mod:`trajectory`): the group's headline statistic at
the end minus at the snapshot nearest 75% of training. It is still rising when that rise exceeds
its noise margin: the larger of 0.01 and the half-width of the rise's 95% interval (a paired
delete-one-seed jackknife, :func:`group_stats.change_of_groups`; 0.01 alone below 3 seeds). A
group is flagged when either is. An unconverged SAE says little about stability: train longer
(``trainer.max_epochs``) before trusting the numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from saeseeds.analysis.group_stats import change_of_groups, pair_matrix

IMPROVING_THRESHOLD = 0.02
STABILITY_FROM = 0.75
"""Stability's rise is measured from the snapshot nearest this fraction to the end."""
STABILITY_RISE_MARGIN = 0.01
"""The smallest rise of the headline statistic that counts, whatever its interval."""


def last_quarter_drop(metrics: dict[str, Any]) -> float | None:
    """(FVU at 75% − FVU at 100%) / FVU at 75%, or None without a curve."""
    curve = metrics.get("heldout_fvu_curve")
    if not isinstance(curve, dict):
        return None
    try:
        three_quarters, final = float(curve["0.75"]), float(curve["1"])
    except (KeyError, TypeError, ValueError):
        return None
    return (three_quarters - final) / three_quarters if three_quarters > 0 else None


def stability_rise(points: list[Any], statistic: str, confidence: float) -> dict[str, Any] | None:
    """The headline statistic's rise from the snapshot nearest 75% to the end, its margin and
    whether it is still rising; None without a snapshot (``points``: the trajectory)."""
    snapshots = [point for point in points if point.fraction < 1.0]
    ends = [point for point in points if point.fraction == 1.0]
    if not snapshots or not ends or statistic not in ends[0].statistics:
        return None
    start = min(snapshots, key=lambda point: abs(point.fraction - STABILITY_FROM))
    change = change_of_groups(
        [pair_matrix(ends[0].pairs, statistic)],
        [pair_matrix(start.pairs, statistic)],
        [1],
        statistic,
        confidence,
    )
    low, high = change["difference_ci"]
    half_width = (high - low) / 2 if np.isfinite(low) and np.isfinite(high) else 0.0
    margin = max(STABILITY_RISE_MARGIN, half_width)
    rise = float(change["difference"])
    return {
        "statistic": statistic,
        "from_fraction": start.fraction,
        "value_from": start.statistics[statistic]["value"],
        "value_to": ends[0].statistics[statistic]["value"],
        "rise": rise,
        "rise_ci": change["difference_ci"],
        "margin": margin,
        "still_rising": bool(np.isfinite(rise) and rise > margin),
    }


def convergence(
    runs: list[Any], threshold: float = IMPROVING_THRESHOLD, stability: dict | None = None
) -> dict[str, Any]:
    """Per seed the last-quarter relative FVU drop, whether any run was still improving, and the
    stability rise (:func:`stability_rise`) when there is one; ``still_improving`` flags
    either."""
    drops = {str(run.seed): last_quarter_drop(run.metrics) for run in runs}
    measured = {seed: drop for seed, drop in drops.items() if drop is not None}
    entry: dict[str, Any] = {}
    if measured:
        entry = {
            "last_quarter_relative_fvu_drop": measured,
            "threshold": threshold,
            "fvu_still_improving": any(drop > threshold for drop in measured.values()),
            "final_fvu": {str(run.seed): run.metrics.get("fvu") for run in runs},
        }
    if stability is not None:
        entry["stability"] = stability
    if entry:
        entry["still_improving"] = bool(
            entry.get("fvu_still_improving") or (stability or {}).get("still_rising")
        )
    return entry
