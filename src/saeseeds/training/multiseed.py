"""Training the seeds of a multi-seed job in one fit (sparsify's ``init_seeds``): one activation
source, one batch stream (``order_seed``), one Lightning loop, and S SAEs updated in lockstep by
:class:`saeseeds.training.module.MultiSeedModule`. Each seed's folder is then written by the same
code as a single run's (:func:`saeseeds.training.run.finish_run`), so it holds the weights, stats
and records its own job would write (tests/training/test_multiseed.py checks the bytes).

No global RNG is drawn while training: every SAE's initialisation and the batch order have their
own generators, which is why one fit can stand in for S jobs. Each seed has its own W&B run,
open while it trains, fed by a :class:`SeedLogger`. Which seeds to train and where their folders
are is :mod:`saeseeds.training.seed_jobs`'s.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, open_dict

from saeseeds.config.validation import validate_train_config
from saeseeds.sae import SAEConfig
from saeseeds.tracking import (
    build_wandb_logger,
    finish_wandb,
    record_wandb_run,
    wandb_run_info,
)
from saeseeds.training.checkpoint_io import RECORD_KEY, check_data, check_shapes
from saeseeds.training.datamodule import (
    ActivationDataModule,
    order_seed,
    training_rows,
    window_shards,
)
from saeseeds.training.lightning_plugins import AtomicCheckpointIO, RunRecord
from saeseeds.training.module import MultiSeedModule, seed_prefix
from saeseeds.training.preemption import StopSignals
from saeseeds.training.run import (
    TrainedSAE,
    build_trainer,
    describe,
    finish_run,
    fit_module,
    heldout_curve,
    initialised_sae,
    load_activations,
    log_complete,
    module_arguments,
    training_callbacks,
)
from saeseeds.training.seed_jobs import SeedRun, SeedsPlan
from saeseeds.training.step_precision import step_precision

log = logging.getLogger(__name__)


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


class SeedsRecord(RunRecord):
    """The job's config and its seeds (in SAE order) in every checkpoint, for resuming."""

    def __init__(self, job_config: dict[str, Any], seeds: list[int]):
        super().__init__(job_config)
        self.record = {**self.record, "seeds": list(seeds)}

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict) -> None:
        checkpoint[RECORD_KEY] = self.record


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


def train_seeds(
    cfg: DictConfig, plan: SeedsPlan, extra_callbacks: list[Callback] | None = None
) -> dict[int, dict[str, Any]]:
    """Train ``plan.train_seeds`` in one fit and write the folders of ``plan.to_write``; returns
    their metrics by seed."""
    started = time.time()
    sae_config = validate_train_config(cfg)
    with StopSignals() as signals:
        return _train_seeds(cfg, sae_config, plan, signals, started, extra_callbacks or [])


def _train_seeds(
    cfg: DictConfig,
    sae_config: SAEConfig,
    plan: SeedsPlan,
    signals: StopSignals,
    started: float,
    extra_callbacks: list[Callback],
) -> dict[int, dict[str, Any]]:
    from saeseeds.training.job import hydra_config, is_multirun

    seeds = plan.train_seeds
    L.seed_everything(seeds[0], workers=True)  # nothing in training draws from it (see above)
    source, splits, input_scale = load_activations(cfg, sae_config)
    rows = training_rows(splits.train, source.batch_size, window_shards(cfg), order_seed(cfg))
    saes = [initialised_sae(sae_config, rows, input_scale, seed) for seed in seeds]
    module = MultiSeedModule(saes, seeds, **module_arguments(sae_config, saes[0], input_scale))
    datamodule = ActivationDataModule(rows, splits.heldout, source.batch_size)
    checkpoint_io = AtomicCheckpointIO()
    ckpt_path = None
    precision_choice = step_precision(
        cfg, sae_config, saes[0].d_in, source.batch_size, plan.checkpoint
    )
    precision = precision_choice["precision"]
    if plan.checkpoint is not None and plan.ckpt_path is not None:
        check_shapes(plan.checkpoint, module, str(plan.ckpt_path))
        check_data(plan.checkpoint, splits.provenance, str(plan.ckpt_path))
        checkpoint_io.hand_over(plan.ckpt_path, plan.checkpoint)
        plan.checkpoint, ckpt_path = None, str(plan.ckpt_path)

    to_write = {run.seed: run for run in plan.to_write}
    multirun = is_multirun(hydra_config())
    wandb_loggers = {
        seed: seed_wandb_logger(run, multirun, resume=ckpt_path is not None)
        for seed, run in to_write.items()
    }
    loggers = [
        SeedLogger(logger, seed_prefix(seed))
        for seed, logger in wandb_loggers.items()
        if logger is not None
    ]
    record = SeedsRecord(plan.job_config, seeds)
    record.note_precision(precision_choice)
    snapshot_dirs = [to_write[seed].run_dir if seed in to_write else None for seed in seeds]
    callbacks = training_callbacks(
        cfg, plan.job_dir, splits, source.batch_size, signals, record, snapshot_dirs
    )
    trainer = build_trainer(
        cfg,
        sae_config,
        plan.job_dir,
        loggers,
        callbacks + extra_callbacks,
        checkpoint_io,
        precision,
    )
    for seed, logger in wandb_loggers.items():
        record_wandb_run(logger, to_write[seed].run_dir)
    log.info(
        "Training %d seeds %s of %s on %s (%s); folders: %s",
        len(seeds),
        seeds,
        describe(saes[0], seeds[0], splits),
        trainer.strategy.root_device,
        precision,
        ", ".join(str(run.run_dir) for run in to_write.values()),
    )
    fit = fit_module(trainer, module, datamodule, ckpt_path, precision_choice, started)
    fit.seeds_trained_together = list(seeds)
    curve = heldout_curve(trainer)
    results = {}
    for index, seed in enumerate(seeds):
        run = to_write.get(seed)
        if run is None:  # complete already; trained along only because the checkpoint holds it
            continue
        points = curve.curves[index] if curve is not None and index < len(curve.curves) else {}
        logger = wandb_loggers.get(seed)
        metrics = finish_run(
            run.cfg,
            run.run_dir,
            source,
            splits,
            TrainedSAE(saes[index], input_scale, points),
            fit,
            wandb_run_info(logger),
        )
        finish_wandb(logger, metrics)
        log_complete(run.run_dir, metrics)
        results[seed] = metrics
    return results
