"""Checks of values that a typed schema cannot express. Run before any data is read or trained.

Every failure raises :class:`ConfigError` naming the bad value and what would be valid. Two
checks cover every group, whatever its schema: no number may be NaN or infinite (``sae.lr=inf``
would train a NaN SAE, and comparisons such as ``lr > 0`` let NaN through), and every seed (a key
named ``seed`` or ``*_seed``) is an integer in [0, 2^32). The SAE group is then checked by its
architecture's own config dataclass (its ``__post_init__``), built here from the composed config,
so each architecture owns its checks. The configs import no torch (:mod:`saeseeds.sae.configs`),
and torch is imported here only where a GPU must be asked about, so a typo fails in about a
second.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from saeseeds.config.trainer import check_saved_extras
from saeseeds.errors import ConfigError
from saeseeds.tracking import VALID_MODES

if TYPE_CHECKING:
    from saeseeds.sae import SAEConfig

VALID_PRECISIONS = (
    "auto",
    "32",
    "32-true",
    "16-mixed",
    "bf16-mixed",
    "bf16-true",
    "64",
    "64-true",
)
# One range for every seed: Lightning's seed_everything (``seed``) and numpy's legacy seeding take
# 32-bit seeds; torch generators (the data, control, split and model seeds) take up to 2^64 - 1
# and overflow past it. 2^32 seeds are plenty, and one rule is easier to keep in mind.
MAX_SEED = 2**32
# Seeds whose null has a meaning: order_seed=null lets the batch order follow ``seed``.
NULLABLE_SEEDS = ("order_seed",)
# trainer.accelerator values Lightning accepts without a plugin. CUDA and MPS are checked here;
# Lightning checks TPUs (xla) itself when the Trainer is built.
KNOWN_ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu", "xla")
# What a user must set for options that have no default, and an example.
# Strategies that train in worker processes and hand only the weights back to the main one (not
# the step count, the held-out curve or the dead-latent tracker): the run folder would be wrong.
WORKER_STRATEGIES = ("ddp_spawn", "ddp_fork", "ddp_notebook", "xla")
REQUIRED_HINTS = {
    "data.path": "data=activations needs data.path=FILE, a .safetensors or .npy [N, d_in] matrix",
    "data.corpus.paths": "data=text_files needs 'data.corpus.paths=[notes.txt,more/]'",
}


def validate_train_config(cfg: DictConfig) -> SAEConfig:
    """Check the composed training config; return the SAE's typed config."""
    check_required(cfg)
    check_numbers(cfg)
    check_seeds(cfg)
    precision = cfg.trainer.precision
    if precision is not None and str(precision) not in VALID_PRECISIONS:
        raise ConfigError(
            f"trainer.precision={precision!r} is not valid; choose one of {VALID_PRECISIONS} "
            "or null (the same as auto: bf16-mixed where the device makes the step measurably "
            "faster, else 32-true)."
        )
    if cfg.logger.mode not in VALID_MODES:
        raise ConfigError(
            f"logger.mode={cfg.logger.mode!r} is not valid; choose one of {VALID_MODES}."
        )
    if cfg.trainer.checkpoint_every_n_steps <= 0:
        raise ConfigError(
            f"trainer.checkpoint_every_n_steps={cfg.trainer.checkpoint_every_n_steps} must be > 0."
        )
    if cfg.trainer.log_every_n_steps < 1:
        raise ConfigError(
            f"trainer.log_every_n_steps={cfg.trainer.log_every_n_steps} is not valid; log every "
            "N >= 1 steps (e.g. trainer.log_every_n_steps=10), or logger=none to log nothing."
        )
    if cfg.resume and cfg.ckpt_path:
        raise ConfigError("Set either resume=true or ckpt_path=..., not both.")
    check_trainer(cfg.trainer)
    check_saved_extras(cfg.trainer)
    return sae_config_of(cfg.sae)


