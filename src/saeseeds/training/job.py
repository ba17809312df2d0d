"""One job of ``train.py``, from Hydra's call to its outcome.

In order: check the config (before the heavy imports, so a typo fails in about two seconds);
decide from the job's folder whether to start, resume, skip or refuse
(:mod:`saeseeds.training.resume`); take ownership of the folder (:func:`saeseeds.io.job_lock`,
held until the job ends, so a second process on the same job is refused with the owner's PID and
host, and a lock left by a killed process is taken over); write ``.hydra/`` only once the job is
accepted (Hydra's own writing is turned off in ``conf/hydra/default.yaml``, so a refused command
never rewrites a finished folder's record); train; and record the outcome.

Inside a multirun every job writes a record into ``<sweep>/.saeseeds_jobs/`` (atomically) when it
starts and when it ends, which :mod:`saeseeds.training.sweep` turns into the sweep's summary and
the analysis uses to name deleted jobs. A refused job takes back the folder it created (Hydra's
log file and nothing else), so bad input leaves no half-made run folder behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from saeseeds import contract
from saeseeds.config.validation import validate_train_config
from saeseeds.errors import ConfigError
from saeseeds.io import atomic_write_json, atomic_write_text, job_lock, remove_folder_if_only
from saeseeds.training.resume import RESUME, SKIP, JobPlan, folder_state, plan_job
from saeseeds.training.sweep import LAUNCH_ENV

log = logging.getLogger("saeseeds")
# Where a process started for DDP finds its rank (Lightning's order). Only rank 0 writes.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
# What Hydra itself puts into a job folder before the job runs.
HYDRA_LEFTOVERS = {"train.log"}
# What a job that failed in a folder it created leaves (taken back with the folder).
ACCEPTED_LEFTOVERS = HYDRA_LEFTOVERS | {contract.HYDRA_DIR, contract.LOCK_FILE}


def hydra_config() -> Any | None:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def is_multirun(hydra_cfg: Any | None) -> bool:
    from hydra.types import RunMode

    return hydra_cfg is not None and hydra_cfg.mode == RunMode.MULTIRUN


def process_rank() -> int:
    """This process's rank in a multi-process (DDP) run; 0 in a single process."""
    for name in RANK_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def processes_started_outside() -> bool:
    """True when a launcher (torchrun, srun with several tasks) started every DDP process."""
    return "WORLD_SIZE" in os.environ or int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1


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


def resolved_run_config(cfg: DictConfig) -> dict[str, Any]:
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except Exception as error:  # noqa: BLE001 - OmegaConf raises many interpolation errors
        raise ConfigError(f"the config does not resolve: {str(error).splitlines()[0]}") from None
    return contract.run_config(resolved)


