"""The Hydra callback of ``train.py`` (``hydra.callbacks`` in ``conf/hydra/default.yaml``): checks
that the output folder can be written and the launcher is installed before Hydra creates
anything, sets each job's torch CPU threads (``threads``), and ends a multirun with a one-line
summary.

Hydra cannot resume a multirun itself, and its basic sweeper stops reporting at the first failed
job, so each job handles its own folder (:mod:`saeseeds.training.job`) and never raises into
Hydra; it leaves a record in ``<sweep>/.saeseeds_jobs/``. ``on_multirun_end`` runs in the
launching process under every launcher (basic, joblib, submitit), reads the records of this
launch, prints ``N jobs: a skipped, b resumed, c started, d failed``, lists the failures, and
exits with status 1 when any job failed. ``on_job_start`` also runs inside the launcher's worker
processes (joblib, submitit), so ``threads`` is applied where the job trains; its values,
swept ones included, are checked before the first job. This module imports neither torch nor
Lightning (torch only to set ``threads``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from saeseeds import contract
from saeseeds.config.validation import thread_count
from saeseeds.errors import ConfigError
from saeseeds.io import read_json, writable_folder_problem

log = logging.getLogger("saeseeds")

# Set in the launching process and again as each job starts (a launcher's worker that outlives
# one launch, as joblib's do, keeps the environment of the first); jobs put it in their records.
LAUNCH_ENV = "SAESEEDS_LAUNCH_ID"
OUTCOMES = ("skipped", "resumed", "started", "failed")


def check_output_folder(folder: str, override: str) -> None:
    """Exit with one line when ``folder`` cannot be created or written."""
    problem = writable_folder_problem(folder)
    if problem is not None:
        print(
            f"error: cannot write the output folder {folder}: {problem}. Choose a writable "
            f"folder with {override}=PATH.",
            file=sys.stderr,
        )
        raise SystemExit(2)


def fail(message: str) -> None:
    """Exit with one line, before Hydra has created any folder or started any job."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def swept_values(config: DictConfig, key: str) -> list[Any]:
    """The values a sweep gives ``key`` (``key=1,2``, ``key=range(1,3)``); none if not swept.
    In a multirun's config the swept keys still hold their unswept value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    task = OmegaConf.select(config, "hydra.overrides.task", default=None) or []
    values: list[Any] = []
    for override in OverridesParser.create().parse_overrides(overrides=list(task)):
        if override.key_or_group == key and override.is_sweep_override():
            if override.is_discrete_sweep():
                values.extend(override.sweep_iterator())
    return values


def check_threads(config: DictConfig) -> None:
    for value in [config.get("threads"), *swept_values(config, "threads")]:
        try:
            thread_count(value)
        except ConfigError as error:
            fail(str(error))


def apply_threads(value: Any) -> None:
    """Set torch's intra-op CPU threads for this process (a job, or a launcher's worker)."""
    threads = thread_count(value)
    if threads is None:
        return
    import torch

    torch.set_num_threads(threads)
    log.info("torch CPU threads: %d (threads=%d)", torch.get_num_threads(), threads)


def check_launcher(config: DictConfig) -> None:
    """A launcher chosen with hydra/launcher=NAME whose plugin is not installed fails here, with
    the command that installs it, instead of in Hydra's instantiation with a traceback."""
    target = OmegaConf.select(config, "hydra.launcher._target_", default=None)
    if not isinstance(target, str) or "." not in target:
        return
    module = target.rpartition(".")[0]
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        choice = OmegaConf.select(config, "hydra.runtime.choices", default={}) or {}
        plugin = module.split(".")[1] if module.startswith("hydra_plugins.") else module
        fail(
            f"hydra/launcher={choice.get('hydra/launcher', '?')} needs the package "
            f"{plugin.replace('_', '-')}, which is not installed ({target} cannot be imported). "
            "Install the launchers with: pip install -e '.[launchers]'"
        )


def launch_records(sweep_dir: Path, launch: str | None, since: float) -> list[dict[str, Any]]:
    """The job records written by this launch: by its id, or, for a record without one (a
    launcher whose jobs do not inherit the environment), by time. A record of another launch is
    never counted, however recent: two launches into one sweep folder a second apart (a study's
    two passes) would otherwise each count the other's last jobs."""
    records = []
    for path in sorted((sweep_dir / contract.JOB_RECORDS_DIR).glob("*.json")):
        try:
            record = read_json(path)
            recent = path.stat().st_mtime >= since
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict):
            continue
        if record.get("launch") == launch or (record.get("launch") is None and recent):
            records.append(record)
    return records


def summarise(records: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """The summary line and one line per failed job."""
    counts: Counter[str] = Counter()
    failures = []
    for record in records:
        outcome = record.get("outcome")
        if outcome not in OUTCOMES:  # "running": the job's process died without an outcome
            outcome = "failed"
            record["reason"] = record.get("reason") or (
                f"no outcome recorded (the job was {record.get('outcome')}: killed or crashed)"
            )
        counts[outcome] += 1
        if outcome == "failed":
            failures.append(f"  failed: {record.get('job')}: {record.get('reason')}")
    line = f"{len(records)} jobs: " + ", ".join(f"{counts[name]} {name}" for name in OUTCOMES)
    return line, failures


class SweepCallback(Callback):
    """Checks before any job, threads in every job, summary and exit status after a multirun."""

    def __init__(self) -> None:
        self.launch: str | None = None
        self.started = 0.0

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_threads(config)
        check_output_folder(str(config.hydra.run.dir), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_threads(config)
        check_launcher(config)
        check_output_folder(str(config.hydra.sweep.dir), "hydra.sweep.dir")
        self.launch = uuid.uuid4().hex
        self.started = time.time() - 1.0
        os.environ[LAUNCH_ENV] = self.launch

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        # This callback travels to the launcher's workers with the job: a worker kept from an
        # earlier launch in this process (joblib's are, for a while) still has that launch's id
        # in its environment, and its jobs would be left out of this launch's summary.
        if self.launch is not None:
            os.environ[LAUNCH_ENV] = self.launch
        # Checked before the first job; a sweeper that invents values raises ConfigError here.
        apply_threads(config.get("threads"))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        records = launch_records(sweep_dir, self.launch, self.started)
        if not records:
            return
        line, failures = summarise(records)
        print(f"Sweep {sweep_dir}: {line}.", flush=True)
        if failures:
            print("\n".join(failures), file=sys.stderr)
            print(
                "Fix the cause and re-run the same command: complete jobs are skipped, "
                "interrupted ones resume.",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(1)
