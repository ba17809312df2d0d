"""The fit of a job, top to bottom: seed, load the activations once, initialise each seed's SAE,
fit them together with Lightning on one batch stream (:class:`SAETrainingModule`), then evaluate
and write each seed's folder (:func:`saeseeds.training.finish.finish_run`). One seed is S = 1.

:mod:`saeseeds.training.job` decides which seeds a job trains and where (start, resume, skip)
and calls :func:`train_plan`; :func:`train` does the same for one seed outside a Hydra job.
Checkpoints are written atomically and checked before a resume
(:mod:`saeseeds.training.lifecycle.checkpoint_io`); SIGTERM and SIGINT save one at the current
step (:mod:`saeseeds.training.lifecycle.preemption`). Under DDP every process runs this flow up
to the end of the fit; rank 0 alone evaluates and writes the run folders.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar, TQDMProgressBar
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE
from omegaconf import DictConfig, OmegaConf

from saeseeds import contract
from saeseeds.activations.base import ActivationSource, ActivationSplits
from saeseeds.activations.controls import with_control
from saeseeds.activations.shards import TrainingRows
from saeseeds.config.trainer import APP_FIELDS
from saeseeds.config.validation import validate_train_config
from saeseeds.errors import ConfigError, DataError
from saeseeds.sae import SAE, SAEConfig, build_sae, fused_topk
from saeseeds.tracking import finish_wandb, record_wandb_run, start_wandb_run, wandb_run_info
from saeseeds.training.callbacks import CURVE_FRACTIONS, HeldoutCurve, StopOnNonFinite
from saeseeds.training.datamodule import (
    ActivationDataModule,
    WindowedRows,
    init_sample,
    order_seed,
    training_rows,
    window_shards,
)
from saeseeds.training.finish import FitRecord, TrainedSAE, finish_run, log_complete
from saeseeds.training.lifecycle.checkpoint_io import check_data, check_shapes
from saeseeds.training.lifecycle.lightning_plugins import AtomicCheckpointIO, RunRecord
from saeseeds.training.lifecycle.preemption import CheckpointOnSignal, StopSignals
from saeseeds.training.lifecycle.records import hydra_config, is_multirun
from saeseeds.training.lifecycle.resume import SKIP, JobPlan, plan_runs
from saeseeds.training.loggers import job_loggers, one_console_line_per_lightning_message
from saeseeds.training.module import SAETrainingModule, upgrade_checkpoint
from saeseeds.training.seeds import job_runs
from saeseeds.training.snapshots import snapshot_writer
from saeseeds.training.step_precision import step_precision

log = logging.getLogger(__name__)


def train(cfg: DictConfig, extra_callbacks: list[Callback] | None = None) -> dict[str, Any]:
    """Train the one SAE of ``cfg`` (``seed=S``) into ``paths.output_dir`` and return its final
    held-out metrics, outside a Hydra job's records and locks (scripts, tests). An interrupted
    folder is resumed only with ``resume=true``; a folder already complete with this config is
    left alone and its recorded metrics are returned."""
    if cfg.get("seeds") is not None:
        raise ConfigError("train() trains one seed; run a 'seeds=[...]' job with run_job().")
    validate_train_config(cfg)
    plan = plan_runs(cfg, job_runs(cfg, None), auto_resume=False)
    run = plan.runs[0]
    if run.action == SKIP:
        log.info("Skipped %s: %s.", run.run_dir, plan.message)
        return json.loads((run.run_dir / contract.METRICS_FILE).read_text(encoding="utf-8"))
    return train_plan(cfg, plan, extra_callbacks)[run.seed]


def train_plan(
    cfg: DictConfig, plan: JobPlan, extra_callbacks: list[Callback] | None = None
) -> dict[int, dict[str, Any]]:
    """Train ``plan.train_seeds`` in one fit and write the folders of ``plan.to_write``; returns
    their metrics by seed."""
    started = time.time()
    sae_config = validate_train_config(cfg)
    try:
        with StopSignals() as signals:
            return _train_plan(cfg, sae_config, plan, signals, started, list(extra_callbacks or []))
    finally:
        fused_topk.WORKSPACE.release()  # the Top-K forward's buffer: the job's work is done


def _train_plan(
    cfg: DictConfig,
    sae_config: SAEConfig,
    plan: JobPlan,
    signals: StopSignals,
    started: float,
    extra_callbacks: list[Callback],
) -> dict[int, dict[str, Any]]:
    seeds = plan.train_seeds
    one_console_line_per_lightning_message()
    # Nothing in training draws from the global RNGs: every SAE's initialisation and the batch
    # order have their own generators, which is why one fit can stand in for S jobs.
    L.seed_everything(seeds[0], workers=True)
    source, splits, input_scale = load_activations(cfg, sae_config)
    rows = training_rows(splits.train, source.batch_size, window_shards(cfg), order_seed(cfg))
    saes = [initialised_sae(sae_config, rows, input_scale, seed) for seed in seeds]
    arguments = module_arguments(sae_config, saes[0], input_scale)
    module = SAETrainingModule(saes, seeds, **arguments, prefixed=not plan.own_folder)
    datamodule = ActivationDataModule(rows, source.batch_size, *step_events(cfg))
    checkpoint_io = AtomicCheckpointIO()
    ckpt_path = None
    precision_choice = step_precision(
        cfg, sae_config, saes[0].d_in, source.batch_size, plan.checkpoint
    )
    precision = precision_choice["precision"]
    if plan.checkpoint is not None and plan.ckpt_path is not None:
        upgrade_checkpoint(plan.checkpoint)
        check_shapes(plan.checkpoint, module, str(plan.ckpt_path))
        check_data(plan.checkpoint, splits.provenance, str(plan.ckpt_path))
        checkpoint_io.hand_over(plan.ckpt_path, plan.checkpoint)
        plan.checkpoint, ckpt_path = None, str(plan.ckpt_path)  # Lightning owns it from here

    to_write = {run.seed: run for run in plan.to_write}
    wandb_loggers, loggers = job_loggers(plan, is_multirun(hydra_config()))
    record = RunRecord(plan.record_config, seeds)
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
        start_wandb_run(logger)
    device = trainer.strategy.root_device
    what = describe(saes[0], seeds[0], splits)
    if plan.own_folder:
        log.info("Training %s on %s (%s) into %s", what, device, precision, plan.job_dir)
    else:
        folders = ", ".join(str(run.run_dir) for run in to_write.values())
        log.info(
            "Training %d seeds %s of %s on %s (%s); folders: %s",
            len(seeds), seeds, what, device, precision, folders,
        )  # fmt: skip
    fit = fit_module(trainer, module, datamodule, ckpt_path, precision_choice, started)
    if not trainer.is_global_zero:  # DDP: rank 0 evaluates and writes the run folders
        return {}
    if not plan.own_folder:
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


def load_activations(
    cfg: DictConfig, sae_config: SAEConfig
) -> tuple[ActivationSource, ActivationSplits, float]:
    """The job's activation source, its splits and the input scale (the same for every seed)."""
    source = build_source(cfg)
    splits = source.load()
    return source, splits, normalisation_scale(splits.train, sae_config.normalize)


