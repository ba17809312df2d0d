"""Controls: activations with the same geometry as a source's, and no features.

``data.control=gaussian`` replaces a source's activations with Gaussian samples that have the
training prefix's per-dimension mean and full covariance (exact, in float64, from the source's
per-shard statistics), with as many training and held-out rows as the source gives and the same
rows per shard. Training shard i is drawn from (``data.control_seed``, "train", i) and the
held-out rows from (``data.control_seed``, "heldout"), independent of the SAE seed, so every seed
of a sweep sees the same control data, generated in bounded memory. SAEs trained on them answer
"how similar would seeds be on data of this geometry with nothing sparse to find?".

The wrapped source still loads (a language model's store is read, and the model is not run again
once its store exists). A control hands no text to evaluation, so the CE-loss score and top
examples are skipped, and it writes no source artifacts (a synthetic ground truth does not
describe control data).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor

from saeseeds.activations.base import ActivationSource, ActivationSplits, TextContext
from saeseeds.activations.shards import GeneratedShards, TrainingRows, seeded_generator
from saeseeds.errors import DataError

log = logging.getLogger(__name__)

CONTROLS = ("none", "gaussian")
_CHUNK = 8192  # rows drawn at a time


def with_control(source: ActivationSource, control: str, seed: int) -> ActivationSource:
    """``source`` itself for ``control=none``, else the control that wraps it."""
    if control not in CONTROLS:
        raise DataError(f"data.control={control!r} is not valid; choose one of {CONTROLS}.")
    return source if control == "none" else GaussianControl(source, seed)


class GaussianControl(ActivationSource):
    """Gaussian samples with the mean and covariance of ``source``'s training activations."""

    def __init__(self, source: ActivationSource, seed: int):
        self.source, self.seed = source, seed
        self.batch_size, self.n_tokens = source.batch_size, source.n_tokens

    def load(self) -> ActivationSplits:
        splits = self.source.load()
        stats = splits.train.stats(scatter=True)
        if stats.count < 2:
            raise DataError(
                f"data.control=gaussian needs at least 2 training rows, got {stats.count}."
            )
        sampler = GaussianSampler(stats.mean, stats.covariance())
        shards = GeneratedShards(
            lambda index, rows: sampler.sample(rows, seeded_generator(self.seed, "train", index)),
            splits.d_in,
            list(splits.train.used_rows),
            torch.float32,
            "the Gaussian control",
        )
        heldout = sampler.sample(len(splits.heldout), seeded_generator(self.seed, "heldout"))
        log.info(
            "data.control=gaussian: %d training and %d held-out Gaussian samples with the "
            "activations' mean and covariance; CE-loss and top examples are skipped.",
            len(splits.train),
            len(heldout),
        )
        source_identity = splits.provenance.get("data_identity")
        provenance = {
            **splits.provenance,
            "source": f"control:gaussian({splits.provenance.get('source', 'unknown')})",
            "control": "gaussian",
            "control_seed": self.seed,
            "data_identity": {
                "kind": "control",
                "control": "gaussian",
                "control_seed": self.seed,
                "source": source_identity,
            },
        }
        return ActivationSplits(
            train=TrainingRows(shards, len(splits.train)), heldout=heldout, provenance=provenance
        )

    def text_context(self) -> TextContext | None:
        return None

    def write_artifacts(self, run_dir: Path) -> None:
        """Nothing: the source's artifacts describe its data, not the control's."""


class GaussianSampler:
    """Float32 samples ~ N(mean, covariance), drawn in float64."""

    def __init__(self, mean: Tensor, covariance: Tensor):
        d_in = covariance.shape[0]
        # A jitter of 1e-6 of the mean variance keeps the Cholesky factor defined for a
        # rank-deficient covariance (e.g. fewer samples than dimensions) without changing it much.
        jitter = 1e-6 * float(torch.trace(covariance)) / d_in
        self.mean = mean
        self.factor = torch.linalg.cholesky(
            covariance + jitter * torch.eye(d_in, dtype=torch.float64)
        )

    def sample(self, count: int, generator: torch.Generator) -> Tensor:  # [count, d_in]
        pieces = []
        for start in range(0, count, _CHUNK):  # bounds the float64 intermediates
            rows = min(_CHUNK, count - start)
            noise = torch.randn(rows, len(self.mean), generator=generator, dtype=torch.float64)
            pieces.append((noise @ self.factor.T + self.mean).float())
        return torch.cat(pieces) if pieces else torch.empty(0, len(self.mean))
