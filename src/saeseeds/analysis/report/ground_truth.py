"""The report's ground-truth section: per group, the recovery of a synthetic world's dictionary and,
with a feature hierarchy, its parents and children recovered and its children absorbed.

It reads the ``gt_*`` values the trainer recorded in each run's metrics.json (defined in
docs/synthetic.md) and averages them over the group's seeds; groups whose runs have none (real
activations, imports, controls) get no row, and with no row anywhere the section is absent
(report.html renders the same table). It computes nothing from weights.
"""

from __future__ import annotations

import math
from typing import Any

from saeseeds.analysis.report.markdown_sections import table

# metrics.json key -> (column title, shown as a share?)
COLUMNS = {
    "gt_recovered": ("features recovered", True),
    "gt_parents_recovered": ("parents recovered", True),
    "gt_children_recovered": ("children recovered", True),
    "gt_absorbed_children": ("absorbed children", False),
    "gt_absorbed_children_share": ("absorbed share", True),
}
HIERARCHY_KEYS = tuple(key for key in COLUMNS if key != "gt_recovered")
NOTE = (
    "Recovered: some decoder row has cosine ≥ 0.9 with the true direction. A child is absorbed "
    "when it is not recovered and some decoder row has cosine ≥ 0.9 with its parent's direction "
    "plus its own (docs/synthetic.md). Mean over seeds, with the seeds' range."
)


def _values(run_metrics: list[Any], key: str) -> list[float]:
    values = [metrics.get(key) for metrics in run_metrics if isinstance(metrics, dict)]
    return [
        float(value)
        for value in values
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ]


def ground_truth_summary(run_metrics: list[Any]) -> dict[str, dict[str, Any]]:
    """{metric: {"mean", "min", "max", "n_seeds"}} of the ``gt_*`` values in a group's
    metrics.json contents; ``{}`` when they hold none."""
    summary = {}
    for key in COLUMNS:
        values = _values(run_metrics, key)
        if values:
            summary[key] = {
                "mean": sum(values) / len(values),
                "min": min(values),
                "max": max(values),
                "n_seeds": len(values),
            }
    return summary


def group_metrics(reports: list[Any]) -> list[tuple[str, list[Any]]]:
    """(label, each run's metrics.json content) of analysed groups."""
    return [(report.label, [run.metrics for run in report.group.runs]) for report in reports]


def _cell(entry: dict[str, Any] | None, share: bool) -> str:
    if entry is None:
        return "–"

    def shown(value: float) -> str:
        return f"{value:.0%}" if share else f"{value:.1f}"

    if entry["min"] == entry["max"]:
        return shown(entry["mean"])
    return f"{shown(entry['mean'])} ({shown(entry['min'])}–{shown(entry['max'])})"


def ground_truth_table(
    groups: list[tuple[str, list[Any]]],
) -> tuple[list[str], list[list[str]]]:
    """(header, one row per group with a ground truth) from (label, its runs' metrics.json
    contents); no rows when none has one. The hierarchy's columns appear when some group has a
    hierarchy."""
    summaries = [(label, ground_truth_summary(metrics)) for label, metrics in groups]
    summaries = [(label, summary) for label, summary in summaries if summary]
    hierarchy = any(key in summary for _, summary in summaries for key in HIERARCHY_KEYS)
    keys = list(COLUMNS) if hierarchy else ["gt_recovered"]
    header = ["group", "seeds"] + [COLUMNS[key][0] for key in keys]
    rows = [
        [label, str(max(entry["n_seeds"] for entry in summary.values()))]
        + [_cell(summary.get(key), COLUMNS[key][1]) for key in keys]
        for label, summary in summaries
    ]
    return header, rows


def ground_truth_lines(reports: list[Any]) -> list[str]:
    """report.md's "Ground-truth recovery" section; empty without a row."""
    header, rows = ground_truth_table(group_metrics(reports))
    if not rows:
        return []
    return ["## Ground-truth recovery", "", NOTE, "", *table(header, rows), ""]