# Fields of the data group that say how training reads the rows, not what the source gives.
READER_FIELDS = ("control", "control_seed", "window_shards")


def module_arguments(sae_config: SAEConfig, sae: SAE, input_scale: float) -> dict[str, Any]:
    return dict(
        lr=sae_config.lr if sae_config.lr is not None else sae.default_lr(),
        input_scale=input_scale,
        warmup_steps=sae_config.warmup_steps,
        decay_start_fraction=sae_config.decay_start_fraction,
        dead_tokens_threshold=sae_config.dead_tokens_threshold,
        grad_clip=sae_config.grad_clip,
    )


def step_events(cfg: DictConfig) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """The step intervals and fractions of training at which the callbacks act (checkpoints; the
    held-out curve and snapshots), where a block of steps must end."""
    fractions = list(CURVE_FRACTIONS)
    if cfg.trainer.get("snapshots", False):
        fractions += list(cfg.trainer.get("snapshot_fractions") or [])
    every = int(cfg.trainer.checkpoint_every_n_steps or 0)
    return (every,), tuple(float(fraction) for fraction in fractions)


def training_callbacks(
    cfg: DictConfig,
    run_dir: Path,
    splits: ActivationSplits,
    batch_size: int,
    signals: StopSignals,
    record: RunRecord,
    snapshot_dirs: list[Path | None] | None = None,
) -> list[Callback]:
    """Periodic checkpoints into ``run_dir/checkpoints``, the held-out curve, the run's record
    (with its data's identity) in every checkpoint, the snapshots (into ``snapshot_dirs``, one
    folder per SAE; ``run_dir`` for one SAE), the stop on a non-finite loss or weight, and the
    checkpoint on SIGTERM/SIGINT."""
    checkpoint_dir = run_dir / contract.CHECKPOINT_DIR
    checkpoints = ModelCheckpoint(
        dirpath=checkpoint_dir,
        save_top_k=0,
        save_last=True,
        every_n_train_steps=cfg.trainer.checkpoint_every_n_steps,
        # Always last.ckpt: a resumed run whose folder was moved would otherwise write
        # last-v1.ckpt beside the old one, and the next resume would read the stale one.
        enable_version_counter=False,
    )
    on_signal = CheckpointOnSignal(
        signals,
        checkpoint_dir / contract.LAST_CHECKPOINT,
        "Re-run the same command with resume=true (a multirun resumes by itself) to continue.",
    )
    record.note_data(splits.provenance)
    curve = HeldoutCurve(splits.heldout, batch_size)
    snapshots = snapshot_writer(cfg.trainer, snapshot_dirs or [run_dir], batch_size)
    # The non-finite stop first: no callback after it (the curve, a snapshot) sees a NaN step.
    return [StopOnNonFinite(), checkpoints, curve, record, snapshots, on_signal]


