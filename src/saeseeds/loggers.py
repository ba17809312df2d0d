"""The W&B logger of a training job: mode, group and name, and finishing the run.

Jobs of one multirun share a group named after the multirun folder; each job is named from its
overrides and finished before the next job starts. Nothing here trains or writes run files.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from saeseeds.wandb_utils import offline_hint, resolve_wandb_mode

log = logging.getLogger(__name__)


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


def build_wandb_logger(cfg: DictConfig, run_dir: Path):
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
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        group=cfg.logger.group or group,
        name=cfg.logger.name or name,
        tags=list(cfg.logger.tags),
        save_dir=str(run_dir),
        mode=mode,
        job_type="train",
        config=OmegaConf.to_container(cfg, resolve=True),
    )


def finish_wandb(logger: Any, metrics: dict[str, Any]) -> None:
    """Put the final held-out metrics in the run summary and close the run."""
    if logger is None:
        return
    run = logger.experiment
    run.summary.update({f"final/{key}": value for key, value in metrics.items()})
    run.finish()
