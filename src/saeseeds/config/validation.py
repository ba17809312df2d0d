"""Checks of values that a typed schema cannot express. Run before any data is read or trained.

Every failure raises :class:`ConfigError` naming the bad value and what would be valid. The SAE
group is checked by its architecture's own config dataclass (its ``__post_init__``), built here
from the composed config, so each architecture owns its checks.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from saeseeds.errors import ConfigError
from saeseeds.sae import SAEConfig, architecture
from saeseeds.tracking import VALID_MODES

VALID_PRECISIONS = ("32", "32-true", "16-mixed", "bf16-mixed", "bf16-true", "64", "64-true")
MAX_SEED = 2**32


def validate_train_config(cfg: DictConfig) -> SAEConfig:
    """Check the composed training config; return the SAE's typed config."""
    seed = cfg.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < MAX_SEED:
        raise ConfigError(
            f"seed={seed!r} is not valid; use an integer in [0, 2^32), e.g. seed=0 or "
            "-m seed=1,2,3."
        )
    sae_config = sae_config_of(cfg.sae)
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
    return sae_config


def sae_config_of(sae: DictConfig) -> SAEConfig:
    """The architecture's config dataclass, built (and so checked) from the ``sae`` group."""
    config_class = architecture(str(sae.architecture)).Config
    values = OmegaConf.to_container(sae, resolve=True)
    known = set(config_class.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"sae.{unknown[0]} is not a field of sae.architecture={sae.architecture!r}; its "
            f"fields are {sorted(known)}. Choose the architecture with sae=<name>, not "
            "sae.architecture=<name>."
        )
    return config_class(**values)
