"""Schemas for the groups the training app owns: sae, data (synthetic, activation file), trainer,
logger, paths. Validation of values a schema cannot express (k < n_features, lr > 0) lives in
:mod:`saeseeds.config.validation`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from saeseeds.wandb_utils import LoggerConfig


@dataclass
class SAEConfig:
    """A Top-K sparse autoencoder (Gao et al. 2024)."""

    architecture: str = "topk"
    """Only ``topk`` exists today; the name is recorded in cfg.json."""
    n_features: int = 4096
    """Dictionary size (number of latents)."""
    k: int = 32
    """Number of active latents per token."""
    lr: float | None = None
    """Adam step size; ``null`` uses 2e-4 / sqrt(n_features / 2^14) (Gao et al. §A.3)."""
    warmup_steps: int = 100
    """Linear warm-up steps (capped at 10% of training)."""
    decay_start_fraction: float = 0.8
    """The learning rate decays linearly to zero from this fraction of training on."""
    grad_clip: float = 1.0
    """Gradient-norm clipping threshold."""
    auxk_alpha: float = 1.0 / 32.0
    """Weight of the AuxK loss."""
    dead_tokens_threshold: int = 20_000
    """A latent is dead for AuxK when it has not fired in this many training tokens."""
    normalize: str = "scalar"
    """``scalar``: scale inputs so E‖x‖² = d_in while training (folded out on save); ``none``."""
    sparse_decoder: bool = True
    """Decode by gathering the k chosen rows (same maths as dense, faster)."""
    init_sample_size: int = 8192
    """Activations used for the geometric-median b_dec initialisation."""


@dataclass
class SyntheticDataConfig:
    """Activations drawn from a known ground-truth dictionary."""

    _target_: str = "saeseeds.data.synthetic.SyntheticSource"
    d_in: int = 64
    """Activation dimension."""
    n_true_features: int = 128
    """Size of the ground-truth dictionary."""
    k_true: int = 4
    """Ground-truth features active per sample."""
    noise_std: float = 0.01
    """Std of isotropic Gaussian noise added to each sample."""
    min_magnitude: float = 0.5
    """Active magnitudes are uniform in [min_magnitude, max_magnitude]."""
    max_magnitude: float = 1.5
    n_tokens: int = 65_536
    """Training token budget."""
    heldout_fraction: float = 0.05
    """Extra held-out tokens, as a fraction of n_tokens."""
    batch_size: int = 1024
    """Tokens per optimisation step."""
    data_seed: int = 0
    """Seed of the ground truth and the samples; independent of the SAE seed, so runs of a sweep
    share data."""


@dataclass
class ActivationFileConfig:
    """A user's own [N, d_in] activations (.safetensors or .npy)."""

    _target_: str = "saeseeds.data.file.ActivationFileSource"
    path: str = MISSING
    """The activations file."""
    key: str | None = None
    """Tensor name inside a .safetensors file; ``null`` takes the only tensor."""
    n_tokens: int | None = None
    """Training token budget; ``null`` uses every row not held out."""
    heldout_fraction: float = 0.05
    """Fraction of rows held out (chosen by a fixed permutation)."""
    batch_size: int = 1024
    """Tokens per optimisation step."""
    split_seed: int = 0
    """Seed of the held-out split; independent of the SAE seed."""


@dataclass
class TrainerConfig:
    """Arguments of ``lightning.Trainer`` that the app exposes."""

    accelerator: str = "auto"
    devices: Any = "auto"
    strategy: str = "auto"
    precision: str | None = None
    """``null`` follows the device: 32 on CPU, bf16-mixed on a CUDA device that supports it."""
    max_epochs: int = 1
    max_steps: int = -1
    log_every_n_steps: int = 10
    val_check_interval: Any = 1.0
    checkpoint_every_n_steps: int = 200
    """Save ``checkpoints/last.ckpt`` this often (for resuming)."""
    deterministic: bool = True
    enable_progress_bar: bool = True


@dataclass
class PathsConfig:
    """Where things go. Every job output is under ``output_dir``."""

    output_dir: str = "${hydra:runtime.output_dir}"
    cache_dir: str = "outputs/cache"
    """Shared activation caches (one per model/hook/data/...)."""
    model_cache_dir: str = "${oc.env:SAESEEDS_MODEL_CACHE,'~/.cache/saeseeds'}"
    """Converted model weights (e.g. the de-quantised embedded model)."""


def register(store: ConfigStore) -> None:
    store.store(group="sae", name="topk_schema", node=SAEConfig)
    store.store(group="data", name="synthetic_schema", node=SyntheticDataConfig)
    store.store(group="data", name="activations_schema", node=ActivationFileConfig)
    store.store(group="trainer", name="trainer_schema", node=TrainerConfig)
    store.store(group="logger", name="logger_schema", node=LoggerConfig)
    store.store(group="paths", name="paths_schema", node=PathsConfig)
