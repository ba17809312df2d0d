"""Logging an analysis as a W&B run: job_type="analysis", in the sweep's group.

Summary scalars (group statistics with intervals, chance level, p-values, reappearance shares),
tables (pair metrics, the published-style group table, and per group the feature table of
report.html with every version's contexts, as ``features/<group>``) and the report's figures.
The mode comes from :func:`saeseeds.wandb_utils.resolve_wandb_mode` (offline without an API
key). A W&B failure is reported and never loses the report folder, which is written before and
independently.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from saeseeds.analysis.group_analysis import GroupReport
from saeseeds.analysis.report.feature_table import feature_tables, wandb_columns, wandb_rows
from saeseeds.tracking import offline_hint, resolve_wandb_mode

log = logging.getLogger(__name__)


def sweep_group(reports: list[GroupReport], roots: list[Path]) -> str:
    """The sweep's W&B group: from environment.json where the trainer logged one, else named
    from the multirun folder as the trainer names it (DATE_TIME)."""
    groups = [run.wandb_group for report in reports for run in report.group.runs if run.wandb_group]
    if groups:
        return max(set(groups), key=groups.count)
    root = roots[0]
    return f"{root.parent.name}_{root.name}" if len(roots) == 1 else "analysis"


def summary_scalars(reports: list[GroupReport]) -> dict[str, float]:
    scalars: dict[str, float] = {}
    for report in reports:
        prefix = report.label
        for metric, entry in report.statistics.items():
            for key, value in entry.items():
                suffix = "" if key == "value" else f"_{key}"
                scalars[f"{prefix}/{metric}{suffix}"] = value
        baseline = report.extras.get("baseline")
        if baseline:
            scalars[f"{prefix}/p_value"] = baseline["p_value"]
            statistic = baseline["statistic"]
            scalars[f"{prefix}/chance_{statistic}"] = baseline["chance"][statistic]
        for name, control in report.extras.get("controls", {}).items():
            key = "median" if "median" in control else control["statistic"]
            scalars[f"{prefix}/controls/{name}/{key}"] = control["value"]
            scalars[f"{prefix}/controls/{name}/difference"] = control["difference"]
            scalars[f"{prefix}/controls/{name}/p_value"] = control["p_value"]
            subspace = control.get("subspace_overlap")
            if subspace and subspace["difference"] is not None:
                scalars[f"{prefix}/controls/{name}/subspace_overlap_difference"] = subspace[
                    "difference"
                ]
        if "beyond_geometry_fraction" in report.extras:
            scalars[f"{prefix}/beyond_geometry_fraction"] = report.extras[
                "beyond_geometry_fraction"
            ]
        reappearance = report.extras.get("reappearance")
        if reappearance:
            scalars[f"{prefix}/stable_share"] = reappearance["stable_share"]
            scalars[f"{prefix}/unstable_share"] = reappearance["unstable_share"]
        redundancy = report.extras.get("redundancy")
        if redundancy and redundancy["near_duplicate_share"] is not None:
            scalars[f"{prefix}/near_duplicate_share"] = redundancy["near_duplicate_share"]
    return scalars


def _examples_per_feature(config: dict[str, Any]) -> int:
    return int(config.get("report", {}).get("examples_per_feature", 5))


def feature_payload(wandb: Any, reports: list[GroupReport], per_feature: int) -> dict[str, Any]:
    """{"features/<group>": wandb.Table}: the report page's feature table of each group. A table
    logged to a run keeps at most ``wandb.Table.MAX_ROWS`` rows; beyond that the rows with the
    highest best-match cosine are kept, and the log says so (features.csv has every feature)."""
    payload = {}
    for table in feature_tables(reports):
        rows = wandb_rows(table, per_feature)
        limit = wandb.Table.MAX_ROWS
        if len(rows) > limit:
            best = wandb_columns(table).index("best_match_mean")
            rows = sorted(rows, key=lambda row: -row[best])[:limit]
            log.warning(
                "W&B feature table of %s: the %d features with the highest best-match cosine of "
                "%d (W&B's row limit); report.html and features.csv have them all.",
                table.label, limit, table.n_features,
            )  # fmt: skip
        payload[f"features/{table.label}"] = wandb.Table(columns=wandb_columns(table), data=rows)
    return payload


def log_to_wandb(
    logger_cfg: Any,
    config: dict[str, Any],
    reports: list[GroupReport],
    figures: dict[str, dict[str, Path]],
    roots: list[Path],
    report_dir: Path,
) -> dict[str, str] | None:
    """Create, fill and finish the analysis run; returns where it went, or None when disabled."""
    mode = resolve_wandb_mode(logger_cfg.mode)
    if mode == "disabled":
        return None
    import wandb

    group = logger_cfg.group or sweep_group(reports, roots)
    run = wandb.init(
        project=logger_cfg.project,
        entity=logger_cfg.entity,
        group=group,
        job_type="analysis",
        name=logger_cfg.name or f"analysis-{group}",
        tags=list(logger_cfg.tags),
        config=config,
        dir=str(report_dir),
        mode=mode,
    )
    try:
        run.summary.update(summary_scalars(reports))
        pair_rows = [
            [report.label, seed_a, seed_b, metric, float(value)]
            for report in reports
            for (seed_a, seed_b), stats in report.pairs.statistics.items()
            for metric, value in stats.items()
        ]
        payload: dict[str, Any] = {
            "pairs": wandb.Table(
                columns=["group", "seed_a", "seed_b", "metric", "value"], data=pair_rows
            )
        }
        for label, paths in figures.items():
            for name, path in paths.items():
                payload[f"figures/{label}/{name}"] = wandb.Image(str(path))
        payload["groups"] = wandb.Table(
            columns=["condition", "metric", "value", "ci_low", "ci_high"],
            data=[
                [report.label, metric, entry["value"], entry["ci_low"], entry["ci_high"]]
                for report in reports
                for metric, entry in report.statistics.items()
            ],
        )
        payload.update(feature_payload(wandb, reports, _examples_per_feature(config)))
        run.log(payload)
    finally:
        run.finish()
    if mode == "offline":
        log.info(offline_hint(str(report_dir)))
    return {"mode": mode, "group": group, "name": run.name, "id": run.id, "project": run.project}
