"""What a job's folders need before any data is read: start, resume, skip, or refuse.

A job trains S >= 1 seeds (:class:`JobPlan`). A one-seed job (``seed=S``) writes its own folder,
which also holds its checkpoint; a multi-seed job (``'seeds=[...]'``) writes each seed's folder
(named as that seed's own job would be, :mod:`saeseeds.training.seeds`) and keeps one checkpoint
of every seed together in its own folder. For each folder the decision is made from the folder's
own records, never from Hydra's ``.hydra/`` alone:

- a folder with ``COMPLETE`` whose completion record (``environment.json``'s ``config``) equals
  this job's run config is **skipped**; with another config it is **refused** and left as it is;
  one whose files are no longer those ``COMPLETE`` recorded (a file deleted, truncated or grown:
  sizes are compared, which costs one ``stat`` each) is not complete, and is **started** again;
- a folder with ``checkpoints/last.ckpt`` and no ``COMPLETE`` is **resumed** when asked
  (``resume=true``, or automatically inside a multirun, so that re-running a sweep or a SLURM
  requeue continues it), after the checkpoint's recorded config and shapes are checked; outside
  a multirun, without ``resume=true``, it is refused rather than overwritten;
- anything else is **started** from scratch.

A multi-seed job skips each seed whose folder is complete with that seed's config, refuses a seed
folder that holds an interrupted run of its own one-seed job, and resumes its own checkpoint
under the same rules, with the seeds that checkpoint holds (those already complete are trained
along but not written again).

Run configs are compared without operational keys (:data:`saeseeds.contract.OPERATIONAL_KEYS`),
so where outputs go or how a job is logged never blocks a resume or a skip.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from saeseeds import contract
from saeseeds.errors import ConfigError
from saeseeds.io import damaged_file, read_config_file, read_json

log = logging.getLogger("saeseeds")

START, RESUME, SKIP = "start", "resume", "skip"


@dataclass
class FolderPlan:
    """What to do with one folder; ``checkpoint`` is the checked checkpoint to resume."""

    action: str
    run_dir: Path
    ckpt_path: Path | None = None
    checkpoint: dict[str, Any] | None = None
    message: str = ""
    damaged: str | None = None
    """Why a folder marked COMPLETE is not (``sae_weights.safetensors is missing ...``): the
    job trains it again, and the stale marker goes once the job owns the folder."""

    @property
    def step(self) -> int:
        return int(self.checkpoint.get("global_step", 0)) if self.checkpoint else 0


def resolved_run_config(cfg: DictConfig) -> dict[str, Any]:
    """The run config of ``cfg`` (:func:`saeseeds.contract.run_config` of its resolved form)."""
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except Exception as error:  # noqa: BLE001 - OmegaConf raises many interpolation errors
        raise ConfigError(f"the config does not resolve: {str(error).splitlines()[0]}") from None
    return contract.run_config(resolved)


def completed_config(run_dir: Path) -> dict[str, Any] | None:
    """The run config recorded at completion; ``.hydra/config.yaml`` for runs written before
    environment.json had one."""
    environment = run_dir / contract.ENVIRONMENT_FILE
    try:
        recorded = read_json(environment).get("config")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if isinstance(recorded, dict):
        return recorded
    return read_config_file(run_dir / contract.HYDRA_CONFIG)


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    return contract.without_keys(config, contract.OPERATIONAL_KEYS)


def plan_job(
    cfg: DictConfig, run_dir: Path, run_config: dict[str, Any], auto_resume: bool
) -> FolderPlan:
    """Decide from ``run_dir``'s records; raises :class:`ConfigError` when the job must not run."""
    if (run_dir / contract.COMPLETE_MARKER).exists():
        return plan_complete(run_dir, run_config)
    last = run_dir / contract.CHECKPOINT_DIR / contract.LAST_CHECKPOINT
    if not cfg.ckpt_path and not last.is_file():
        if cfg.resume and not auto_resume:  # in a multirun, a job that never ran just starts
            raise ConfigError(
                f"resume=true but {last} does not exist. Point hydra.run.dir at the interrupted "
                "run's folder, or replace resume=true with ckpt_path=FILE."
            )
        return FolderPlan(START, run_dir)
    # Lightning and torch, only when there is a checkpoint to read.
    from saeseeds.training.lifecycle.checkpoint_io import (
        check_config,
        checkpoint_step,
        read_checkpoint,
    )

    if cfg.ckpt_path:
        path = Path(str(cfg.ckpt_path)).expanduser()
        checkpoint = read_checkpoint(path, f"ckpt_path={cfg.ckpt_path}")
        check_config(checkpoint, run_config, f"ckpt_path={cfg.ckpt_path}")
        return FolderPlan(RESUME, run_dir, path, checkpoint, f"from {path}")
    if not (cfg.resume or auto_resume):
        raise ConfigError(
            f"{run_dir} holds an interrupted run ({last}); continue it with resume=true, or "
            "choose a new output folder (hydra.run.dir=...) to start another run."
        )
    checkpoint = read_checkpoint(last)
    check_config(checkpoint, run_config, str(last))
    step = checkpoint_step(checkpoint)
    return FolderPlan(RESUME, run_dir, last, checkpoint, f"from step {step} of {last}")


