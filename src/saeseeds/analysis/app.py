"""The analysis app from config to report folder: discover runs, group them, analyse each group
(progress bar over seed pairs), write report.md / report.html / summary.json / pairs.csv /
features.csv and the figures, log to W&B, print the report folder.

It raises :class:`AnalysisError` (non-zero exit) only when nothing can be analysed; otherwise bad
runs and groups are listed and the rest is analysed. ``analyze.py`` is a thin Hydra entry to
:func:`run_analysis`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from saeseeds.analysis.config import validate_config
from saeseeds.analysis.controls import attach_controls
from saeseeds.analysis.discovery import Discovery, discover
from saeseeds.analysis.errors import AnalysisError
from saeseeds.analysis.group_analysis import (
    GroupReport,
    analyse_group,
    check_hungarian_fits,
    compare_across_groups,
    pairs_to_match,
)
from saeseeds.analysis.grouping import Group, group_runs
from saeseeds.analysis.pair_metrics import ComputeSettings
from saeseeds.analysis.report.data import (
    build_summary,
    write_features_csv,
    write_pairs_csv,
    write_summary,
    write_text,
)
from saeseeds.analysis.report.html import render_page
from saeseeds.analysis.report.markdown import render_report
from saeseeds.analysis.similarity import select_device

log = logging.getLogger(__name__)


@dataclass
class AnalysisOutcome:
    """What a caller (the CLI, a test, the benchmark) needs back."""

    report_dir: Path
    reports: list[GroupReport]
    summary: dict[str, Any]


def _nothing_to_analyse(discovery: Discovery, groups: list[Group]) -> AnalysisError:
    roots = ", ".join(str(root) for root in discovery.roots)
    if not discovery.runs and not discovery.skipped:
        return AnalysisError(
            f"No run folders (folders with cfg.json or .hydra/) under {roots}. "
            "Point sweep_dir at a multirun folder written by train.py."
        )
    lines = [f"Nothing to analyse in {roots}:"]
    lines += [f"  - {entry.path}: {entry.status}: {entry.reason}" for entry in discovery.skipped]
    if not discovery.runs:
        lines.append("  No complete, readable run of contract version 1 was found.")
    lines += [f"  - group {group.label}: {group.problem}" for group in groups]
    return AnalysisError("\n".join(lines))


def _announce_problems(skipped: list, not_analysed: list[Group]) -> None:
    for entry in skipped:
        log.warning("Run not used: %s (%s: %s)", entry.path, entry.status, entry.reason)
    for group in not_analysed:
        log.warning("Group %s not analysed: %s", group.label, group.problem)


def compute_settings(cfg: Any) -> ComputeSettings:
    return ComputeSettings(
        solver=str(cfg.solver),
        device=select_device(cfg.device),
        block_size=int(cfg.block_size),
        encoder=bool(cfg.metrics.encoder),
        live_only=bool(cfg.live_only),
    )


def _plain_config(cfg: Any) -> dict[str, Any]:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)  # type: ignore[return-value]
    return dict(cfg)


def _write_report(
    cfg: Any,
    discovery: Discovery,
    reports: list[GroupReport],
    skipped: list,
    not_analysed: list[Group],
    report_dir: Path,
) -> dict[str, dict[str, Path]]:
    """Figures, pairs.csv, features.csv and report.md; returns the figures' paths."""
    report_dir.mkdir(parents=True, exist_ok=True)
    figures: dict[str, dict[str, Path]] = {}
    if cfg.report.figures:
        from saeseeds.analysis.report.plots import write_figures  # matplotlib only when drawing

        figures = write_figures(reports, report_dir / "figures")
    write_pairs_csv(reports, report_dir / "pairs.csv")
    write_features_csv(reports, report_dir / "features.csv")
    markdown = render_report(
        discovery.roots, reports, not_analysed, skipped, figures, report_dir, list(cfg.thresholds)
    )
    write_text(report_dir / "report.md", markdown)
    page = render_page(discovery.roots, reports, figures, cfg.report.examples_per_feature)
    write_text(report_dir / "report.html", page)
    return figures


def _log_to_wandb(
    cfg: Any,
    config: dict,
    reports: list[GroupReport],
    figures: dict,
    roots: list[Path],
    report_dir: Path,
) -> dict[str, str] | None:
    try:
        from saeseeds.analysis.report.wandb_run import log_to_wandb

        return log_to_wandb(cfg.logger, config, reports, figures, roots, report_dir)
    except Exception as error:  # noqa: BLE001 - W&B must never cost the report
        log.warning("W&B logging failed (%s); the report folder is complete.", error)
        return None


def run_analysis(cfg: Any, report_dir: Path) -> AnalysisOutcome:
    """Analyse the runs named by ``cfg.sweep_dir`` and write the report into ``report_dir``."""
    started = time.perf_counter()
    timings: dict[str, float] = {}
    validate_config(cfg)
    discovery = discover(cfg.sweep_dir, Path(cfg.outputs_root))
    groups = group_runs(discovery.runs, discovery.skipped)
    skipped = discovery.skipped + [entry for group in groups for entry in group.duplicates]
    analysable = [group for group in groups if group.analysable]
    not_analysed = [group for group in groups if not group.analysable]
    if not analysable:
        raise _nothing_to_analyse(discovery, not_analysed)
    _announce_problems(skipped, not_analysed)
    timings["discovery_s"] = time.perf_counter() - started

    check_hungarian_fits(analysable, cfg)
    settings = compute_settings(cfg)
    n_pairs = sum(pairs_to_match(group, cfg) for group in analysable)
    start = time.perf_counter()
    with tqdm(total=n_pairs, desc="seed pairs", unit="pair", disable=not cfg.progress) as bar:
        reports = [
            analyse_group(group, cfg, settings, lambda: bar.update(1)) for group in analysable
        ]
    attach_controls(reports, cfg.bootstrap.confidence, cfg.subspace.max_rank)
    compare_across_groups(reports, cfg.bootstrap.confidence)
    timings["analysis_s"] = time.perf_counter() - start

    start = time.perf_counter()
    figures = _write_report(cfg, discovery, reports, skipped, not_analysed, report_dir)
    timings["report_s"] = time.perf_counter() - start

    config = _plain_config(cfg)
    wandb_run = None
    if cfg.logger.enabled:
        start = time.perf_counter()
        wandb_run = _log_to_wandb(cfg, config, reports, figures, discovery.roots, report_dir)
        timings["wandb_s"] = time.perf_counter() - start
    timings["total_s"] = time.perf_counter() - started
    summary = build_summary(
        discovery.roots,
        sum(len(g.runs) for g in analysable),
        skipped,
        not_analysed,
        reports,
        figures,
        report_dir,
        config,
        {**timings, "device": settings.device},
    )
    summary["matching"] = {
        "requested": str(cfg.matching),
        "argmax_above": int(cfg.argmax_above),
        "by_group": {report.label: report.matching for report in reports},
    }
    summary["wandb"] = wandb_run
    for report in reports:  # what the group's report.md section says above its numbers
        entry = summary["groups"][report.label]
        entry["notes"] = list(report.group.notes)
        entry["data_identity"] = report.group.data_identity
    write_summary(summary, report_dir / "summary.json")
    print(f"Report folder: {report_dir}")
    return AnalysisOutcome(report_dir, reports, summary)
