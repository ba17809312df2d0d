"""The training app, top to bottom: validate, decide what the run folder needs (start, resume or
skip), seed, load activations, build the SAE, fit with Lightning, evaluate on held-out data,
write the run folder and mark it complete.

``train.py`` at the repository root is a thin Hydra entry point; :mod:`saeseeds.training.job`
wraps :func:`train` for one Hydra job. Checkpoints are written atomically and checked before a
resume (:mod:`saeseeds.training.checkpoint_io`); SIGTERM and SIGINT save one at the current step
(:mod:`saeseeds.training.preemption`). A multi-seed job (``seeds=[...]``) reuses these steps for
several SAEs in one fit (:mod:`saeseeds.training.multiseed`). Under DDP every process runs this
flow up to the end of the fit; rank 0 alone evaluates and writes the run folder.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from saeseeds import contract
from saeseeds.activations.base import ActivationSource, ActivationSplits
from saeseeds.activations.controls import with_control
from saeseeds.activations.shards import TrainingRows
from saeseeds.config.trainer import APP_FIELDS
from saeseeds.config.validation import validate_train_config
from saeseeds.errors import ConfigError, DataError
from saeseeds.sae import SAE, SAEConfig, build_sae
from saeseeds.tracking import (
    build_wandb_logger,
    finish_wandb,
    record_wandb_run,
    wandb_run_info,
)
from saeseeds.training import lm_eval, run_folder
from saeseeds.training.callbacks import HeldoutCurve, StopOnNonFinite
from saeseeds.training.checkpoint_io import check_data, check_shapes
from saeseeds.training.datamodule import (
    ActivationDataModule,
    WindowedRows,
    init_sample,
    order_seed,
    training_rows,
    window_shards,
)
from saeseeds.training.heldout_codes import write_heldout_codes
from saeseeds.training.lightning_plugins import AtomicCheckpointIO, RunRecord
from saeseeds.training.metrics import evaluate_ground_truth, evaluate_heldout
from saeseeds.training.module import SAETrainingModule
from saeseeds.training.preemption import CheckpointOnSignal, StopSignals
from saeseeds.training.resume import RESUME, SKIP, JobPlan, plan_job
from saeseeds.training.snapshots import snapshot_cost, snapshot_writer
from saeseeds.training.step_precision import step_precision

log = logging.getLogger(__name__)
TOP_EXAMPLES_PER_FEATURE = 5


def train(
    cfg: DictConfig, extra_callbacks: list[Callback] | None = None, plan: JobPlan | None = None
) -> dict[str, Any]:
    """Train one SAE as ``cfg`` says and return its final held-out metrics.

    ``plan`` is what the job decided about its folder; without one it is decided here, as for a
    single run (an interrupted folder is resumed only with ``resume=true``). A folder already
    complete with this config is left alone and its recorded metrics are returned.
    """
    started = time.time()
    sae_config = validate_train_config(cfg)
    run_dir = Path(cfg.paths.output_dir)
    run_config = contract.run_config(OmegaConf.to_container(cfg, resolve=True))
    if plan is None:
        plan = plan_job(cfg, run_dir, run_config, auto_resume=False)
    if plan.action == SKIP:
        log.info("Skipped %s: %s.", run_dir, plan.message)
        return json.loads((run_dir / contract.METRICS_FILE).read_text(encoding="utf-8"))
    with StopSignals() as signals:
        return _train(cfg, sae_config, run_dir, run_config, plan, signals, extra_callbacks, started)


def _train(
    cfg: DictConfig,
    sae_config: SAEConfig,
    run_dir: Path,
    run_config: dict[str, Any],
    plan: JobPlan,
    signals: StopSignals,
    extra_callbacks: list[Callback] | None,
    started: float,
) -> dict[str, Any]:
    L.seed_everything(cfg.seed, workers=True)
    source, splits, input_scale = load_activations(cfg, sae_config)
    rows = training_rows(splits.train, source.batch_size, window_shards(cfg), order_seed(cfg))
    sae = initialised_sae(sae_config, rows, input_scale, cfg.seed)
    module = SAETrainingModule(sae, **module_arguments(sae_config, sae, input_scale))
    datamodule = ActivationDataModule(rows, splits.heldout, source.batch_size)
    checkpoint_io = AtomicCheckpointIO()
    ckpt_path = None
    resumed = plan.checkpoint if plan.action == RESUME else None
    precision_choice = step_precision(cfg, sae_config, sae.d_in, source.batch_size, resumed)
    precision = precision_choice["precision"]
    if plan.action == RESUME and plan.checkpoint is not None and plan.ckpt_path is not None:
        check_shapes(plan.checkpoint, module, str(plan.ckpt_path))
        check_data(plan.checkpoint, splits.provenance, str(plan.ckpt_path))
        checkpoint_io.hand_over(plan.ckpt_path, plan.checkpoint)
        plan.checkpoint, ckpt_path = None, str(plan.ckpt_path)  # Lightning owns it from here

    logger = build_wandb_logger(cfg, run_dir, resume=ckpt_path is not None)
    record = RunRecord(run_config)
    record.note_precision(precision_choice)
    callbacks = training_callbacks(cfg, run_dir, splits, source.batch_size, signals, record)
    trainer = build_trainer(
        cfg,
        sae_config,
        run_dir,
        [logger] if logger is not None else [],
        callbacks + list(extra_callbacks or []),
        checkpoint_io,
        precision,
    )
    record_wandb_run(logger, run_dir)
    log.info(
        "Training %s on %s (%s) into %s",
        describe(sae, cfg.seed, splits),
        trainer.strategy.root_device,
        precision,
        run_dir,
    )
    fit = fit_module(trainer, module, datamodule, ckpt_path, precision_choice, started)
    if not trainer.is_global_zero:  # DDP: rank 0 evaluates and writes the run folder
        return {}
    curve = heldout_curve(trainer)
    metrics = finish_run(
        cfg,
        run_dir,
        source,
        splits,
        TrainedSAE(module.sae, input_scale, curve.points if curve else {}),
        fit,
        wandb_run_info(trainer.logger),
    )
    finish_wandb(logger, metrics)
    log_complete(run_dir, metrics)
    return metrics


@dataclass
class TrainedSAE:
    """One trained SAE (in training units) and what its training measured."""

    sae: SAE
    input_scale: float
    heldout_fvu_curve: dict[str, float]


@dataclass
class FitRecord:
    """What one ``trainer.fit`` did; shared by every SAE it trained."""

    steps: int
    device: str
    precision_choice: dict[str, Any]
    """The precision and how it was chosen (``step_precision.step_precision``)."""
    started: float  # time.time() at the start of the job
    fit_time_s: float
    seeds_trained_together: list[int] | None = None

    @property
    def precision(self) -> str:
        return self.precision_choice["precision"]


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
    )


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
            gradient_clip_val=sae_config.grad_clip,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            # Several processes (DDP): SeededBatchSampler gives each its shard of every batch.
            use_distributed_sampler=False,
            default_root_dir=run_dir,
            logger=loggers if loggers else False,
            callbacks=callbacks,
            plugins=[checkpoint_io, *cluster_plugins()],
        )
    except (MisconfigurationException, TypeError, ValueError) as error:
        # Lightning's own checks of the trainer group (an option or a combination it refuses).
        raise ConfigError(f"the trainer group is not valid for Lightning: {error}") from None


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


def log_complete(run_dir: Path, metrics: dict[str, Any]) -> None:
    log.info(
        "Run complete: %s (held-out FVU %.4f, L0 %.1f, dead %.1f%%)",
        run_dir,
        metrics["fvu"],
        metrics["l0"],
        100 * metrics["dead_fraction"],
    )


def lightning_arguments(trainer_cfg: DictConfig) -> dict[str, Any]:
    """The ``trainer`` group as ``lightning.Trainer`` keywords: every field but the app's own,
    plus ``trainer.kwargs``; precision is chosen separately (:mod:`.step_precision`)."""
    arguments = OmegaConf.to_container(trainer_cfg, resolve=True)
    extra = arguments.pop("kwargs", {}) or {}
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


def finish_run(
    cfg: DictConfig,
    run_dir: Path,
    source: ActivationSource,
    splits: ActivationSplits,
    trained: TrainedSAE,
    fit: FitRecord,
    wandb_run: dict[str, Any] | None,
) -> dict[str, Any]:
    """Evaluate the folded SAE on raw held-out activations and write every contract file."""
    folded = trained.sae.folded_state(trained.input_scale)
    raw_sae = build_sae(trained.sae.d_in, trained.sae.config)
    raw_sae.load_folded(folded)
    raw_sae.eval()

    metrics, fire_count, activation_sum = evaluate_heldout(
        raw_sae, splits.heldout, source.batch_size
    )
    metrics.update(evaluate_ground_truth(raw_sae, source.ground_truth()))
    context = source.text_context()
    top_examples = None
    if context is not None:
        metrics.update(lm_eval.ce_loss_metrics(context, lambda x: raw_sae(x).reconstruction))
        top_examples = lm_eval.top_examples(context, raw_sae.encode, TOP_EXAMPLES_PER_FEATURE)
    metrics.update(
        heldout_fvu_curve=dict(trained.heldout_fvu_curve),
        steps=fit.steps,
        tokens_seen=fit.steps * source.batch_size,
        heldout_tokens=len(splits.heldout),
        fit_time_s=fit.fit_time_s,
        wall_time_s=round(time.time() - fit.started, 3),
    )
    metrics.update(snapshot_cost(run_dir))
    codes = cfg.trainer.heldout_codes
    metrics.update(write_heldout_codes(run_dir, raw_sae, splits.heldout, source.batch_size, codes))

    resolved = OmegaConf.to_container(cfg, resolve=True)
    run_folder.write_weights(run_dir, folded)
    run_folder.write_feature_stats(run_dir, fire_count, activation_sum, len(splits.heldout))
    run_folder.write_json(
        run_dir,
        contract.CFG_FILE,
        run_folder.sae_cfg(trained.sae, splits.provenance, trained.input_scale, cfg.seed),
    )
    run_folder.write_metrics(run_dir, metrics)
    if top_examples is not None:
        run_folder.write_json(run_dir, contract.TOP_EXAMPLES_FILE, top_examples)
    source.write_artifacts(run_dir)
    run_folder.write_json(
        run_dir,
        contract.ENVIRONMENT_FILE,
        run_folder.environment(
            seed=cfg.seed,
            device=fit.device,
            precision=fit.precision,
            precision_choice=fit.precision_choice,
            provenance=splits.provenance,
            resolved_config=resolved,
            wandb_run=wandb_run,
            seeds_trained_together=fit.seeds_trained_together,
        ),
    )
    run_folder.mark_complete(run_dir)
    return metrics
