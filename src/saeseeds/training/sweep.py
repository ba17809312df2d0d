"""The Hydra callback of ``train.py`` (``hydra.callbacks`` in ``conf/hydra/default.yaml``): checks
that the output folder can be written before Hydra creates it, and ends a multirun with a
one-line summary.

Hydra cannot resume a multirun itself, and its basic sweeper stops reporting at the first failed
job, so each job handles its own folder (:mod:`saeseeds.training.job`) and never raises into
Hydra; it leaves a record in ``<sweep>/.saeseeds_jobs/``. ``on_multirun_end`` runs in the
launching process under every launcher (basic, joblib, submitit), reads the records of this
launch, prints ``N jobs: a skipped, b resumed, c started, d failed``, lists the failures, and
exits with status 1 when any job failed. This module imports neither torch nor Lightning.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from saeseeds import contract
from saeseeds.io import writable_folder_problem

# Set in the launching process; the jobs it launches inherit it and put it in their records.
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


def launch_records(sweep_dir: Path, launch: str | None, since: float) -> list[dict[str, Any]]:
    """The job records written by this launch (by its id, or by time for launchers whose jobs
    do not inherit the environment)."""
    records = []
    for path in sorted((sweep_dir / contract.JOB_RECORDS_DIR).glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            recent = path.stat().st_mtime >= since
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and (record.get("launch") == launch or recent):
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
    """Output-folder check before any job; summary and exit status after a multirun."""

    def __init__(self) -> None:
        self.launch: str | None = None
        self.started = 0.0

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_output_folder(str(config.hydra.run.dir), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_output_folder(str(config.hydra.sweep.dir), "hydra.sweep.dir")
        self.launch = uuid.uuid4().hex
        self.started = time.time() - 1.0
        os.environ[LAUNCH_ENV] = self.launch

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