def plan_complete(run_dir: Path, run_config: dict[str, Any]) -> FolderPlan:
    recorded = completed_config(run_dir)
    if recorded is None:
        raise ConfigError(
            f"{run_dir} already holds a complete run, but without a readable config record "
            f"({contract.ENVIRONMENT_FILE} or {contract.HYDRA_CONFIG}), so it cannot be "
            "matched to this job; it is left as it is. Choose a new output folder."
        )
    if contract.differing_keys(comparable(recorded), comparable(run_config)):
        differences = contract.describe_differences(comparable(recorded), comparable(run_config))
        raise ConfigError(
            f"{run_dir} already holds a complete run with another config ({differences}; that "
            "run vs this command); it is left as it is. Choose a new output folder "
            "(hydra.run.dir=... or hydra.sweep.dir=...) for this config."
        )
    damaged = damaged_file(run_dir, check_hashes=False)
    if damaged is not None:
        return FolderPlan(
            START,
            run_dir,
            message=f"marked complete, but {damaged}; training it again",
            damaged=damaged,
        )
    return FolderPlan(SKIP, run_dir, message="already complete with this config")


def folder_state(run_dir: Path) -> tuple[Any, ...]:
    """What a plan depends on, cheaply (size and time of COMPLETE and of the last checkpoint):
    if it changed while the job waited for its folder, the plan is made again."""
    state = []
    for path in (
        run_dir / contract.COMPLETE_MARKER,
        run_dir / contract.CHECKPOINT_DIR / contract.LAST_CHECKPOINT,
    ):
        try:
            stat = path.stat()
            state.append((stat.st_size, stat.st_mtime_ns, stat.st_ino))
        except OSError:
            state.append(None)
    return tuple(state)


@dataclass
class SeedRun:
    """One seed of a job: its folder, and the config and overrides of its own one-seed job."""

    seed: int
    run_dir: Path
    cfg: DictConfig  # as its own job composes it; paths.output_dir is run_dir
    overrides: list[str]
    run_config: dict[str, Any]
    action: str = START


@dataclass
class JobPlan:
    """What a job does: ``train_seeds`` in one fit (from ``checkpoint`` when resuming), then the
    folders of the runs not skipped. ``own_folder``: one seed, written into the job's own folder
    (``seed=S``); otherwise each seed has its folder (``'seeds=[...]'``)."""

    job_dir: Path
    record_config: dict[str, Any]  # what its checkpoints record, and a resume checks
    runs: list[SeedRun]
    own_folder: bool
    train_seeds: list[int] = field(default_factory=list)
    ckpt_path: Path | None = None
    checkpoint: dict[str, Any] | None = None
    message: str = ""
    damaged: str | None = None  # of the job's own folder (FolderPlan.damaged)

    @property
    def to_write(self) -> list[SeedRun]:
        return [run for run in self.runs if run.action != SKIP]

    @property
    def resuming(self) -> bool:
        return self.ckpt_path is not None


def plan_runs(cfg: DictConfig, runs: list[SeedRun], auto_resume: bool) -> JobPlan:
    """Decide each seed's folder and the job's checkpoint; raises :class:`ConfigError` when the
    job must not run."""
    job_dir = Path(str(cfg.paths.output_dir))
    if len(runs) == 1 and runs[0].run_dir == job_dir:
        run = runs[0]
        folder = plan_job(cfg, job_dir, run.run_config, auto_resume)
        run.action = folder.action
        plan = JobPlan(job_dir, run.run_config, runs, own_folder=True, message=folder.message)
        plan.damaged = folder.damaged
        if folder.action != SKIP:
            plan.train_seeds = [run.seed]
            plan.ckpt_path, plan.checkpoint = folder.ckpt_path, folder.checkpoint
        return plan
    job_config = contract.without_keys(resolved_run_config(cfg), ("seed",))
    plan = JobPlan(job_dir, job_config, runs, own_folder=False)
    for run in runs:
        if (run.run_dir / contract.COMPLETE_MARKER).exists():
            complete = plan_complete(run.run_dir, run.run_config)
            run.action = complete.action
            if complete.damaged is not None:
                log.warning(
                    "%s is not complete: %s; training it again.", run.run_dir, complete.damaged
                )
        elif (run.run_dir / contract.CHECKPOINT_DIR / contract.LAST_CHECKPOINT).is_file():
            raise ConfigError(
                f"{run.run_dir} holds an interrupted run of seed {run.seed} trained by its own "
                f"job; finish it with that job (seed={run.seed} resume=true), or delete the "
                "folder to train it in this one."
            )
    todo = [run.seed for run in runs if run.action != SKIP]
    if not todo:
        return plan
    # The job's own checkpoint, under a one-seed job's rules; then the seeds it holds.
    folder = plan_job(cfg, job_dir, job_config, auto_resume)
    if folder.checkpoint is None or folder.ckpt_path is None:
        plan.train_seeds = todo
        return plan
    from saeseeds.training.lifecycle.checkpoint_io import RECORD_KEY

    record = folder.checkpoint.get(RECORD_KEY)
    saved = record.get("seeds") if isinstance(record, dict) else None
    if not isinstance(saved, list) or not set(todo) <= set(saved):
        raise ConfigError(
            f"{folder.ckpt_path} holds the seeds {saved}, but this job still has to train "
            f"{todo}. Resume with the seeds of the interrupted job, or choose a new output folder."
        )
    plan.train_seeds = [int(seed) for seed in saved]
    plan.ckpt_path, plan.checkpoint = folder.ckpt_path, folder.checkpoint
    plan.message = folder.message
    for run in plan.to_write:
        run.action = RESUME
    return plan
