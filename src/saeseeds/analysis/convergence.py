"""Were a group's SAEs still improving when training stopped?

Training records the held-out FVU at 25%, 50%, 75% and 100% of its steps (``heldout_fvu_curve``
in metrics.json). A run is still improving when its FVU fell by more than ``threshold`` (2%,
relative) over the last quarter; a group is flagged when any run is. An unconverged SAE says
little about stability: train longer (``trainer.max_epochs``) before trusting the numbers.
"""

from __future__ import annotations

from typing import Any

IMPROVING_THRESHOLD = 0.02


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


def convergence(runs: list[Any], threshold: float = IMPROVING_THRESHOLD) -> dict[str, Any]:
    """Per seed the last-quarter relative FVU drop, and whether any run was still improving."""
    drops = {str(run.seed): last_quarter_drop(run.metrics) for run in runs}
    measured = {seed: drop for seed, drop in drops.items() if drop is not None}
    if not measured:
        return {}
    return {
        "last_quarter_relative_fvu_drop": measured,
        "threshold": threshold,
        "still_improving": any(drop > threshold for drop in measured.values()),
        "final_fvu": {str(run.seed): run.metrics.get("fvu") for run in runs},
    }
