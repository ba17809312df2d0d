"""What ``analyze.py`` wrote, as the studies read it: summary.json, each group's condition (from
its first run's environment.json), [S, S] pair matrices, and differences between groups with
the analysis's own jackknife-t machinery (:mod:`saeseeds.analysis.group_stats`).

Fields that newer analyses add (e.g. the unstable-subspace overlap beside a control's) are read
with ``.get``: an older summary.json gives ``None``, never an error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from saeseeds import contract
from saeseeds.analysis.group_stats import contrast_of_groups, difference_of_groups, t_interval
from saeseeds.errors import DataError

CONFIDENCE = 0.95


def read_summary(analysis_dir: str | Path) -> dict[str, Any]:
    path = Path(analysis_dir) / "summary.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; run analyze.py on the sweep first.") from None
    except ValueError as error:
        raise DataError(f"{path} is not valid JSON ({error}); re-run analyze.py.") from None


def run_condition(run_dir: str | Path) -> dict[str, Any]:
    """The flat condition config of a run (its recorded config without the seed)."""
    environment = json.loads((Path(run_dir) / contract.ENVIRONMENT_FILE).read_text("utf-8"))
    flat = contract.flatten(environment.get("config") or {})
    flat.pop("seed", None)
    flat.setdefault("data.control", "none")
    flat.setdefault("model.init", "pretrained")
    return flat


def group_conditions(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{group label: flat condition config}."""
    return {label: run_condition(group["runs"][0]) for label, group in summary["groups"].items()}


class Groups:
    """The groups of one summary.json, found by their condition's values."""

    def __init__(self, summary: dict[str, Any]):
        self.summary = summary
        self.entries: dict[str, dict[str, Any]] = summary.get("groups", {})
        self.conditions = group_conditions(summary) if self.entries else {}

    def find(self, **values: Any) -> dict[str, Any] | None:
        """The one group whose condition has these values (dots written as ``__``), or None."""
        wanted = {key.replace("__", "."): value for key, value in values.items()}
        found = [
            self.entries[label]
            for label, condition in self.conditions.items()
            if all(condition.get(key) == value for key, value in wanted.items())
        ]
        return found[0] if len(found) == 1 else None

    def where(self, **values: Any) -> Groups:
        """The groups whose condition has these values (dots written as ``__``), controls
        included where they share them."""
        wanted = {key.replace("__", "."): value for key, value in values.items()}
        subset = Groups({**self.summary, "groups": {}})
        for label, condition in self.conditions.items():
            if all(condition.get(key) == value for key, value in wanted.items()):
                subset.entries[label] = self.entries[label]
                subset.conditions[label] = condition
        return subset

    def values(self, key: str) -> list[Any]:
        """The distinct values of one condition key, sorted."""
        values = {condition.get(key) for condition in self.conditions.values()}
        return sorted(values, key=lambda v: (not isinstance(v, int | float), v if
                                             isinstance(v, int | float) else str(v)))  # fmt: skip

    def condition(self, group: dict[str, Any]) -> dict[str, Any]:
        return self.conditions[group["label"]]


def statistic(group: dict[str, Any] | None, metric: str) -> dict[str, float | None]:
    """{value, ci_low, ci_high} of a group statistic (None where absent). A group-level number
    of summary.json that is no pair statistic (``beyond_geometry_fraction``) has no interval."""
    entry = (group or {}).get("statistics", {}).get(metric)
    if entry is None and isinstance((group or {}).get(metric), int | float):
        entry = {"value": group[metric]}
    return {key: (entry or {}).get(key) for key in ("value", "ci_low", "ci_high")}


def pair_matrix(group: dict[str, Any], metric: str) -> np.ndarray:  # [S, S], NaN diagonal
    seeds = list(group["seeds"])
    matrix = np.full((len(seeds), len(seeds)), np.nan)
    for pair in group.get("pairs", []):
        value = pair.get(metric)
        i, j = seeds.index(pair["seed_a"]), seeds.index(pair["seed_b"])
        matrix[i, j] = matrix[j, i] = np.nan if value is None else value
    return matrix


def difference(
    group_a: dict[str, Any], group_b: dict[str, Any], metric: str
) -> dict[str, float | list[float]]:
    """Group value of ``metric`` for a minus b, with a jackknife-t interval over seeds."""
    return difference_of_groups(
        pair_matrix(group_a, metric), pair_matrix(group_b, metric), metric, CONFIDENCE
    )


def difference_in_differences(
    a: dict[str, Any],
    b: dict[str, Any],
    control_a: dict[str, Any],
    control_b: dict[str, Any],
    metric: str,
) -> dict[str, float | list[float]]:
    """(a − b) − (control_a − control_b): whether a trend is larger than its control's. The
    four groups' jackknife standard errors add in quadrature; t on min(S) − 1 degrees."""
    matrices = [pair_matrix(group, metric) for group in (a, b, control_a, control_b)]
    result = contrast_of_groups(matrices, [1, -1, -1, 1], metric, CONFIDENCE)
    result.pop("values")
    return result


def run_metric_values(group: dict[str, Any] | None, key: str) -> list[float]:
    """One metrics.json value of each of the group's runs (those that have it)."""
    return [
        float(metrics[key])
        for metrics in (group or {}).get("run_metrics", {}).values()
        if isinstance(metrics, dict) and isinstance(metrics.get(key), int | float)
    ]


def mean_run_metric(group: dict[str, Any] | None, key: str) -> float | None:
    """Mean over the group's runs of one metrics.json value."""
    values = run_metric_values(group, key)
    return float(np.mean(values)) if values else None


def run_metric(group: dict[str, Any] | None, key: str) -> dict[str, float | None]:
    """{value, ci_low, ci_high} of one metrics.json value: the mean over the group's runs (its
    seeds) with a Student-t interval; no interval below two runs or when they agree exactly."""
    values = run_metric_values(group, key)
    if not values:
        return {"value": None, "ci_low": None, "ci_high": None}
    mean = float(np.mean(values))
    spread = float(np.std(values, ddof=1)) / np.sqrt(len(values)) if len(values) > 1 else 0.0
    (low, high), _ = t_interval(mean, spread, len(values) - 1, CONFIDENCE)
    defined = not (np.isnan(low) or np.isnan(high))
    return {"value": mean, "ci_low": low if defined else None, "ci_high": high if defined else None}