def thread_count(value: Any) -> int | None:
    """``threads`` (train.py and build_store.py) as a number of torch CPU threads; None leaves
    torch's default."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"threads={value!r} is not valid; use a positive integer, the positive number of "
            "torch CPU threads per job (e.g. threads=1 with hydra/launcher=joblib "
            "hydra.launcher.n_jobs=<cores>), or null (torch's default)."
        )
    return value


def is_seed(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and 0 <= value < MAX_SEED


def check_seeds(cfg: DictConfig) -> None:
    """``seeds``: null, or distinct seeds with an ``order_seed`` (one job trains them on one
    batch stream) on one device."""
    order_seed = cfg.get("order_seed")
    seeds = cfg.get("seeds")
    if seeds is None:
        return
    example = "e.g. 'seeds=[1,2,3]' order_seed=0"
    values = list(seeds) if isinstance(seeds, ListConfig | list) else None
    if not values or not all(is_seed(value) for value in values):
        raise ConfigError(
            f"seeds={seeds!r} is not valid; use a list of integers in [0, 2^32), {example}."
        )
    if len(set(values)) != len(values):
        raise ConfigError(f"seeds={values} repeats a seed; list each seed once.")
    if order_seed is None:
        raise ConfigError(
            f"seeds={values} trains the seeds on one batch stream, so it needs the seed of that "
            f"stream: add order_seed=N ({example}). Each seed's folder is then the one "
            "`seed=S order_seed=N` would write."
        )
    if cfg.get("ckpt_path"):
        raise ConfigError(
            "ckpt_path=... resumes one run; with seeds=[...] use resume=true (a multirun "
            "resumes by itself)."
        )
    if str(cfg.trainer.strategy) != "auto" or str(cfg.trainer.devices) not in ("auto", "1"):
        raise ConfigError(
            f"seeds={values} trains on one device; it cannot be combined with "
            f"trainer.strategy={cfg.trainer.strategy} trainer.devices={cfg.trainer.devices}. "
            "Use trainer.devices=1 (or auto) and trainer.strategy=auto."
        )


def config_leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf, without resolving any interpolation: a missing value
    (``???``) is yielded as :data:`omegaconf.MISSING`, an interpolation (``data.model:
    ${model}``, a copy checked where it is defined) is skipped."""
    if isinstance(node, DictConfig):
        keys: list[Any] = list(node.keys())
    elif isinstance(node, ListConfig):
        keys = list(range(len(node)))
    else:
        return
    for key in keys:
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if OmegaConf.is_missing(node, key):
            yield dotted, MISSING
        elif not OmegaConf.is_interpolation(node, key):
            child = node._get_node(key)
            if isinstance(child, DictConfig | ListConfig):
                yield from config_leaves(child, dotted)
            else:
                yield dotted, child._value()


def missing_keys(node: Any) -> list[str]:
    """Dotted keys still set to ``???``."""
    return [key for key, value in config_leaves(node) if value is MISSING]


def check_numbers(cfg: DictConfig) -> None:
    """No number of any group is NaN or infinite, and every seed is in [0, 2^32)."""
    for key, value in config_leaves(cfg):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(
                f"{key}={value} is not valid: every number must be finite (NaN and infinity "
                "would train an SAE of NaN weights); give a finite value."
            )
        name = key.rsplit(".", 1)[-1]
        if (name == "seed" or name.endswith("_seed")) and not is_seed(value):
            if key in NULLABLE_SEEDS and value is None:
                continue
            example = "seed=0 or -m seed=1,2,3" if key == "seed" else f"{key}=0"
            raise ConfigError(
                f"{key}={value!r} is not valid; every seed is an integer in [0, 2^32), e.g. "
                f"{example}."
            )


def check_required(cfg: DictConfig) -> None:
    """Options without a default must be set before anything resolves them."""
    missing = missing_keys(cfg)
    if missing:
        key = missing[0]
        hint = REQUIRED_HINTS.get(key, f"set it on the command line: {key}=VALUE")
        raise ConfigError(f"{key} is required but not set: {hint}.")