def build_trainer(
    cfg: DictConfig,
    sae_config: SAEConfig,
    run_dir: Path,
    loggers: list[Any],
    callbacks: list[Callback],
    checkpoint_io: AtomicCheckpointIO,
    precision: str,
) -> L.Trainer:
    try:
        return L.Trainer(
            **lightning_arguments(cfg.trainer),
            precision=precision,
            enable_model_summary=False,
            # Several processes (DDP): SeededBatchSampler gives each its shard of every batch.
            use_distributed_sampler=False,
            default_root_dir=run_dir,
            logger=loggers if loggers else False,
            callbacks=[*callbacks, *progress_bar(cfg.trainer)],
            plugins=[checkpoint_io, *cluster_plugins()],
        )
    except (MisconfigurationException, TypeError, ValueError) as error:
        # Lightning's own checks of the trainer group (an option or a combination it refuses).
        raise ConfigError(f"the trainer group is not valid for Lightning: {error}") from None


def progress_bar(trainer_cfg: DictConfig) -> list[Callback]:
    """Lightning's own bar, redrawn at the steps the metrics it shows are logged
    (``log_every_n_steps``) instead of every step, which cost a small SAE's job about a second."""
    if not trainer_cfg.enable_progress_bar:
        return []
    refresh_rate = max(1, int(trainer_cfg.log_every_n_steps or 1))
    if _RICH_AVAILABLE:  # the bar Lightning would pick itself
        return [RichProgressBar(refresh_rate=refresh_rate)]
    return [TQDMProgressBar(refresh_rate=refresh_rate)]


def fit_module(
    trainer: L.Trainer,
    module: L.LightningModule,
    datamodule: ActivationDataModule,
    ckpt_path: str | None,
    precision_choice: dict[str, Any],
    started: float,
) -> FitRecord:
    """``trainer.fit``, timed; refuses a fit that took no optimisation step."""
    fit_started = time.perf_counter()
    with warnings.catch_warnings():
        # Lightning warns that under manual optimisation a checkpoint holds the weights after
        # the step's update: so they did under automatic optimisation, and resuming needs them.
        warnings.filterwarnings("ignore", message=MANUAL_CHECKPOINT_WARNING, category=UserWarning)
        # On a machine of many cores Lightning suggests DataLoader workers: the batches come from
        # a window of shards in this process, the next window loading in a thread (workers would
        # each load windows of their own), and a job has no option for them.
        warnings.filterwarnings("ignore", message=LOADER_WORKERS_WARNING)
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    fit_time_s = time.perf_counter() - fit_started
    if trainer.global_step == 0:
        raise ConfigError(
            "training ended after 0 optimisation steps, so no SAE was saved; check "
            "trainer.max_epochs, trainer.max_steps and trainer.kwargs (e.g. limit_train_batches)."
        )
    return FitRecord(
        steps=int(trainer.global_step),
        device=str(trainer.strategy.root_device),
        precision_choice=precision_choice,
        started=started,
        fit_time_s=round(fit_time_s, 3),
    )


