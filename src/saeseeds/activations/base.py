"""The interface between activation sources and the training app.

A source turns a config into its training rows (a sequence of shards, never held in memory whole:
:class:`saeseeds.activations.shards.TrainingRows`), a bounded float32 matrix of held-out rows and,
where the activations come from a language model on text, what evaluation needs of the model and
the held-out text (:class:`TextContext`). It must not know about SAEs, Lightning, optimisers or
run folders beyond the files it is asked to add to one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from saeseeds.activations.shards import TrainingRows
from saeseeds.errors import DataError
from saeseeds.ground_truth import GroundTruth


@dataclass
class ActivationSplits:
    """Activations ready for training: the training rows as shards, the held-out rows (bounded,
    float32 on the CPU) in memory."""

    train: TrainingRows
    heldout: Tensor  # [n_heldout, d_in]
    provenance: dict[str, Any] = field(default_factory=dict)
    """What produced these activations (model name, weight hash, hook, store key, ...).

    Recorded in the run's ``environment.json`` and, for the keys of cfg.json (``model_name``,
    ``hook_name``, ``dtype``), in ``cfg.json``. ``provenance["data_identity"]`` holds exactly the
    facts that identify the training data's content (hashes, store key, seeds), nothing per run.
    """

    @property
    def d_in(self) -> int:
        return self.train.d_in


@dataclass
class TextContext:
    """What evaluation with the language model needs (CE-loss score, top examples)."""

    model: Any  # saeseeds.activations.models.LoadedModel
    hook: Any  # saeseeds.activations.hooks.HookSpec
    heldout_tokens: Tensor  # [n_sequences, seq_len] token ids; row r of heldout_activations is
    heldout_activations: Tensor  # [n_heldout, d_in] sequence r // kept, position first + r % kept
    first_position: int
    """First position whose activations are kept (1 when position 0 is dropped)."""
    prepend_bos: bool
    eval_sequences: int
    """Held-out sequences used for the CE-loss score and KL."""
    forward_batch_size: int
    context_before: int
    context_after: int
    store_key: str
    eval_dtype: str = "auto"
    """``model.eval_dtype``: the precision of the scoring forward (auto, float32, bfloat16)."""
    model_cache_dir: str = "~/.cache/saeseeds"
    """Where the measured precision choice of the scoring forward is cached."""

    @property
    def kept_per_sequence(self) -> int:
        return int(self.heldout_tokens.shape[1]) - self.first_position


class ActivationSource:
    """Base class for every ``data=`` option.

    Subclasses set ``batch_size``/``n_tokens`` from their config and implement :meth:`load`.
    The optional hooks default to "not available", so a source without text or a model (synthetic
    data, a user's activation file) needs none of them.
    """

    batch_size: int
    n_tokens: int

    def load(self) -> ActivationSplits:
        """Compute, read or set up the activations. Must raise :class:`DataError` on bad input,
        early, and hold no more than a bounded number of rows in memory."""
        raise NotImplementedError

    def text_context(self) -> TextContext | None:
        """The model, hook and held-out text behind the activations; ``None`` where there are
        none (synthetic data, a user's activation file, a control), so CE-loss evaluation and
        top examples are skipped."""
        return None

    def ground_truth(self) -> GroundTruth | None:
        """The dictionary the activations were drawn from (synthetic data), whose recovery the
        trainer scores in metrics.json; ``None`` where it is unknown."""
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
