"""A user's own activations: one [N, d_in] matrix in a .safetensors or .npy file.

Reads with safetensors or ``numpy.load(allow_pickle=False)`` only. The held-out rows are picked by a
permutation seeded with ``split_seed``, so the split does not move with the SAE seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saeseeds.activations.base import ActivationSource, ActivationSplits, check_token_budget
from saeseeds.errors import DataError
from saeseeds.io import file_sha256

SUFFIXES = (".safetensors", ".npy")


class ActivationFileSource(ActivationSource):
    def __init__(
        self,
        path: str,
        key: str | None,
        n_tokens: int | None,
        heldout_fraction: float,
        batch_size: int,
        split_seed: int,
    ):
        self.path = Path(path).expanduser()
        if self.path.suffix not in SUFFIXES:
            raise DataError(
                f"data.path={str(path)!r} has suffix {self.path.suffix!r}; "
                f"activation files must be one of {SUFFIXES}."
            )
        if not self.path.is_file():
            raise DataError(f"data.path={str(path)!r}: no such activations file.")
        if not 0 < heldout_fraction < 1:
            raise DataError(f"data.heldout_fraction={heldout_fraction} must be in (0, 1).")
        self.key, self.heldout_fraction = key, heldout_fraction
        self.batch_size, self.split_seed = batch_size, split_seed
        self.n_tokens_requested = n_tokens
        self.activations = self._read()  # [N, d_in]
        n_rows = self.activations.shape[0]
        self.n_heldout = max(1, int(round(n_rows * heldout_fraction)))
        available = n_rows - self.n_heldout
        if n_tokens is not None and n_tokens > available:
            raise DataError(
                f"data.n_tokens={n_tokens} exceeds the {available} training rows of {self.path} "
                f"({n_rows} rows, {self.n_heldout} held out)."
            )
        self.n_tokens = n_tokens if n_tokens is not None else available
        check_token_budget(self.n_tokens, batch_size, f"data.path={self.path}")

    def _read(self) -> Tensor:
        try:
            if self.path.suffix == ".npy":
                array = np.load(self.path, allow_pickle=False)
                tensor = torch.from_numpy(np.ascontiguousarray(array))
            else:
                tensor = self._read_safetensors()
        except DataError:
            raise
        except Exception as error:  # a truncated or foreign file: say which and why
            raise DataError(f"Cannot read activations from {self.path}: {error}") from error
        if tensor.ndim != 2 or min(tensor.shape) == 0:
            raise DataError(
                f"{self.path} holds a tensor of shape {tuple(tensor.shape)}; "
                "expected a non-empty [n_tokens, d_in] matrix."
            )
        if not tensor.is_floating_point():
            raise DataError(f"{self.path} holds {tensor.dtype} values; expected floating point.")
        tensor = tensor.float()
        if not torch.isfinite(tensor).all():
            raise DataError(f"{self.path} contains NaN or infinite activations.")
        return tensor

    def _read_safetensors(self) -> Tensor:
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as handle:
            keys = list(handle.keys())
            if self.key is None:
                if len(keys) != 1:
                    raise DataError(
                        f"{self.path} holds tensors {keys}; choose one with data.key=NAME."
                    )
                return handle.get_tensor(keys[0])
            if self.key not in keys:
                raise DataError(f"data.key={self.key!r} is not in {self.path}; it holds {keys}.")
            return handle.get_tensor(self.key)

    def load(self) -> ActivationSplits:
        order = torch.randperm(
            self.activations.shape[0], generator=torch.Generator().manual_seed(self.split_seed)
        )
        heldout = self.activations[order[: self.n_heldout]]
        train = self.activations[order[self.n_heldout : self.n_heldout + self.n_tokens]]
        return ActivationSplits(train=train, heldout=heldout, provenance=self.provenance())

    def provenance(self) -> dict[str, Any]:
        return {
            "source": "activation_file",
            "model_name": "unknown",
            "hook_name": "unknown",
            "dtype": "float32",
            "path": str(self.path.resolve()),
            "file_sha256": file_sha256(self.path),
        }
