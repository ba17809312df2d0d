"""The report's machine-readable files: summary.json, pairs.csv and features.csv.

- summary.json: inputs, runs used and skipped (with reasons), per group the statistics with
  bootstrap intervals, chance level and p-value, reappearance, overlap, subspaces, examples,
  figures, timings and, with a synthetic ground truth, its recovery averaged over seeds.
- pairs.csv: one row per seed pair and metric (long format).
- features.csv: one row per feature per run: firing frequency, reappearance, and per other seed
  the Hungarian partner with its cosine (empty with argmax matching) and the best (argmax) partner
  with its cosine.
Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from saeseeds.analysis.group_analysis import GroupReport
from saeseeds.analysis.grouping import Group
from saeseeds.analysis.loading import SkippedRun
from saeseeds.analysis.pair_metrics import HUNGARIAN
from saeseeds.analysis.report.ground_truth import ground_truth_summary

SUMMARY_FORMAT = "saeseeds.analysis_summary/1"


def json_safe(value: Any) -> Any:
    """NaN/inf -> None, numpy scalars and arrays -> Python, paths -> str, recursively."""
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def skipped_entry(skipped: SkippedRun) -> dict[str, str]:
    return {"path": str(skipped.path), "status": skipped.status, "reason": skipped.reason}


def group_entry(report: GroupReport, figures: dict[str, Path], report_dir: Path) -> dict[str, Any]:
    run = report.group.runs[0]
    run_metrics = [r.metrics for r in report.group.runs]
    return {
        "label": report.label,
        "seeds": report.pairs.seeds,
        "runs": [str(r.path) for r in report.group.runs],
        "n_features": run.n_features,
        "d_in": run.d_in,
        "architecture": run.cfg.get("architecture"),
        "k": run.cfg.get("k"),
        "hook_name": run.hook_name,
        "model_name": run.cfg.get("model_name"),
        "statistics": report.statistics,
        "pairs": [
            {"seed_a": a, "seed_b": b, **stats} for (a, b), stats in report.pairs.statistics.items()
        ],
        **report.extras,
        "examples": report.examples,
        "figures": {name: str(path.relative_to(report_dir)) for name, path in figures.items()},
        "timings": report.timings,
        "run_metrics": {str(r.seed): r.metrics for r in report.group.runs},
        # Present only where the runs recorded a synthetic ground truth's gt_* metrics.
        **({"ground_truth": truth} if (truth := ground_truth_summary(run_metrics)) else {}),
    }


def build_summary(
    roots: list[Path],
    runs_used: int,
    skipped: list[SkippedRun],
    not_analysed: list[Group],
    reports: list[GroupReport],
    figures: dict[str, dict[str, Path]],
    report_dir: Path,
    config: dict[str, Any],
    timings: dict[str, float],
) -> dict[str, Any]:
    return json_safe(
        {
            "format": SUMMARY_FORMAT,
            "inputs": [str(root) for root in roots],
            "report_dir": str(report_dir),
            "n_runs_used": runs_used,
            "skipped_runs": [skipped_entry(entry) for entry in skipped],
            "groups_not_analysed": [
                {"label": g.label, "seeds": g.seeds, "problem": g.problem} for g in not_analysed
            ],
            "groups": {
                report.label: group_entry(report, figures.get(report.label, {}), report_dir)
                for report in reports
            },
            "figures": {
                name: str(path.relative_to(report_dir))
                for name, path in figures.get("all", {}).items()
            },
            "config": config,
            "timings": timings,
        }
    )


def write_text(path: Path, text: str) -> Path:
    """Atomic write (temp file + rename) through saeseeds.io_utils."""
    # saeseeds.io imports torch (~1.5 s, ~300 MB); load it only once there is a file to write.
    from saeseeds.io import atomic_write_text

    return atomic_write_text(path, text)


def _csv_text(header: list[str], rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def write_pairs_csv(reports: list[GroupReport], path: Path) -> Path:
    rows = []
    for report in reports:
        for (seed_a, seed_b), stats in report.pairs.statistics.items():
            for metric, value in stats.items():
                rows.append([report.label, seed_a, seed_b, metric, f"{value:.6g}"])
    return write_text(path, _csv_text(["group", "seed_a", "seed_b", "metric", "value"], rows))


def _feature_rows(report: GroupReport, all_seeds: list[int]) -> list[list[Any]]:
    rows: list[list[Any]] = []
    pairs = report.pairs
    for run in pairs.runs:
        columns: list[np.ndarray] = []
        for other in all_seeds:
            if other == run.seed or other not in pairs.seeds:
                columns.extend([np.full(run.n_features, "", dtype=object)] * 4)
                continue
            if report.matching == HUNGARIAN:
                partner, cosine = pairs.matched(run.seed, other)
                columns.extend([partner, np.round(cosine, 5)])
            else:  # argmax matching: no assignment, so no matched partner
                columns.extend([np.full(run.n_features, "", dtype=object)] * 2)
            best = pairs.best_partner(run.seed, other)
            columns.extend([best, np.round(pairs.max_cosine(run.seed, other), 5)])
        p = report.reappearance.get(run.seed)
        best_match = report.best_match.get(run.seed)
        beyond = report.beyond_geometry.get(run.seed)
        stats = run.fire_counts is not None  # else an import without held-out statistics
        frequency = run.firing_frequency if stats else None
        for feature in range(run.n_features):
            reappearance = "" if p is None else round(float(p[feature]), 5)
            best = "" if best_match is None else round(float(best_match[feature]), 5)
            beyond_geometry = "" if beyond is None else int(beyond[feature])
            rows.append(
                [
                    report.label,
                    run.seed,
                    feature,
                    int(run.fire_counts[feature]) if stats else "",
                    f"{frequency[feature]:.6g}" if stats else "",
                    int(run.live_mask[feature]) if stats else "",
                    reappearance,
                    best,
                    beyond_geometry,
                ]
                + [column[feature] for column in columns]
            )
    return rows


def write_features_csv(reports: list[GroupReport], path: Path) -> Path:
    all_seeds = sorted({seed for report in reports for seed in report.pairs.seeds})
    header = ["group", "seed", "feature", "fire_count", "firing_frequency", "live", "reappearance"]
    header += ["best_match_mean", "beyond_geometry"]
    for seed in all_seeds:
        header += [
            f"matched_feature_seed{seed}",
            f"matched_cosine_seed{seed}",
            f"best_feature_seed{seed}",
            f"best_cosine_seed{seed}",
        ]
    rows = [row for report in reports for row in _feature_rows(report, all_seeds)]
    return write_text(path, _csv_text(header, rows))


def write_summary(summary: dict[str, Any], path: Path) -> Path:
    from saeseeds.io import atomic_write_json

    return atomic_write_json(path, summary)
