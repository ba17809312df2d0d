"""What a job's folder needs before any data is read: start, resume, skip, or refuse.

The decision is made from the folder's own records, never from Hydra's ``.hydra/`` alone:

- a folder with ``COMPLETE`` whose completion record (``environment.json``'s ``config``) equals
  this job's run config is **skipped**; with another config it is **refused** and left as it is;
  one whose files are no longer those ``COMPLETE`` recorded (a file deleted, truncated or grown:
  sizes are compared, which costs one ``stat`` each) is not complete, and is **started** again;
- a folder with ``checkpoints/last.ckpt`` and no ``COMPLETE`` is **resumed** when asked
  (``resume=true``, or automatically inside a multirun, so that re-running a sweep or a SLURM
  requeue continues it), after the checkpoint's recorded config and shapes are checked; outside
  a multirun, without ``resume=true``, it is refused rather than overwritten;
- anything else is **started** from scratch.

Run configs are compared without operational keys (:data:`saeseeds.contract.OPERATIONAL_KEYS`),
so where outputs go or how a job is logged never blocks a resume or a skip.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from saeseeds import contract
from saeseeds.errors import ConfigError
from saeseeds.io import damaged_file, read_config_file, read_json

START, RESUME, SKIP = "start", "resume", "skip"


@dataclass
class JobPlan:
    """What to do with one job's folder; ``checkpoint`` is the checked checkpoint to resume."""

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
) -> JobPlan:
    """Decide from ``run_dir``'s records; raises :class:`ConfigError` when the job must not run."""
    if (run_dir / contract.COMPLETE_MARKER).exists():
        return plan_complete(run_dir, run_config)
    last = run_dir / contract.CHECKPOINT_DIR / contract.LAST_CHECKPOINT
    if not cfg.ckpt_path and not last.is_file():
        if cfg.resume and not auto_resume:  # in a multirun, a job that never ran just starts
            raise ConfigError(
                f"resume=true but {last} does not exist. Point hydra.run.dir at the interrupted "
                "run's folder, or pass ckpt_path=FILE."
            )
        return JobPlan(START, run_dir)
    # Lightning and torch, only when there is a checkpoint to read.
    from saeseeds.training.checkpoint_io import check_config, checkpoint_step, read_checkpoint

    if cfg.ckpt_path:
        path = Path(str(cfg.ckpt_path)).expanduser()
        checkpoint = read_checkpoint(path, f"ckpt_path={cfg.ckpt_path}")
        check_config(checkpoint, run_config, f"ckpt_path={cfg.ckpt_path}")
        return JobPlan(RESUME, run_dir, path, checkpoint, f"from {path}")
    if not (cfg.resume or auto_resume):
        raise ConfigError(
            f"{run_dir} holds an interrupted run ({last}); continue it with resume=true, or "
            "choose a new output folder (hydra.run.dir=...) to start another run."
        )
    checkpoint = read_checkpoint(last)
    check_config(checkpoint, run_config, str(last))
    step = checkpoint_step(checkpoint)
    return JobPlan(RESUME, run_dir, last, checkpoint, f"from step {step} of {last}")


def plan_complete(run_dir: Path, run_config: dict[str, Any]) -> JobPlan:
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
        return JobPlan(
            START,
            run_dir,
            message=f"marked complete, but {damaged}; training it again",
            damaged=damaged,
        )
    return JobPlan(SKIP, run_dir, message="already complete with this config")


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