def heldout_curve(trainer: L.Trainer) -> HeldoutCurve | None:
    curves = [callback for callback in trainer.callbacks if isinstance(callback, HeldoutCurve)]
    return curves[0] if curves else None


MANUAL_CHECKPOINT_WARNING = "Using ModelCheckpoint with manual optimization"
LOADER_WORKERS_WARNING = r"The 'train_dataloader' does not have many workers"
# Lightning options about optimisation steps, which this module takes itself, and what to use.
STEP_KWARGS = {
    "accumulate_grad_batches": "Use a larger data.batch_size.",
    "gradient_clip_val": "Set sae.grad_clip.",
    "gradient_clip_algorithm": "sae.grad_clip clips each SAE's gradient norm.",
    "limit_train_batches": "Set trainer.max_steps.",
}


def lightning_arguments(trainer_cfg: DictConfig) -> dict[str, Any]:
    """The ``trainer`` group as ``lightning.Trainer`` keywords: every field but the app's own,
    plus ``trainer.kwargs``; precision is chosen separately (:mod:`.step_precision`)."""
    arguments = OmegaConf.to_container(trainer_cfg, resolve=True)
    extra = arguments.pop("kwargs", {}) or {}
    for name, instead in STEP_KWARGS.items():
        if name in extra:
            raise ConfigError(
                f"trainer.kwargs.{name}={extra[name]!r} is not supported: the module takes "
                f"several optimisation steps per Lightning batch and runs them itself. {instead}"
            )
    for name in (*APP_FIELDS, "precision"):
        arguments.pop(name, None)
    return {**arguments, **extra}


def build_source(cfg: DictConfig) -> ActivationSource:
    """The ``data`` option's source, wrapped in its control when ``data.control`` is set."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    control, control_seed = data.get("control", "none"), data.get("control_seed", 0)
    window = data.get("window_shards", 1)
    if not isinstance(window, int) or window < 1:
        raise ConfigError(f"data.window_shards={window!r} must be a positive integer.")
    for name in READER_FIELDS:
        data.pop(name, None)
    try:
        return with_control(instantiate(data, _convert_="all"), control, control_seed)
    except InstantiationException as error:
        # Hydra wraps what a source's constructor raises; a DataError is for the user as it is.
        if isinstance(error.__cause__, DataError):
            raise error.__cause__ from None
        raise


def cluster_plugins() -> list[Any]:
    """Under SLURM, turn off Lightning's own requeue (SIGUSR1: an hpc_ckpt the next start would
    load unchecked); preemption is handled by the SIGTERM checkpoint and the job's resume."""
    if SLURMEnvironment.detect():
        return [SLURMEnvironment(auto_requeue=False)]
    return []


def normalisation_scale(train: TrainingRows, method: str) -> float:
    """s with E‖s·x‖² = d_in over the whole training prefix (exact, from its per-shard
    statistics; seed-independent), or 1."""
    if method == "none":
        return 1.0
    mean_squared_norm = train.mean_squared_norm()
    if not math.isfinite(mean_squared_norm) or mean_squared_norm <= 0:
        raise DataError("The activations are all zero or not finite; cannot normalise them.")
    return math.sqrt(train.d_in / mean_squared_norm)


def initialised_sae(
    sae_config: SAEConfig, rows: WindowedRows, input_scale: float, seed: int
) -> SAE:
    """The SAE of ``seed``, initialised from a sample of the rows training reads first."""
    generator = torch.Generator().manual_seed(seed)
    sample = init_sample(rows, sae_config.init_sample_size, generator)
    sae = build_sae(rows.train.d_in, sae_config)
    sae.initialize(sample * input_scale, generator)
    return sae


def describe(sae: SAE, seed: int, splits: ActivationSplits) -> str:
    fields = ", ".join(f"{name}={value}" for name, value in sae.cfg_fields().items())
    return (
        f"a {sae.architecture} SAE (d_in={sae.d_in}, n_features={sae.n_features}"
        f"{', ' + fields if fields else ''}, seed={seed}) on {len(splits.train)} tokens"
    )
