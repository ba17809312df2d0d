"""The report's ground-truth table: the seeds' mean and range per group with recorded gt_*
metrics, the hierarchy's columns only when some group has a hierarchy, and nothing otherwise."""

from __future__ import annotations

from types import SimpleNamespace

from saeseeds.analysis.report.ground_truth import (
    ground_truth_lines,
    ground_truth_table,
    group_metrics,
)
from saeseeds.analysis.report.html import ground_truth_section


def report(label: str, *metrics: dict) -> SimpleNamespace:
    runs = [SimpleNamespace(metrics=entry) for entry in metrics]
    return SimpleNamespace(label=label, group=SimpleNamespace(runs=runs))


HIERARCHICAL = {"gt_parents_recovered": 0.75, "gt_children_recovered": 0.5}


def test_groups_with_a_hierarchy_show_parents_children_and_absorbed_children():
    reports = [
        report(
            "sae=topk",
            {
                "fvu": 0.1,
                "gt_recovered": 0.5,
                **HIERARCHICAL,
                "gt_absorbed_children": 6,
                "gt_absorbed_children_share": 0.375,
            },
            {
                "fvu": 0.1,
                "gt_recovered": 0.25,
                **HIERARCHICAL,
                "gt_absorbed_children": 10,
                "gt_absorbed_children_share": 0.625,
            },
        ),  # fmt: skip
        report("flat world", {"gt_recovered": 1.0}, {"gt_recovered": 1.0}),
        report("real activations", {"fvu": 0.2}, {"fvu": 0.3}),
    ]
    header, rows = ground_truth_table(group_metrics(reports))
    assert header == [
        "group", "seeds", "features recovered", "parents recovered", "children recovered",
        "absorbed children", "absorbed share",
    ]  # fmt: skip
    assert rows == [
        ["sae=topk", "2", "38% (25%–50%)", "75%", "50%", "8.0 (6.0–10.0)", "50% (38%–62%)"],
        ["flat world", "2", "100%", "–", "–", "–", "–"],
    ]
    assert "## Ground-truth recovery" in ground_truth_lines(reports)
    assert "<td>8.0 (6.0–10.0)</td>" in ground_truth_section(reports)


def test_without_hierarchy_one_column_and_without_ground_truth_nothing():
    header, rows = ground_truth_table([("flat", [{"gt_recovered": 0.9}])])
    assert header == ["group", "seeds", "features recovered"] and rows == [["flat", "1", "90%"]]
    real = [report("real", {"fvu": 0.2, "gt_recovered": float("nan")}), report("bad", None)]
    assert ground_truth_lines(real) == [] and ground_truth_section(real) == ""
