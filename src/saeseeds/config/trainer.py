"""Schemas of the ``trainer`` and ``paths`` groups: how Lightning runs a job, and where outputs go.

Every field of :class:`TrainerConfig` except the app's own (:data:`APP_FIELDS`: checkpoints,
snapshots, held-out codes) is passed to ``lightning.Trainer`` as it is, and ``trainer.kwargs``
takes any other Trainer argument, so a new Lightning option needs no code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from saeseeds.errors import ConfigError


@dataclass
class TrainerConfig:
    """Arguments of ``lightning.Trainer``, passed through as they are."""

    accelerator: str = "auto"
    """``auto`` (a GPU when present, else CPU), ``cpu``, ``gpu``, ..."""
    devices: Any = "auto"
    strategy: str = "auto"
    precision: str | None = None
    """``null`` or ``auto`` (the same) follows the device: bf16-mixed on a CUDA device that
    supports bf16, and on a CPU with bf16 units (``amx_bf16``/``avx512_bf16``) where this SAE's
    training step, timed once per machine and cached, is at least 1.15x faster in it; else
    32-true. On a CPU, small SAEs (fewer than 2^27 encoder multiply-adds per step) are not timed
    and train in 32-true; a CUDA device with bf16 takes bf16-mixed at any size. Any Lightning
    precision (``32-true``, ``bf16-mixed``, ...) is used as set. The choice and its measurement
    are in environment.json (``precision_choice``); a resumed run keeps the precision it started
    with."""
    max_epochs: int = 8
    """Passes over the training tokens. 8 is where the default SAEs stop improving by more than
    2% of held-out FVU over the last quarter of training (see the README's convergence table)."""
    max_steps: int = -1
    log_every_n_steps: int = 10
    deterministic: bool = True
    enable_progress_bar: bool = True
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Any other ``lightning.Trainer`` argument: ``+trainer.kwargs.max_time=00:12:00:00``. Those
    that count or change optimisation steps (``accumulate_grad_batches``,
    ``limit_train_batches``, gradient clipping) are refused: the module takes its steps itself."""
    checkpoint_every_n_steps: int = 200
    """Save ``checkpoints/last.ckpt`` this often (for resuming); the app's, not Lightning's."""
    snapshots: bool = True
    """Save the folded weights at ``snapshot_fractions`` of training into ``snapshots/``, for the
    analysis's stability trajectory. They change nothing in training (the weights are identical
    with or without them)."""
    snapshot_fractions: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])
    """Fractions of the training steps, each in (0, 1), at which snapshots are saved; the final
    weights (fraction 1) are ``sae_weights.safetensors``."""
    heldout_codes: int = 4096
    """Save the SAE's latents on the first this many held-out tokens (the same tokens for every
    seed of a condition) to ``heldout_codes.safetensors``, for the analysis's functional
    agreement of matched features; 0 saves none."""


APP_FIELDS = (
    "checkpoint_every_n_steps",
    "kwargs",
    "snapshots",
    "snapshot_fractions",
    "heldout_codes",
)


def check_saved_extras(trainer: Any) -> None:
    """Refuse snapshot fractions outside (0, 1) or repeated, and a negative held-out code count."""
    fractions = [float(fraction) for fraction in trainer.snapshot_fractions]
    for fraction in fractions:
        if not 0.0 < fraction < 1.0:
            raise ConfigError(
                f"trainer.snapshot_fractions: {fraction:g} is not in (0, 1); give fractions of "
                "training such as [0.25,0.5,0.75] (the final weights are saved anyway), or "
                "trainer.snapshots=false."
            )
    if len({f"{fraction:g}" for fraction in fractions}) != len(fractions):
        raise ConfigError(f"trainer.snapshot_fractions={fractions} repeats a fraction.")
    if int(trainer.heldout_codes) < 0:
        raise ConfigError(
            f"trainer.heldout_codes={trainer.heldout_codes} must be >= 0 (0 saves no codes)."
        )


@dataclass
class PathsConfig:
    """Where things go. Every job output is under ``output_dir``."""

    output_dir: str = "${hydra:runtime.output_dir}"
    cache_dir: str = "outputs/cache"
    """Shared activation stores (one per model/hook/data/...), token blocks and file hashes."""
    model_cache_dir: str = "${oc.env:SAESEEDS_MODEL_CACHE,'~/.cache/saeseeds'}"
    """Converted model weights (e.g. the de-quantised embedded model)."""


def register(store: ConfigStore) -> None:
    store.store(group="schema/trainer", name="trainer", node=TrainerConfig)
    store.store(group="schema/paths", name="paths", node=PathsConfig)
