"""Schema of the ``model`` group: which language model's activations are read.

Checks a value can fail on its own (an unknown dtype or init). Loading and the checks that need
the model live in :mod:`saeseeds.activations.models`.
"""

from __future__ import annotations

from dataclasses import dataclass

from saeseeds.errors import DataError

MODEL_DTYPES = ("float32", "bfloat16", "float16", "auto")
EVAL_DTYPES = ("auto", "float32", "bfloat16")
MODEL_INITS = ("pretrained", "random")


@dataclass
class ModelConfig:
    """The language model whose activations are read."""

    name: str = "smollm2-135m"
    """``smollm2-135m`` (embedded, no download), a Hugging Face Hub name (``gpt2``), or a label
    for the local folder given in ``path``."""
    path: str | None = None
    """A local Hugging Face model folder (config.json, weights, tokenizer); ``null``: ``name``."""
    init: str = "pretrained"
    """``pretrained`` weights, or ``random``: the same architecture with weights drawn from
    ``seed`` (the "dead salmon" control of Gerasimov et al.)."""
    seed: int = 0
    """Seed of the random weights (``init=random`` only)."""
    dtype: str = "float32"
    """Precision of the forward passes: float32|bfloat16|float16, or ``auto``: bfloat16 where the
    device has bf16 units and this model's forward is measurably faster in it (timed once per
    machine, see :mod:`saeseeds.precision`), else float32. The dtype used is part of the
    activation store's key and recorded in provenance (``model_dtype``, ``model_dtype_choice``).
    float32 stays the default: the activations, and so the store and its key, would otherwise
    change with the machine."""
    eval_dtype: str = "auto"
    """Precision of the language-model forward passes that score a trained SAE (CE-loss score
    and KL) when the model runs in float32: ``auto`` runs them under bf16 autocast on a CUDA
    device with bf16 (untimed, at any size) and on a CPU with bf16 units where this model's
    forward is measurably faster in it (timed once per machine, like ``dtype=auto``), else in
    float32; ``float32`` or ``bfloat16`` as set. The SAE itself always reconstructs in float32,
    and the weights never depend on this. A model run in bf16 or float16 (``dtype``) is scored
    in that dtype. Recorded in environment.json (``eval_precision_choice``)."""
    device: str = "auto"
    """Where the model runs: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ..."""
    forward_batch_size: int = 8
    """Sequences per forward pass (speed and memory only; results do not depend on it)."""

    def __post_init__(self) -> None:
        if self.init not in MODEL_INITS:
            raise DataError(f"model.init={self.init!r} is not valid; use one of {MODEL_INITS}.")
        if self.dtype not in MODEL_DTYPES:
            raise DataError(f"model.dtype={self.dtype!r} is not valid; use one of {MODEL_DTYPES}.")
        if self.eval_dtype not in EVAL_DTYPES:
            raise DataError(
                f"model.eval_dtype={self.eval_dtype!r} is not valid; use one of {EVAL_DTYPES}."
            )
        if self.forward_batch_size <= 0:
            raise DataError(
                f"model.forward_batch_size must be positive, got {self.forward_batch_size}."
            )
