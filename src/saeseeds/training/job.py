"""One job of ``train.py``, from Hydra's call to its outcome; a job trains S >= 1 seeds.

In order: check the config (before the heavy imports, so a typo fails in about a second);
name every seed's folder (:mod:`saeseeds.training.seeds`); decide from the folders whether each
seed starts, resumes, is skipped or is refused (:mod:`saeseeds.training.lifecycle.resume`); take
ownership of the job's folder and of each folder it writes (:func:`saeseeds.io.job_lock`, held
until the job ends, so a second process on the same job is refused with the owner's PID and
host, and a lock left by a killed process is taken over); write ``.hydra/`` only once the job is
accepted, so a refused command never rewrites a finished folder's record; train every seed left
in one fit (:mod:`saeseeds.training.run`); and record the outcome.

Inside a multirun each seed writes a record into ``<sweep>/.saeseeds_jobs/``
(:mod:`saeseeds.training.lifecycle.records`), so the sweep summary and the analysis count seeds,
not jobs. A refused job takes back the folders it created (Hydra's log file and nothing else), so
bad input leaves no half-made run folder behind.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from saeseeds import contract
from saeseeds.config.validation import validate_train_config
from saeseeds.errors import ConfigError
from saeseeds.io import job_lock, remove_folder_if_only
from saeseeds.training.lifecycle.records import (
    ACCEPTED_LEFTOVERS,
    HYDRA_LEFTOVERS,
    JobRecord,
    describe_error,
    hydra_config,
    is_fresh,
    is_multirun,
    process_rank,
    processes_started_outside,
    remove_stale_temporaries,
)
from saeseeds.training.lifecycle.resume import RESUME, SKIP, START, JobPlan, folder_state, plan_runs
from saeseeds.training.seeds import job_runs, write_hydra_files

log = logging.getLogger("saeseeds")


def check_launch(cfg: DictConfig, multirun: bool) -> None:
    """Refuse DDP inside a multirun where Lightning would start the other processes itself: it
    re-runs ``sys.argv``, i.e. the whole sweep, in each of them."""
    from saeseeds.config.validation import training_processes

    processes = training_processes(cfg.trainer)
    if multirun and processes > 1 and not processes_started_outside():
        raise ConfigError(
            f"this job would train in {processes} processes (trainer.devices="
            f"{cfg.trainer.devices}), but Lightning starts the extra ones by re-running the "
            "command line, which inside a multirun (-m) re-runs the whole sweep. Run each "
            "multi-device job as its own command (no -m), or set trainer.devices=1 in a sweep."
        )


def run_job(cfg: DictConfig, extra_callbacks: list[Any] | None = None) -> dict[int, dict[str, Any]]:
    """Run one job; returns the metrics of the seeds it wrote, by seed ({} when every seed was
    skipped). Raises what the job raised. ``extra_callbacks``: Lightning callbacks added to the
    fit (tests)."""
    hydra_cfg = hydra_config()
    multirun = is_multirun(hydra_cfg)
    job_dir = Path(str(cfg.paths.output_dir))
    # Processes that DDP started beside rank 0 train with it; rank 0 writes every record.
    rank_zero = process_rank() == 0
    fresh_job = rank_zero and is_fresh(job_dir)
    try:
        validate_train_config(cfg)
        check_launch(cfg, multirun)
        runs = job_runs(cfg, hydra_cfg)
    except BaseException as error:
        if multirun and rank_zero:  # no seed's folder can be named: one record for the job
            seed = cfg.get("seed") if cfg.get("seeds") is None else None
            record = JobRecord(hydra_cfg, job_dir, seed, list(hydra_cfg.overrides.task))
            record.write(outcome="failed", reason=describe_error(error))
        if fresh_job:
            remove_folder_if_only(job_dir, HYDRA_LEFTOVERS)
        raise
    records: dict[int, JobRecord] = {}
    for run in runs if multirun and rank_zero else []:
        records[run.seed] = JobRecord(hydra_cfg, run.run_dir, run.seed, run.overrides)
        sha = contract.config_sha256(run.run_config)
        records[run.seed].write(config=run.run_config, config_sha256=sha)
    fresh = {run.seed for run in runs if rank_zero and not run.run_dir.exists()}
    plan: JobPlan | None = None
    metrics: dict[int, dict[str, Any]] = {}
    try:
        state = folder_state(job_dir)
        plan = plan_runs(cfg, runs, auto_resume=multirun)
        if plan.train_seeds:
            with contextlib.ExitStack() as owned:  # the job's folder and each folder it writes
                if rank_zero:
                    owned.enter_context(job_lock(job_dir))
                    if plan.own_folder and folder_state(job_dir) != state:
                        plan = plan_runs(cfg, runs, auto_resume=multirun)  # changed meanwhile
                    for run in [] if plan.own_folder else plan.to_write:
                        owned.enter_context(job_lock(run.run_dir))
                if plan.train_seeds:
                    note_actions(plan, records)
                    metrics = run_accepted(cfg, plan, hydra_cfg, rank_zero, extra_callbacks)
        if not plan.train_seeds:
            note_actions(plan, records)
    except SystemExit as stop:  # a stop signal (Preempted), or Lightning's exit after Ctrl-C
        preempted = getattr(stop, "signum", None) is not None
        reason = str(stop) if preempted else f"interrupted (exit status {stop.code})"
        for run in plan.to_write if plan is not None else runs:
            if run.seed in records:
                outcome = "preempted" if preempted else "interrupted"
                records[run.seed].write(outcome=outcome, reason=reason)
        raise
    except BaseException as error:
        for run in runs:
            if run.action != SKIP and run.seed in records:
                records[run.seed].write(outcome="failed", reason=describe_error(error))
            if run.seed in fresh:  # nothing in it predates this command
                remove_folder_if_only(run.run_dir, ACCEPTED_LEFTOVERS)
        if fresh_job:
            remove_folder_if_only(job_dir, ACCEPTED_LEFTOVERS)
        raise
    for run in plan.to_write:
        if run.seed in records:
            records[run.seed].write(outcome="resumed" if run.action == RESUME else "started")
    return metrics


def note_actions(plan: JobPlan, records: dict[int, JobRecord]) -> None:
    """Log the seeds skipped, and put each seed's action into its record."""
    for run in plan.runs:
        if run.action == SKIP:
            message = plan.message if plan.own_folder else "already complete with this config"
            log.info("Skipped %s: %s.", run.run_dir, message)
        if run.seed in records:
            records[run.seed].write(action=run.action)
            if run.action == SKIP:
                records[run.seed].write(outcome="skipped")


def run_accepted(
    cfg: DictConfig,
    plan: JobPlan,
    hydra_cfg: Any,
    rank_zero: bool,
    extra_callbacks: list[Any] | None,
) -> dict[int, dict[str, Any]]:
    """Train a job the plan accepted, in the folders this process owns."""
    if plan.resuming:
        log.info("Resuming %s %s.", plan.job_dir, plan.message)
    if plan.damaged is not None:
        log.warning("%s is not complete: %s; training it again.", plan.job_dir, plan.damaged)
    if rank_zero:
        remove_stale_temporaries(plan.job_dir)
        for run in plan.to_write:
            if run.action == START:  # a damaged complete folder is no longer complete
                (run.run_dir / contract.COMPLETE_MARKER).unlink(missing_ok=True)
            if run.run_dir != plan.job_dir:
                remove_stale_temporaries(run.run_dir)
            write_hydra_files(run, cfg, hydra_cfg, plan.own_folder)
    from saeseeds.training.run import train_plan  # Lightning: imported only for accepted jobs

    return train_plan(cfg, plan, extra_callbacks)
