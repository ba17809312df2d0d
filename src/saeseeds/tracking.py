"""Weights & Biases for both apps: the ``logger`` config schema, the mode (online with
credentials, offline otherwise), the group and name of a training job, and its Lightning logger.

Jobs of one multirun share a group named after the multirun folder; each job is named from its
overrides and finished before the next job starts. A run folder keeps its W&B run id
(:data:`WANDB_RUN_FILE`) from when training starts, so a resumed job continues the same W&B run.
The analysis app logs its own run (:mod:`saeseeds.analysis.report.wandb_run`) with the same mode
and group rules. Nothing here trains or writes run files but that id.
"""

from __future__ import annotations

import logging
import os
import secrets
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

WANDB_RUN_FILE = "wandb_run.json"
"""In a training run folder: ``{"id": ...}`` of its W&B run, for a resume to continue it."""
VALID_MODES = ("auto", "online", "offline", "disabled")


@dataclass
class LoggerConfig:
    """Weights & Biases logging; ``logger=none`` disables it."""

    enabled: bool = True
    project: str = "saeseeds"
    entity: str | None = None
    mode: str = "auto"
    """auto | online | offline | disabled; auto is online when an API key is available."""
    group: str | None = None
    """``null``: training uses the multirun folder (all jobs of a sweep share it) or the run
    folder; the analysis uses the sweep's group from environment.json."""
    name: str | None = None
    """``null``: training uses the job's overrides; the analysis "analysis-<group>"."""
    tags: list[str] = field(default_factory=list)


def resolve_wandb_mode(requested: str | None) -> str:
    """``auto`` means online when an API key is available (env or netrc), offline otherwise."""
    requested = (requested or "auto").lower()
    if requested not in VALID_MODES:
        raise ValueError(f"logger.mode={requested!r} is not valid; choose one of {VALID_MODES}.")
    env_mode = os.environ.get("WANDB_MODE")
    if requested == "auto" and env_mode in ("online", "offline", "disabled"):
        return env_mode
    if requested != "auto":
        return requested
    return "online" if _has_credentials() else "offline"


def _has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc

        hosts = netrc.netrc().hosts
    except (FileNotFoundError, OSError, netrc.NetrcParseError):
        return False
    return any("wandb" in host for host in hosts)


def offline_hint(save_dir: str) -> str:
    return (
        f"W&B is offline (no API key found); runs are saved under {save_dir}/wandb. "
        "Upload them later with `wandb sync <run folder>`."
    )


def hydra_job_identity(run_dir: Path) -> tuple[str, str]:
    """(group, name): the sweep folder and the job's overrides, or the run folder alone."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return run_dir.name, run_dir.name
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        sweep_dir = Path(hydra_cfg.sweep.dir)
        return f"{sweep_dir.parent.name}_{sweep_dir.name}", run_dir.name  # the job's folder
    name = hydra_cfg.job.override_dirname or run_dir.name
    return f"{run_dir.parent.name}_{run_dir.name}", name


def wandb_run_id(run_dir: Path, resume: bool) -> str:
    """The id of the run folder's W&B run: when resuming, the one :func:`record_wandb_run` kept
    (a folder from before ids were kept gets a new one); otherwise a new id."""
    from saeseeds.io import read_json

    if resume:
        try:
            recorded = read_json(run_dir / WANDB_RUN_FILE)
        except (OSError, ValueError):
            recorded = None
        run_id = recorded.get("id") if isinstance(recorded, dict) else None
        if isinstance(run_id, str) and run_id:
            return run_id
    # W&B's own form: 8 characters from [a-z0-9].
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def record_wandb_run(logger: Any, run_dir: Path) -> None:
    """Keep the id of ``logger``'s W&B run in the run folder (atomically), for a resume; called
    once the trainer is built, so a job refused before training leaves no file behind."""
    if logger is None:
        return
    from saeseeds.io import atomic_write_json

    atomic_write_json(run_dir / WANDB_RUN_FILE, {"id": str(logger.version)})


def start_wandb_run(logger: Any) -> None:
    """Start ``logger``'s W&B run now rather than inside ``trainer.fit`` (Lightning starts it
    lazily), so the fit's time is training alone: a process's first W&B run takes seconds to
    start its service."""
    if logger is not None:
        _ = logger.experiment


def build_wandb_logger(
    cfg: Any, run_dir: Path, concurrent: bool = False, resume: bool = False
) -> Any:
    """The job's Lightning W&B logger, or None when logging is off. ``concurrent``: this run is
    one of several open at once in this process (a several-seeds job logs one run per seed).
    ``resume``: the job continues from a checkpoint, so it continues the folder's W&B run."""
    from omegaconf import OmegaConf

    if not cfg.logger.enabled:
        return None
    mode = resolve_wandb_mode(cfg.logger.mode)
    if mode == "disabled":
        return None
    from lightning.pytorch.loggers import WandbLogger

    group, name = hydra_job_identity(run_dir)
    if mode == "offline":
        log.info(offline_hint(str(run_dir)))
    run_dir.mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        id=wandb_run_id(run_dir, resume),  # Lightning asks W&B to resume it if it exists
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        group=cfg.logger.group or group,
        name=cfg.logger.name or name,
        tags=list(cfg.logger.tags),
        save_dir=str(run_dir),
        mode=mode,
        job_type="train",
        config=OmegaConf.to_container(cfg, resolve=True),
        **({"reinit": "create_new"} if concurrent else {}),
    )


def finish_wandb(logger: Any, metrics: dict[str, Any]) -> None:
    """Put the final held-out metrics in the run summary and close the run."""
    if logger is None:
        return
    run = logger.experiment
    run.summary.update({f"final/{key}": value for key, value in metrics.items()})
    run.finish()


def wandb_run_info(logger: Any) -> dict[str, Any] | None:
    """Where a training job's W&B run went (its Lightning logger), for environment.json; None
    without one."""
    from lightning.pytorch.loggers import WandbLogger

    if not isinstance(logger, WandbLogger):
        return None
    run = logger.experiment
    return {
        "group": run.group,
        "name": run.name,
        "id": run.id,
        "project": run.project,
        "mode": "offline" if run.settings._offline else "online",
    }