def check_trainer(trainer: DictConfig) -> None:
    """Device and length checks that Lightning would make only after the data is loaded (the
    model's forward passes, on text data), or not at all (an untrained SAE marked COMPLETE)."""
    accelerator = str(trainer.accelerator)
    if accelerator not in KNOWN_ACCELERATORS:
        raise ConfigError(
            f"trainer.accelerator={accelerator!r} is not valid; choose one of "
            f"{KNOWN_ACCELERATORS} (auto: a CUDA GPU when present, else the CPU)."
        )
    if accelerator in ("gpu", "cuda", "mps"):
        import torch  # only for a device that needs it: torch takes seconds to import
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} but torch {torch.__version__} sees no CUDA GPU; "
            "use trainer=default (trainer.accelerator=auto or cpu), or install a CUDA build of "
            "torch on a machine with a GPU."
        )
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            "trainer.accelerator=mps but no Apple MPS device is available; use "
            "trainer.accelerator=auto or cpu."
        )
    check_devices(trainer.devices, accelerator)
    strategy = str(trainer.strategy)
    if strategy.startswith(WORKER_STRATEGIES):
        raise ConfigError(
            f"trainer.strategy={strategy} is not supported; use trainer.strategy=ddp (one "
            "process per device, started by Lightning or by the cluster) or auto. Strategies "
            "that train in worker processes hand back only the weights, not the rest of the run "
            "that the run folder records."
        )
    max_epochs, max_steps = trainer.max_epochs, trainer.max_steps
    if max_steps is not None and (max_steps == 0 or max_steps < -1):
        raise ConfigError(
            f"trainer.max_steps={max_steps} is not valid; use a positive number of steps, or -1 "
            "to train for trainer.max_epochs."
        )
    if (max_steps is None or max_steps == -1) and (max_epochs is None or max_epochs < 1):
        raise ConfigError(
            f"trainer.max_epochs={max_epochs} would train no step (or never stop) and save an "
            "untrained SAE; use trainer.max_epochs >= 1, or set trainer.max_steps to a positive "
            "number of steps."
        )


def check_devices(devices: Any, accelerator: str) -> None:
    """``auto``, a positive count, -1 (all), or a list / comma string of device indices."""
    valid = "auto, a positive number of devices, -1 (all), or device indices such as [0,1]"
    if isinstance(devices, ListConfig | list):
        if len(devices) == 0 or not all(isinstance(d, int) and d >= 0 for d in devices):
            raise ConfigError(f"trainer.devices={list(devices)} is not valid; use {valid}.")
        return
    text = str(devices).strip()
    if text == "auto":
        return
    try:
        indices = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"trainer.devices={devices!r} is not valid; use {valid}.") from None
    if "," not in text and (not indices or indices[0] == 0 or indices[0] < -1):
        raise ConfigError(f"trainer.devices={devices!r} is not valid; use {valid}.")
    if accelerator in ("gpu", "cuda") and "," not in text and indices[0] > 0:
        import torch

        if indices[0] > torch.cuda.device_count():
            raise ConfigError(
                f"trainer.devices={indices[0]} but only {torch.cuda.device_count()} CUDA GPU(s) "
                "are visible; use at most that many, or -1 for all."
            )


def training_processes(trainer: DictConfig) -> int:
    """How many processes Lightning trains with: devices (``auto``: every CUDA GPU for a GPU
    accelerator, else 1) times ``trainer.kwargs.num_nodes``."""
    devices, accelerator = trainer.devices, str(trainer.accelerator)
    nodes = int((trainer.get("kwargs") or {}).get("num_nodes", 1) or 1)
    if isinstance(devices, ListConfig | list):
        return len(devices) * nodes
    text = str(devices).strip()
    if "," in text:
        return len([part for part in text.split(",") if part.strip()]) * nodes
    if text in ("auto", "-1"):
        if accelerator in ("auto", "gpu", "cuda"):
            import torch

            return max(1, torch.cuda.device_count()) * nodes
        return nodes
    return int(text) * nodes


def sae_config_of(sae: DictConfig) -> SAEConfig:
    """The architecture's config dataclass, built (and so checked) from the ``sae`` group."""
    from saeseeds.sae import architecture_config

    config_class = architecture_config(str(sae.architecture))
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
