"""Checks of values that a typed schema cannot express. Run before any data is read or trained.

Every failure raises :class:`ConfigError` naming the bad value and what would be valid.
"""

from __future__ import annotations

from omegaconf import DictConfig

from saeseeds.wandb_utils import VALID_MODES

VALID_PRECISIONS = ("32", "32-true", "16-mixed", "bf16-mixed", "bf16-true", "64", "64-true")
VALID_NORMALIZATIONS = ("scalar", "none")
VALID_ARCHITECTURES = ("topk",)


class ConfigError(ValueError):
    """A config value is out of range or inconsistent."""


def validate_train_config(cfg: DictConfig) -> None:
    seed = cfg.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed={seed!r} is not an integer; use e.g. seed=0 or -m seed=1,2,3.")
    validate_sae_config(cfg.sae)
    precision = cfg.trainer.precision
    if precision is not None and str(precision) not in VALID_PRECISIONS:
        raise ConfigError(
            f"trainer.precision={precision!r} is not valid; choose one of {VALID_PRECISIONS} "
            "or null (fp32 on CPU, bf16-mixed on a CUDA device that supports it)."
        )
    if cfg.logger.mode not in VALID_MODES:
        raise ConfigError(
            f"logger.mode={cfg.logger.mode!r} is not valid; choose one of {VALID_MODES}."
        )
    if cfg.trainer.checkpoint_every_n_steps <= 0:
        raise ConfigError(
            f"trainer.checkpoint_every_n_steps={cfg.trainer.checkpoint_every_n_steps} must be > 0."
        )
    if cfg.resume and cfg.ckpt_path:
        raise ConfigError("Set either resume=true or ckpt_path=..., not both.")


def validate_sae_config(sae: DictConfig) -> None:
    if sae.architecture not in VALID_ARCHITECTURES:
        raise ConfigError(
            f"sae.architecture={sae.architecture!r} is not available; choose one of "
            f"{VALID_ARCHITECTURES}."
        )
    if sae.n_features <= 0:
        raise ConfigError(f"sae.n_features={sae.n_features} must be a positive integer.")
    if sae.k <= 0:
        raise ConfigError(f"sae.k={sae.k} must be a positive integer (active latents per token).")
    if sae.k >= sae.n_features:
        raise ConfigError(
            f"sae.k={sae.k} must be smaller than sae.n_features={sae.n_features}; "
            f"valid k are 1..{sae.n_features - 1}."
        )
    if sae.lr is not None and sae.lr <= 0:
        raise ConfigError(f"sae.lr={sae.lr} must be > 0 (or null for the size-scaled default).")
    if sae.normalize not in VALID_NORMALIZATIONS:
        raise ConfigError(
            f"sae.normalize={sae.normalize!r} is not valid; choose one of {VALID_NORMALIZATIONS}."
        )
    if not 0.0 <= sae.decay_start_fraction <= 1.0:
        raise ConfigError(f"sae.decay_start_fraction={sae.decay_start_fraction} must be in [0, 1].")
    for name in ("warmup_steps", "dead_tokens_threshold", "init_sample_size"):
        if sae[name] < (0 if name == "warmup_steps" else 1):
            raise ConfigError(f"sae.{name}={sae[name]} is out of range.")
    if sae.grad_clip <= 0 or sae.auxk_alpha < 0:
        raise ConfigError(
            f"sae.grad_clip={sae.grad_clip} must be > 0 and sae.auxk_alpha={sae.auxk_alpha} >= 0."
        )
