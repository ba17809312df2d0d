"""Latents by the contract's rules, and held-out statistics on activations a user gives.

An imported SAE comes without the held-out statistics the analysis uses for live-only matching
and firing frequencies. Given an [N, d_in] activation matrix (``.npy`` or ``.safetensors``, read
in batches so memory does not grow with N), :func:`heldout_statistics` computes the
``feature_stats.safetensors`` tensors and the ``metrics.json`` values a trained run has, with the
trainer's own sums (:mod:`saeseeds.training.metrics`). :func:`latents` is the contract's rule for
every architecture an import can carry (``docs/contract.md``). Nothing here reads a library's
files or writes any.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor
from tqdm import tqdm

from saeseeds.errors import DataError
from saeseeds.imports.source import ImportedSAE
from saeseeds.io import file_sha256
from saeseeds.sae import SAEOutput
from saeseeds.training.metrics import accumulate, batch_totals, summarise_totals

SUFFIXES = (".npy", ".safetensors")
# Rows per batch are chosen so that one dense latent matrix holds about this many values.
LATENT_VALUES_PER_BATCH = 1 << 24


def latents(architecture: str, tensors: dict[str, Tensor], x: Tensor, k: int | None) -> Tensor:
    """Latents [batch, n] of raw activations x [batch, d_in] by the contract's rule."""
    centred = x - tensors["b_dec"]
    pre = centred @ tensors["W_enc"] + tensors["b_enc"]  # [batch, n]
    if architecture == "relu_l1":
        return pre.relu()
    if architecture in ("jumprelu", "batchtopk"):
        return pre * (pre > tensors["threshold"])
    if architecture == "gated":
        magnitude = centred @ (tensors["W_enc"] * tensors["r_mag"].exp()) + tensors["b_mag"]
        return (pre > 0) * magnitude.relu()
    if architecture == "topk":
        values, indices = pre.topk(int(k), dim=-1)
        return torch.zeros_like(pre).scatter(-1, indices, values.relu())
    if architecture == "groupmax":
        values, positions = pre.relu().unflatten(-1, (int(k), -1)).max(dim=-1)  # [batch, k]
        offsets = torch.arange(0, pre.shape[-1], pre.shape[-1] // int(k))  # first of each group
        return torch.zeros_like(pre).scatter(-1, positions + offsets, values)
    raise ValueError(f"no latent rule for architecture {architecture!r}")


class ActivationRows:
    """An [N, d_in] floating-point matrix in a .npy or .safetensors file, read batch by batch."""

    def __init__(self, path: Path, key: str | None = None) -> None:
        self.path, self.key = Path(path), key
        if self.path.suffix not in SUFFIXES:
            raise DataError(
                f"--activations {self.path}: suffix {self.path.suffix!r}; use one of {SUFFIXES}"
            )
        if not self.path.is_file():
            raise DataError(f"--activations {self.path}: no such file")
        try:
            self.shape = self._shape()
        except (OSError, ValueError, SafetensorError) as error:
            raise DataError(f"cannot read activations from {self.path}: {error}") from None
        if len(self.shape) != 2 or min(self.shape) == 0:
            raise DataError(
                f"{self.path} holds a tensor of shape {list(self.shape)}; expected a non-empty "
                "[n_tokens, d_in] matrix"
            )

    @property
    def n_rows(self) -> int:
        return int(self.shape[0])

    @property
    def d_in(self) -> int:
        return int(self.shape[1])

    def _tensor_name(self, names: list[str]) -> str:
        if self.key is None and len(names) == 1:
            return names[0]
        if self.key is None or self.key not in names:
            raise DataError(
                f"{self.path} holds tensors {names}; name one with --activations-key NAME"
            )
        return self.key

    def _shape(self) -> tuple[int, ...]:
        if self.path.suffix == ".npy":
            array = np.load(self.path, mmap_mode="r", allow_pickle=False)
            if not np.issubdtype(array.dtype, np.floating):
                raise DataError(f"{self.path} holds {array.dtype} values; expected floating point")
            return tuple(array.shape)
        with safe_open(str(self.path), framework="pt") as handle:
            name = self._tensor_name(list(handle.keys()))
            view = handle.get_slice(name)
            if view.get_dtype() not in ("F16", "BF16", "F32", "F64"):
                raise DataError(f"{self.path}: {name} is {view.get_dtype()}; expected floats")
            return tuple(view.get_shape())

    def batches(self, rows: int) -> Iterator[Tensor]:
        """Float32 batches of at most ``rows`` rows, in file order; non-finite values refused."""
        if self.path.suffix == ".npy":
            array = np.load(self.path, mmap_mode="r", allow_pickle=False)
            chunks = (torch.from_numpy(np.array(array[i : i + rows])) for i in self._starts(rows))
            yield from (self._checked(chunk) for chunk in chunks)
            return
        with safe_open(str(self.path), framework="pt") as handle:
            view = handle.get_slice(self._tensor_name(list(handle.keys())))
            for start in self._starts(rows):
                yield self._checked(view[start : start + rows])

    def _starts(self, rows: int) -> range:
        return range(0, self.n_rows, rows)

    def _checked(self, batch: Tensor) -> Tensor:
        batch = batch.float()
        if not bool(torch.isfinite(batch).all()):
            raise DataError(f"{self.path} contains NaN or infinite activations")
        return batch

    def provenance(self) -> dict[str, Any]:
        return {
            "path": str(self.path.resolve()),
            "tensor": self.key,
            "sha256": file_sha256(self.path),
            "n_rows": self.n_rows,
        }


@torch.no_grad()
def heldout_statistics(
    sae: ImportedSAE, rows: ActivationRows, progress: bool = True
) -> tuple[dict[str, Any], Tensor, Tensor]:
    """metrics.json values, ``fire_count`` (int64) and ``activation_sum`` (float32) per feature."""
    if rows.d_in != sae.d_in:
        raise DataError(
            f"--activations {rows.path} has d_in={rows.d_in}; {sae.source_dir} has d_in={sae.d_in}"
        )
    n = sae.n_features
    batch_rows = max(1, min(rows.n_rows, LATENT_VALUES_PER_BATCH // n))
    feature_index = torch.arange(n)
    totals: dict[str, Tensor] = {}
    batches = tqdm(
        rows.batches(batch_rows),
        total=-(-rows.n_rows // batch_rows),
        desc=f"held-out statistics {sae.run_name}",
        unit="batch",
        disable=not progress,
    )
    for x in batches:
        z = latents(sae.architecture, sae.tensors, x, sae.k)  # [batch, n]
        reconstruction = z @ sae.tensors["W_dec"] + sae.tensors["b_dec"]
        output = SAEOutput(  # batch_totals reads only the reconstruction and the latents
            reconstruction, z, feature_index.expand_as(z), {}, squared_error=torch.zeros(())
        )
        accumulate(totals, batch_totals(x, output, n))
    metrics = {**summarise_totals(totals), "heldout_tokens": rows.n_rows}
    return metrics, totals["fire_count"], totals["activation_sum"].float()
