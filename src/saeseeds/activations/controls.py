"""Controls: activations with the same geometry as a source's, and no features.

``data.control=gaussian`` replaces a source's activations with Gaussian samples that have the
training split's per-dimension mean and full covariance (estimated in float64), with as many
training and held-out rows as the source gives, drawn from ``data.control_seed`` (independent of
the SAE seed, so every seed of a sweep sees the same control data). SAEs trained on them answer
"how similar would seeds be on data of this geometry with nothing sparse to find?".

The wrapped source still loads (a language model's activation cache is read, and the model is not
run again once its cache exists). A control hands no text to evaluation, so the CE-loss score and
top examples are skipped, and it writes no source artifacts (a synthetic ground truth does not
describe control data).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor

from saeseeds.activations.base import ActivationSource, ActivationSplits, TextContext
from saeseeds.errors import DataError

log = logging.getLogger(__name__)

CONTROLS = ("none", "gaussian")
_CHUNK = 16384


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
        train, heldout = gaussian_like(
            splits.train, (len(splits.train), len(splits.heldout)), self.seed
        )
        log.info(
            "data.control=gaussian: %d training and %d held-out Gaussian samples with the "
            "activations' mean and covariance; CE-loss and top examples are skipped.",
            len(train),
            len(heldout),
        )
        provenance = {
            **splits.provenance,
            "source": f"control:gaussian({splits.provenance.get('source', 'unknown')})",
            "control": "gaussian",
            "control_seed": self.seed,
        }
        return ActivationSplits(train=train, heldout=heldout, provenance=provenance)

    def text_context(self) -> TextContext | None:
        return None

    def write_artifacts(self, run_dir: Path) -> None:
        """Nothing: the source's artifacts describe its data, not the control's."""


def gaussian_like(reference: Tensor, counts: tuple[int, ...], seed: int) -> list[Tensor]:
    """Float32 samples ~ N(mean, covariance) of ``reference`` [n, d], one matrix per count."""
    mean, covariance = mean_and_covariance(reference)
    d_in = covariance.shape[0]
    # A jitter of 1e-6 of the mean variance keeps the Cholesky factor defined for a
    # rank-deficient covariance (e.g. fewer samples than dimensions) without changing it much.
    jitter = 1e-6 * float(torch.trace(covariance)) / d_in
    factor = torch.linalg.cholesky(covariance + jitter * torch.eye(d_in, dtype=torch.float64))
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for count in counts:
        noise = torch.randn(count, d_in, generator=generator, dtype=torch.float64)
        samples.append((noise @ factor.T + mean).float())
    return samples


def mean_and_covariance(rows: Tensor) -> tuple[Tensor, Tensor]:
    """Float64 mean [d] and unbiased covariance [d, d], accumulated in chunks of rows."""
    n_rows, d_in = rows.shape
    if n_rows < 2:
        raise DataError(f"data.control=gaussian needs at least 2 training rows, got {n_rows}.")
    total = torch.zeros(d_in, dtype=torch.float64)
    for start in range(0, n_rows, _CHUNK):
        total += rows[start : start + _CHUNK].double().sum(0)
    mean = total / n_rows
    scatter = torch.zeros(d_in, d_in, dtype=torch.float64)
    for start in range(0, n_rows, _CHUNK):
        centered = rows[start : start + _CHUNK].double() - mean
        scatter += centered.T @ centered
    return mean, scatter / (n_rows - 1)