class JobRecord:
    """``<sweep>/.saeseeds_jobs/<job>.json``: one job's identity and outcome (multirun only)."""

    def __init__(self, hydra_cfg: Any, run_dir: Path, seed: Any):
        sweep_dir = Path(hydra_cfg.sweep.dir).absolute()
        try:
            job = str(run_dir.absolute().relative_to(sweep_dir))
        except ValueError:
            job = run_dir.name
        self.path = sweep_dir / contract.JOB_RECORDS_DIR / (job.replace("/", "%2F") + ".json")
        self.payload: dict[str, Any] = {
            "format": contract.JOB_RECORD_FORMAT,
            "job": job,
            "num": int(hydra_cfg.job.num),
            "overrides": list(hydra_cfg.overrides.task),
            "launch": os.environ.get(LAUNCH_ENV),
            "seed": seed,
            "action": None,
            "outcome": "running",
            "reason": None,
            "config": None,
            "config_sha256": None,
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }

    def write(self, **changes: Any) -> None:
        self.payload.update(changes, updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        try:
            atomic_write_json(self.path, self.payload)
        except (OSError, ValueError) as error:  # the summary loses one line; the job goes on
            log.warning("Could not write the job record %s: %s", self.path, error)


def write_hydra_files(run_dir: Path, cfg: DictConfig, hydra_cfg: Any | None) -> None:
    """What Hydra would have written into ``.hydra/``, once the job is accepted."""
    from hydra.core.hydra_config import HydraConfig

    if hydra_cfg is None or hydra_cfg.output_subdir is not None:
        return  # not a Hydra run, or Hydra wrote it itself (hydra.output_subdir was set)
    hydra_dir = run_dir / contract.HYDRA_DIR
    atomic_write_text(hydra_dir / "config.yaml", OmegaConf.to_yaml(cfg))
    atomic_write_text(hydra_dir / "hydra.yaml", OmegaConf.to_yaml(HydraConfig.instance().cfg))
    atomic_write_text(hydra_dir / "overrides.yaml", OmegaConf.to_yaml(hydra_cfg.overrides.task))


def remove_stale_temporaries(run_dir: Path) -> None:
    """Temporary files of writes killed with SIGKILL (a kill leaves the old file whole, and its
    temporary beside it); the job owns its folder, so no other writer can be using them."""
    for folder in (run_dir, run_dir / contract.CHECKPOINT_DIR):
        for leftover in folder.glob(".*.tmp") if folder.is_dir() else ():
            leftover.unlink(missing_ok=True)


def run_job(cfg: DictConfig) -> dict[str, Any] | None:
    """Run one job; returns its metrics (None when skipped). Raises what the job raised.
    ``seeds=[...]``: a multi-seed job (:mod:`saeseeds.training.seed_jobs`)."""
    if cfg.get("seeds") is not None:
        from saeseeds.training.seed_jobs import run_seeds_job

        run_seeds_job(cfg)
        return None
    hydra_cfg = hydra_config()
    multirun = is_multirun(hydra_cfg)
    run_dir = Path(str(cfg.paths.output_dir))
    # Processes that DDP started beside rank 0 train with it; rank 0 writes every record.
    rank_zero = process_rank() == 0
    fresh = rank_zero and run_dir.is_dir()
    fresh = fresh and {entry.name for entry in run_dir.iterdir()} <= HYDRA_LEFTOVERS
    record = JobRecord(hydra_cfg, run_dir, cfg.get("seed")) if multirun and rank_zero else None
    if record is not None:
        record.write()
    plan: JobPlan | None = None
    try:
        validate_train_config(cfg)
        check_launch(cfg, multirun)
        run_config = resolved_run_config(cfg)
        if record is not None:
            sha = contract.config_sha256(run_config)
            record.write(config=run_config, config_sha256=sha)
        state = folder_state(run_dir)
        plan = plan_job(cfg, run_dir, run_config, auto_resume=multirun)
        if plan.action != SKIP:
            with job_lock(run_dir) if rank_zero else contextlib.nullcontext():
                if folder_state(run_dir) != state:  # another process changed it meanwhile
                    plan = plan_job(cfg, run_dir, run_config, auto_resume=multirun)
                if plan.action != SKIP:
                    metrics = run_accepted(cfg, plan, hydra_cfg, record, rank_zero)
        if plan.action == SKIP:
            log.info("Skipped %s: %s.", run_dir, plan.message)
            if record is not None:
                record.write(action=SKIP, outcome="skipped")
            return None
    except SystemExit as stop:  # a stop signal (Preempted), or Lightning's exit after Ctrl-C
        if record is not None:
            preempted = getattr(stop, "signum", None) is not None
            reason = str(stop) if preempted else f"interrupted (exit status {stop.code})"
            record.write(outcome="preempted" if preempted else "interrupted", reason=reason)
        raise
    except BaseException as error:
        if record is not None:
            record.write(outcome="failed", reason=describe_error(error))
        if fresh:  # nothing in it predates this command
            remove_folder_if_only(run_dir, ACCEPTED_LEFTOVERS)
        raise
    if record is not None:
        record.write(outcome="resumed" if plan.action == RESUME else "started")
    return metrics


def run_accepted(
    cfg: DictConfig, plan: JobPlan, hydra_cfg: Any, record: JobRecord | None, rank_zero: bool
) -> dict[str, Any]:
    """Train a job the plan accepted, in the folder this process owns."""
    run_dir = plan.run_dir
    if record is not None:
        record.write(action=plan.action)
    if plan.action == RESUME:
        log.info("Resuming %s %s.", run_dir, plan.message)
    if plan.damaged is not None:
        log.warning("%s is not complete: %s; training it again.", run_dir, plan.damaged)
    if rank_zero:
        if plan.damaged is not None:  # no longer complete, whatever happens next
            (run_dir / contract.COMPLETE_MARKER).unlink(missing_ok=True)
        remove_stale_temporaries(run_dir)
        write_hydra_files(run_dir, cfg, hydra_cfg)
    from saeseeds.training.run import train  # Lightning: imported only for accepted jobs

    return train(cfg, plan=plan)


def describe_error(error: BaseException) -> str:
    from saeseeds.errors import UserError

    if isinstance(error, UserError):
        return str(error)
    first = str(error).strip().splitlines()
    return f"{type(error).__name__}: {first[0] if first else ''} (traceback in the job's log)"
