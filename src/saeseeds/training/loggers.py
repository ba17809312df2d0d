"""The loggers of a job's seeds: a one-seed job logs into its own W&B run as it is; a multi-seed
job opens one W&B run per seed (named as that seed's own job would name it, open while it
trains), and a :class:`SeedLogger` hands each seed's metrics (logged as ``seed=S/<name>`` by
:class:`saeseeds.training.module.SAETrainingModule`) to its run, so each seed's W&B run holds what
its own job's would.
"""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import open_dict

from saeseeds.tracking import build_wandb_logger
from saeseeds.training.lifecycle.resume import JobPlan, SeedRun
from saeseeds.training.module import seed_prefix


class SeedLogger(Logger):
    """One seed's view of a multi-seed module's logs: the metrics logged as ``seed=S/<name>``
    go to that seed's logger as ``<name>`` (with ``epoch``), at Lightning's usual cadence, so its
    W&B run holds what its own job's would."""

    def __init__(self, logger: Logger, prefix: str):
        super().__init__()
        self._seed_logger, self._prefix = logger, prefix

    @property
    def name(self) -> str | None:
        return self._seed_logger.name

    @property
    def version(self) -> Any:
        return self._seed_logger.version

    @property
    def save_dir(self) -> str | None:
        return self._seed_logger.save_dir

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        return self._seed_logger.experiment

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        own = {
            name[len(self._prefix) :]: value
            for name, value in metrics.items()
            if name.startswith(self._prefix)
        }
        if not own:
            return
        if "epoch" in metrics:
            own["epoch"] = metrics["epoch"]
        self._seed_logger.log_metrics(own, step)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        self._seed_logger.log_hyperparams(params, *args, **kwargs)

    def save(self) -> None:
        self._seed_logger.save()

    def finalize(self, status: str) -> None:
        self._seed_logger.finalize(status)


def seed_wandb_logger(run: SeedRun, multirun: bool, resume: bool) -> Any:
    """The seed's own W&B run (None when logging is off), named as its own job's would be;
    ``resume``: the job continues from a checkpoint, so the seed continues its folder's run."""
    cfg = run.cfg
    if not multirun:  # one group for the job; the seed's overrides name its run
        from saeseeds.tracking import hydra_job_identity

        group, _ = hydra_job_identity(run.run_dir.parent)
        cfg = run.cfg.copy()
        with open_dict(cfg):
            cfg.logger.group = cfg.logger.group or group
            cfg.logger.name = cfg.logger.name or ",".join(sorted(run.overrides)) or run.run_dir.name
    # Several W&B runs open at once in this process: without it wandb.init (and Lightning's
    # WandbLogger) would hand every seed the first seed's run.
    return build_wandb_logger(cfg, run.run_dir, concurrent=True, resume=resume)


def job_loggers(plan: JobPlan, multirun: bool) -> tuple[dict[int, Any], list[Logger]]:
    """Each written seed's W&B logger (None when logging is off), and the Trainer's loggers."""
    if plan.own_folder:
        run = plan.runs[0]
        logger = build_wandb_logger(run.cfg, run.run_dir, resume=plan.resuming)
        return {run.seed: logger}, [logger] if logger is not None else []
    wandb = {run.seed: seed_wandb_logger(run, multirun, plan.resuming) for run in plan.to_write}
    loggers = [SeedLogger(logger, seed_prefix(seed)) for seed, logger in wandb.items() if logger]
    return wandb, loggers


class _NoAdvert(logging.Filter):
    """Drops Lightning's advertisement for its cloud logger (a "💡 Tip" at every Trainer)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def one_console_line_per_lightning_message() -> None:
    """The ``lightning`` package gives its logger a console handler of its own when imported.
    Under Hydra, whose root logger already writes the console and the job's log file, each of
    Lightning's messages then shows twice on the console: where the root logger writes to the
    console too, they go through it alone."""
    lightning_logger = logging.getLogger("lightning")
    if any(type(handler) is logging.StreamHandler for handler in logging.getLogger().handlers):
        for handler in list(lightning_logger.handlers):
            if type(handler) is logging.StreamHandler:
                lightning_logger.removeHandler(handler)
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(existing, _NoAdvert) for existing in rank_zero.filters):
        rank_zero.addFilter(_NoAdvert())
