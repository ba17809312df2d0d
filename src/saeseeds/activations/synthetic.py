"""Synthetic activations from a known ground-truth dictionary.

Each sample is a sparse non-negative combination of ``k_true`` unit directions plus isotropic
noise. The dictionary and samples depend only on ``data_seed``, so every SAE seed of a sweep sees
the same data, and the ground truth is saved so recovery can be checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saeseeds.activations.base import ActivationSource, ActivationSplits, check_token_budget
from saeseeds.contract import GROUND_TRUTH_FILE
from saeseeds.errors import DataError
from saeseeds.io import atomic_save_safetensors


class SyntheticSource(ActivationSource):
    def __init__(
        self,
        d_in: int,
        n_true_features: int,
        k_true: int,
        noise_std: float,
        min_magnitude: float,
        max_magnitude: float,
        n_tokens: int,
        heldout_fraction: float,
        batch_size: int,
        data_seed: int,
        spectrum_decay: float = 0.0,
    ):
        if d_in <= 0 or n_true_features <= 0:
            raise DataError(
                f"data.d_in={d_in} and data.n_true_features={n_true_features} must be positive."
            )
        if not 0 < k_true <= n_true_features:
            raise DataError(
                f"data.k_true={k_true} must be in [1, data.n_true_features={n_true_features}]."
            )
        if not 0 <= min_magnitude <= max_magnitude:
            raise DataError(
                f"Need 0 <= data.min_magnitude <= data.max_magnitude, "
                f"got {min_magnitude} and {max_magnitude}."
            )
        if not 0 < heldout_fraction < 1:
            raise DataError(f"data.heldout_fraction={heldout_fraction} must be in (0, 1).")
        check_token_budget(n_tokens, batch_size, "data=synthetic")
        self.d_in, self.n_true_features, self.k_true = d_in, n_true_features, k_true
        self.noise_std = noise_std
        self.min_magnitude, self.max_magnitude = min_magnitude, max_magnitude
        self.n_tokens, self.batch_size = n_tokens, batch_size
        self.n_heldout = max(batch_size, int(round(n_tokens * heldout_fraction)))
        if spectrum_decay < 0:
            raise DataError(f"data.spectrum_decay={spectrum_decay} must be >= 0.")
        self.spectrum_decay = spectrum_decay
        self.data_seed = data_seed
        self.generator = torch.Generator().manual_seed(data_seed)
        self.true_directions = self._sample_directions()  # [n_true_features, d_in]

    def _sample_directions(self) -> Tensor:
        directions = torch.randn(self.n_true_features, self.d_in, generator=self.generator)
        if self.spectrum_decay > 0:
            scales = torch.exp(-self.spectrum_decay * torch.arange(self.d_in) / self.d_in)
            directions = directions * scales
        return directions / directions.norm(dim=1, keepdim=True)

    def sample(self, n_samples: int) -> Tensor:  # [n_samples, d_in]
        scores = torch.rand(n_samples, self.n_true_features, generator=self.generator)
        active = scores.topk(self.k_true, dim=1).indices  # uniform random k-subsets
        span = self.max_magnitude - self.min_magnitude
        magnitudes = self.min_magnitude + span * torch.rand(
            n_samples, self.k_true, generator=self.generator
        )
        codes = torch.zeros(n_samples, self.n_true_features).scatter_(1, active, magnitudes)
        noise = self.noise_std * torch.randn(n_samples, self.d_in, generator=self.generator)
        return codes @ self.true_directions + noise

    def load(self) -> ActivationSplits:
        return ActivationSplits(
            train=self.sample(self.n_tokens),
            heldout=self.sample(self.n_heldout),
            provenance=self.provenance(),
        )

    def provenance(self) -> dict[str, Any]:
        return {
            "source": "synthetic",
            "model_name": "synthetic",
            "hook_name": "synthetic",
            "dtype": "float32",
            "data_seed": self.data_seed,
            "n_true_features": self.n_true_features,
            "k_true": self.k_true,
            "spectrum_decay": self.spectrum_decay,
        }

    def write_artifacts(self, run_dir: Path) -> None:
        atomic_save_safetensors(
            Path(run_dir) / GROUND_TRUTH_FILE,
            {"true_directions": self.true_directions},
            metadata={"k_true": str(self.k_true)},
        )
