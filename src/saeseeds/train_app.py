"""The training app, top to bottom: validate, seed, load activations, build the SAE, fit with
Lightning, evaluate on held-out data, write the run folder (contract v1) and mark it complete.

``train.py`` at the repository root is a thin Hydra entry point around :func:`train`.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from saeseeds import run_folder
from saeseeds.config.validation import ConfigError, validate_train_config
from saeseeds.data.base import ActivationSource, ActivationSplits, DataError
from saeseeds.datamodule import ActivationDataModule
from saeseeds.evaluation import evaluate_heldout
from saeseeds.lightning_module import SAETrainingModule
from saeseeds.loggers import build_wandb_logger, finish_wandb
from saeseeds.sae import TopKSAE, default_learning_rate

log = logging.getLogger(__name__)
TOP_EXAMPLES_PER_FEATURE = 5


def train(cfg: DictConfig, extra_callbacks: list[Callback] | None = None) -> dict[str, Any]:
    """Train one SAE as ``cfg`` says and return its final held-out metrics."""
    started = time.time()
    validate_train_config(cfg)
    run_dir = Path(cfg.paths.output_dir)
    ckpt_path = resume_checkpoint(cfg, run_dir)

    L.seed_everything(cfg.seed, workers=True)
    source = build_source(cfg)
    splits = source.load()
    input_scale = normalisation_scale(splits.train, cfg.sae.normalize)
    sae = build_sae(cfg, splits, input_scale)
    module = SAETrainingModule(
        sae,
        lr=cfg.sae.lr if cfg.sae.lr is not None else default_learning_rate(cfg.sae.n_features),
        input_scale=input_scale,
        auxk_alpha=cfg.sae.auxk_alpha,
        warmup_steps=cfg.sae.warmup_steps,
        decay_start_fraction=cfg.sae.decay_start_fraction,
        dead_tokens_threshold=cfg.sae.dead_tokens_threshold,
    )
    datamodule = ActivationDataModule(splits.train, splits.heldout, source.batch_size, cfg.seed)

    logger = build_wandb_logger(cfg, run_dir)
    checkpoints = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        save_top_k=0,
        save_last=True,
        every_n_train_steps=cfg.trainer.checkpoint_every_n_steps,
    )
    precision = choose_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        strategy=cfg.trainer.strategy,
        precision=precision,
        max_epochs=cfg.trainer.max_epochs,
        max_steps=cfg.trainer.max_steps,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        val_check_interval=cfg.trainer.val_check_interval,
        gradient_clip_val=cfg.sae.grad_clip,
        deterministic=cfg.trainer.deterministic,
        enable_progress_bar=cfg.trainer.enable_progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=run_dir,
        logger=logger if logger is not None else False,
        callbacks=[checkpoints, *(extra_callbacks or [])],
    )
    log.info(
        "Training %s on %s (%s) into %s",
        describe(cfg, splits),
        trainer.strategy.root_device,
        precision,
        run_dir,
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

    metrics = finish_run(cfg, run_dir, source, splits, module, trainer, precision, started)
    finish_wandb(logger, metrics)
    log.info(
        "Run complete: %s (held-out FVU %.4f, dead %.1f%%)",
        run_dir,
        metrics["fvu"],
        100 * metrics["dead_fraction"],
    )
    return metrics


def build_source(cfg: DictConfig) -> ActivationSource:
    try:
        return instantiate(cfg.data, _convert_="all")
    except InstantiationException as error:
        # Hydra wraps what a source's constructor raises; a DataError is for the user as it is.
        if isinstance(error.__cause__, DataError):
            raise error.__cause__ from None
        raise


def resume_checkpoint(cfg: DictConfig, run_dir: Path) -> str | None:
    if (run_dir / run_folder.COMPLETE_MARKER).exists():
        raise ConfigError(f"{run_dir} already holds a complete run; choose a new output folder.")
    if cfg.ckpt_path:
        path = Path(cfg.ckpt_path)
        if not path.is_file():
            raise ConfigError(f"ckpt_path={cfg.ckpt_path!r}: no such checkpoint file.")
        return str(path)
    if cfg.resume:
        path = run_dir / "checkpoints" / "last.ckpt"
        if not path.is_file():
            raise ConfigError(
                f"resume=true but {path} does not exist. Point hydra.run.dir at the interrupted "
                "run's folder, or pass ckpt_path=FILE."
            )
        return str(path)
    return None


def normalisation_scale(train: torch.Tensor, method: str) -> float:
    """s with E‖s·x‖² = d_in over the whole training set (seed-independent), or 1."""
    if method == "none":
        return 1.0
    mean_squared_norm = float(train.double().pow(2).sum(1).mean())
    if not math.isfinite(mean_squared_norm) or mean_squared_norm <= 0:
        raise ConfigError("The activations are all zero or not finite; cannot normalise them.")
    return math.sqrt(train.shape[1] / mean_squared_norm)


def build_sae(cfg: DictConfig, splits: ActivationSplits, input_scale: float) -> TopKSAE:
    generator = torch.Generator().manual_seed(cfg.seed)
    sample_rows = torch.randperm(len(splits.train), generator=generator)[: cfg.sae.init_sample_size]
    sae = TopKSAE(splits.d_in, cfg.sae.n_features, cfg.sae.k, cfg.sae.sparse_decoder)
    sae.initialize(splits.train[sample_rows] * input_scale, generator)
    return sae


def choose_precision(requested: str | None, accelerator: str) -> str:
    """fp32 on CPU (no bf16 units: bf16 matmuls are ~7x slower there); bf16-mixed on CUDA."""
    if requested is not None:
        return str(requested)
    uses_cuda = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    if uses_cuda and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def describe(cfg: DictConfig, splits: ActivationSplits) -> str:
    return (
        f"a Top-K SAE (d_in={splits.d_in}, n_features={cfg.sae.n_features}, k={cfg.sae.k}, "
        f"seed={cfg.seed}) on {len(splits.train)} tokens"
    )


def finish_run(
    cfg: DictConfig,
    run_dir: Path,
    source: ActivationSource,
    splits: ActivationSplits,
    module: SAETrainingModule,
    trainer: L.Trainer,
    precision: str,
    started: float,
) -> dict[str, Any]:
    """Evaluate the folded SAE on raw held-out activations and write every contract file."""
    folded = module.sae.folded_state(module.input_scale)
    raw_sae = TopKSAE(splits.d_in, cfg.sae.n_features, cfg.sae.k, cfg.sae.sparse_decoder)
    raw_sae.load_state_dict(folded)
    raw_sae.eval()

    metrics, fire_count, activation_sum = evaluate_heldout(
        raw_sae, splits.heldout, source.batch_size
    )
    metrics.update(source.evaluate(lambda x: raw_sae(x).reconstruction))
    top_examples = source.top_examples(raw_sae.encode, TOP_EXAMPLES_PER_FEATURE)
    metrics.update(
        steps=int(trainer.global_step),
        tokens_seen=int(trainer.global_step) * source.batch_size,
        heldout_tokens=len(splits.heldout),
        wall_time_s=round(time.time() - started, 3),
    )

    resolved = OmegaConf.to_container(cfg, resolve=True)
    run_folder.write_weights(run_dir, folded)
    run_folder.write_feature_stats(run_dir, fire_count, activation_sum, len(splits.heldout))
    run_folder.write_json(
        run_dir,
        "cfg.json",
        run_folder.sae_cfg(cfg.sae, splits.d_in, splits.provenance, module.input_scale, cfg.seed),
    )
    run_folder.write_json(run_dir, "metrics.json", metrics)
    if top_examples is not None:
        run_folder.write_json(run_dir, "top_examples.json", top_examples)
    source.write_artifacts(run_dir)
    run_folder.write_json(
        run_dir,
        "environment.json",
        run_folder.environment(
            seed=cfg.seed,
            device=str(trainer.strategy.root_device),
            precision=precision,
            provenance=splits.provenance,
            config_hash=run_folder.config_hash(without_paths(resolved)),
            wandb_run=wandb_run_info(trainer),
        ),
    )
    run_folder.mark_complete(run_dir)
    return metrics


def without_paths(resolved: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in resolved.items() if key not in ("paths", "logger")}


def wandb_run_info(trainer: L.Trainer) -> dict[str, Any] | None:
    from lightning.pytorch.loggers import WandbLogger

    logger = trainer.logger
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
