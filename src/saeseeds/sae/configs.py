"""What a user sets for each SAE architecture, its checks, and the registry of architectures.

Each architecture has one config dataclass here, extending :class:`SAEConfig` and checking its
values in ``__post_init__``; :func:`register` makes it ``sae=<architecture>``. Its ``sae_class``
names the class that implements it, in the architecture's own module, which is imported (with
torch) only when an SAE is built. This module imports no torch: Hydra's schemas
(:mod:`saeseeds.config.sae`) and the config check need only it, so a bad option is refused
without the seconds that importing torch takes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from saeseeds.errors import ConfigError

NORMALIZATIONS = ("scalar", "none")
AUXK_ALPHA = 1.0 / 32.0  # Gao et al. 2024, Appendix A.2


@dataclass
class SAEConfig:
    """Hyperparameters every architecture has. ``sae=<architecture>`` picks the subclass."""

    sae_class: ClassVar[str]
    """Dotted name of the :class:`saeseeds.sae.base.SAE` subclass that implements it."""

    architecture: str = "topk"
    """The architecture's registered name; recorded in cfg.json."""
    n_features: int = 4096
    """Dictionary size (number of latents)."""
    lr: float | None = None
    """Adam step size; ``null`` uses the architecture's default for n_features."""
    warmup_steps: int = 100
    """Linear learning-rate warm-up steps (capped at 10% of training)."""
    decay_start_fraction: float = 0.5
    """The learning rate decays linearly to zero from this fraction of training on (the second
    half by default: at the default length, a decay over the last 20% leaves the held-out FVU
    still falling by 3-4% over the last quarter)."""
    grad_clip: float = 1.0
    """Gradient-norm clipping threshold."""
    dead_tokens_threshold: int = 20_000
    """A latent is dead when it has not fired in this many training tokens (logged; AuxK)."""
    normalize: str = "scalar"
    """``scalar``: scale inputs so E‖x‖² = d_in while training (folded out on save); ``none``."""
    init_sample_size: int = 8192
    """Training activations used to initialise (e.g. the geometric-median b_dec)."""
    weight_l2: float = 0.0
    """λ of an L2 penalty λ(‖W_enc‖²_F + ‖W_dec‖²_F) added to the loss (Jedryszek & Crook 2026),
    on the scale of a loss ‖x − x̂‖² per token with inputs normalised to E‖x‖² = d_in; 0: off.
    A unit-norm decoder makes the decoder term constant, so only W_enc is then penalised."""

    def __post_init__(self) -> None:
        if self.n_features <= 0:
            raise ConfigError(f"sae.n_features={self.n_features} must be a positive integer.")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"sae.lr={self.lr} must be > 0 (or null for the default).")
        if self.normalize not in NORMALIZATIONS:
            raise ConfigError(
                f"sae.normalize={self.normalize!r} is not valid; choose one of {NORMALIZATIONS}."
            )
        if not 0.0 <= self.decay_start_fraction <= 1.0:
            raise ConfigError(
                f"sae.decay_start_fraction={self.decay_start_fraction} must be in [0, 1]."
            )
        if self.warmup_steps < 0:
            raise ConfigError(f"sae.warmup_steps={self.warmup_steps} must be >= 0.")
        for name in ("dead_tokens_threshold", "init_sample_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"sae.{name}={getattr(self, name)} must be >= 1.")
        if not self.grad_clip > 0:
            raise ConfigError(f"sae.grad_clip={self.grad_clip} must be > 0.")
        if not self.weight_l2 >= 0:
            raise ConfigError(f"sae.weight_l2={self.weight_l2} must be >= 0.")


REGISTRY: dict[str, type[SAEConfig]] = {}


def register(config_class: type[SAEConfig]) -> type[SAEConfig]:
    """Class decorator: make ``sae=<config_class.architecture>`` available."""
    REGISTRY[config_class.architecture] = config_class
    return config_class


@register
@dataclass
class TopKConfig(SAEConfig):
    """A Top-K sparse autoencoder (Gao et al. 2024)."""

    sae_class: ClassVar[str] = "saeseeds.sae.topk.TopKSAE"
    architecture: str = "topk"
    k: int = 32
    """Number of active latents per token."""
    auxk_alpha: float = AUXK_ALPHA
    """Weight of the AuxK loss (Gao et al. §A.2: 1/32)."""
    sparse_decoder: bool | None = None
    """Decode by gathering the chosen decoder rows (true) or by a matmul over the scattered
    [batch, n_features] code (false); null picks by size and device: dense up to 8 columns
    per chosen latent (n_features <= 8·k) on a CPU; on a CUDA GPU up to 256 in float32 and 1024
    under bf16 autocast (AuxK: 32), never a dense code over 2^27 entries. The maths is the same;
    only the speed differs."""
    unit_norm_decoder: bool = True
    """Keep decoder rows at unit norm (Gao et al. §A.1); false leaves them free, as Jedryszek &
    Crook (2026) do with ``sae.weight_l2`` so that the penalty acts on the decoder too."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_k(self.k, self.n_features)
        if self.auxk_alpha < 0:
            raise ConfigError(f"sae.auxk_alpha={self.auxk_alpha} must be >= 0.")


def check_k(k: int, n_features: int) -> None:
    if not 0 < k < n_features:
        raise ConfigError(
            f"sae.k={k} must be in 1..{n_features - 1} (active latents per token, fewer than "
            f"sae.n_features={n_features})."
        )


def check_penalty(name: str, coefficient: float, warmup_fraction: float) -> None:
    """A sparsity penalty ``sae.<name>_coefficient`` and the share of training it warms up over."""
    if coefficient < 0:
        raise ConfigError(f"sae.{name}_coefficient={coefficient} must be >= 0.")
    if not 0.0 <= warmup_fraction <= 1.0:
        raise ConfigError(f"sae.{name}_warmup_fraction={warmup_fraction} must be in [0, 1].")


@register
@dataclass
class ReluL1Config(SAEConfig):
    """A ReLU SAE with a decoder-norm-weighted L1 penalty (Anthropic's April 2024 update)."""

    sae_class: ClassVar[str] = "saeseeds.sae.relu_l1.ReluL1SAE"
    architecture: str = "relu_l1"
    l1_coefficient: float = 5.0
    """λ of the sparsity penalty, on the April update's scale; larger gives a smaller L0. Use
    ``scripts/sweep_architectures.py`` to find the λ that reaches a target L0."""
    l1_warmup_fraction: float = 0.05
    """λ rises linearly from 0 to l1_coefficient over this fraction of training."""
    init_decoder_norm: float = 0.1
    """Norm of the initial decoder rows."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_penalty("l1", self.l1_coefficient, self.l1_warmup_fraction)
        if not self.init_decoder_norm > 0:
            raise ConfigError(f"sae.init_decoder_norm={self.init_decoder_norm} must be > 0.")


@register
@dataclass
class BatchTopKConfig(TopKConfig):
    """A BatchTopK SAE (Bussmann et al. 2024): k active latents per token on average."""

    sae_class: ClassVar[str] = "saeseeds.sae.batchtopk.BatchTopKSAE"
    architecture: str = "batchtopk"
    threshold_decay: float = 0.99
    """Per-step decay of the running average that estimates the inference threshold."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.threshold_decay < 1.0:
            raise ConfigError(f"sae.threshold_decay={self.threshold_decay} must be in [0, 1).")


@register
@dataclass
class JumpReLUConfig(SAEConfig):
    """A JumpReLU SAE (Rajamanoharan et al. 2024) with DeepMind's L0 penalty."""

    sae_class: ClassVar[str] = "saeseeds.sae.jumprelu.JumpReLUSAE"
    architecture: str = "jumprelu"
    l0_coefficient: float = 1.0
    """λ of the L0 penalty (SAE Lens's scale); larger gives a smaller L0. Use
    ``scripts/sweep_architectures.py`` to find the λ that reaches a target L0."""
    l0_warmup_fraction: float = 0.1
    """λ rises linearly from 0 to l0_coefficient over this fraction of training."""
    threshold_init: float | None = None
    """Initial threshold θ of every latent; null: √l0_coefficient (SAE Lens 6 uses 0.01)."""
    bandwidth: float = 0.05
    """Width ε of the straight-through estimator's rectangle kernel (SAE Lens 6's default)."""
    unit_norm_decoder: bool = True
    """Keep decoder rows at unit norm; false leaves them free (e.g. for ``sae.weight_l2``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_penalty("l0", self.l0_coefficient, self.l0_warmup_fraction)
        if self.threshold_init is not None and not self.threshold_init >= 0:
            raise ConfigError(f"sae.threshold_init={self.threshold_init} must be >= 0 or null.")
        if not self.bandwidth > 0:
            raise ConfigError(f"sae.bandwidth={self.bandwidth} must be > 0.")


@register
@dataclass
class MatryoshkaConfig(BatchTopKConfig):
    """A Matryoshka BatchTopK SAE (Bussmann et al. 2025): nested prefixes of the dictionary."""

    sae_class: ClassVar[str] = "saeseeds.sae.matryoshka.MatryoshkaSAE"
    architecture: str = "matryoshka"
    prefix_fractions: list[float] = field(default_factory=lambda: [0.0625, 0.125, 0.25, 0.5])
    """Widths of the inner prefixes as fractions of n_features, increasing, each in (0, 1); the
    whole dictionary is always the last prefix."""

    def __post_init__(self) -> None:
        super().__post_init__()
        prefix_widths(self.prefix_fractions, self.n_features)  # raises on bad values


def prefix_widths(fractions: list[float], n_features: int) -> list[int]:
    """Every prefix's width in latents, the whole dictionary last."""
    fractions = [float(fraction) for fraction in fractions]
    if not all(0.0 < fraction < 1.0 for fraction in fractions):
        raise ConfigError(
            f"sae.prefix_fractions={fractions}: each must be in (0, 1) (a share of n_features; "
            "the whole dictionary is always the last prefix)."
        )
    widths = [round(fraction * n_features) for fraction in fractions] + [n_features]
    if not all(0 < a < b for a, b in zip(widths, widths[1:], strict=False)):
        raise ConfigError(
            f"sae.prefix_fractions={fractions} give prefix widths {widths} of "
            f"sae.n_features={n_features}: they must increase strictly from at least 1."
        )
    return widths


@register
@dataclass
class ArchetypalConfig(TopKConfig):
    """A relaxed archetypal Top-K SAE (Fel et al. 2025): decoder rows near the data's hull."""

    sae_class: ClassVar[str] = "saeseeds.sae.archetypal.ArchetypalSAE"
    architecture: str = "archetypal"
    n_anchors: int | None = None
    """Anchor points (k-means centroids of the initialisation sample); null: n_features. At
    least n_features, and at most sae.init_sample_size."""
    relaxation: float = 0.1
    """δ: bound on each row's relaxation Λ_i, as a fraction of the anchors' RMS norm."""
    init_sample_size: int = 32_768
    """Training activations the anchors are clustered from (several per anchor)."""
    unit_norm_decoder: bool = False
    """Always false: archetypal rows are combinations of anchors, not unit vectors."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.unit_norm_decoder:
            raise ConfigError(
                "sae.unit_norm_decoder=true is not available for sae=archetypal: its decoder "
                "rows are combinations of data anchors, not unit vectors."
            )
        if not self.relaxation >= 0:
            raise ConfigError(f"sae.relaxation={self.relaxation} must be >= 0.")
        n_anchors = self.anchor_count
        if not self.n_features <= n_anchors <= self.init_sample_size:
            raise ConfigError(
                f"sae.n_anchors={self.n_anchors} ({n_anchors} anchors) must be between "
                f"sae.n_features={self.n_features} and sae.init_sample_size="
                f"{self.init_sample_size} (the activations they are clustered from)."
            )

    @property
    def anchor_count(self) -> int:
        return self.n_features if self.n_anchors is None else self.n_anchors
