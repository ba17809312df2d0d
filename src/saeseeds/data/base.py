"""The interface between activation sources and the training app.

A source turns a config into two float32 matrices (train and held-out activations) and, where it
can, extra evaluation (CE-loss score, top activating text). It must not know about Lightning,
optimisers or run folders beyond the files it is asked to add to one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor


class DataError(ValueError):
    """Bad data input: a missing or malformed file, too few tokens, an unknown hook, ..."""


@dataclass
class ActivationSplits:
    """Activations ready for training. Both matrices are float32 on the CPU."""

    train: Tensor  # [n_train, d_in]
    heldout: Tensor  # [n_heldout, d_in]
    provenance: dict[str, Any] = field(default_factory=dict)
    """What produced these activations (model name, weight hash, hook, cache key, ...).

    Recorded in the run's ``environment.json`` and, for the keys of cfg.json (``model_name``,
    ``hook_name``, ``dtype``), in ``cfg.json``.
    """

    @property
    def d_in(self) -> int:
        return int(self.train.shape[1])


class ActivationSource:
    """Base class for every ``data=`` option.

    Subclasses set ``batch_size``/``n_tokens`` from their config and implement :meth:`load`.
    The optional hooks default to "not available", so a source without text or a model (synthetic
    data, a user's activation file) needs none of them.
    """

    batch_size: int
    n_tokens: int

    def load(self) -> ActivationSplits:
        """Compute or read the activations. Must raise :class:`DataError` on bad input, early."""
        raise NotImplementedError

    def evaluate(self, reconstruct: Callable[[Tensor], Tensor]) -> dict[str, float]:
        """Extra held-out metrics that need the model (e.g. ``ce_loss_score``, ``kl_div``).

        ``reconstruct`` maps raw activations [batch, d_in] to the SAE's raw reconstructions.
        """
        return {}

    def top_examples(
        self, encode: Callable[[Tensor], Tensor], n_examples: int
    ) -> dict[str, Any] | None:
        """Per-feature top activating held-out contexts, or ``None`` where there is no text.

        ``encode`` maps raw activations [batch, d_in] to dense latents [batch, n_features]. The
        result is written as ``top_examples.json`` (format ``saeseeds.top_examples/1``).
        """
        return None

    def write_artifacts(self, run_dir: Path) -> None:
        """Add source-specific files to the run folder (e.g. a synthetic ground truth)."""


def check_token_budget(n_tokens: int, batch_size: int, what: str) -> None:
    if batch_size <= 0:
        raise DataError(f"data.batch_size must be a positive integer, got {batch_size}.")
    if n_tokens < batch_size:
        raise DataError(
            f"{what}: the token budget data.n_tokens={n_tokens} is smaller than one batch "
            f"(data.batch_size={batch_size}). Raise data.n_tokens or lower data.batch_size."
        )
