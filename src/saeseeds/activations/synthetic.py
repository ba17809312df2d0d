"""Synthetic activations from a known ground-truth dictionary.

Each sample is a sparse non-negative combination of ``k_true`` unit directions plus isotropic
noise. The dictionary depends only on ``data_seed``; training shard i is drawn from (data_seed, i)
and the held-out rows from (data_seed, "heldout"), so every SAE seed of a sweep sees the same data,
any token count is generated in bounded memory, and a smaller budget trains on a prefix of a
larger one's rows. The ground truth is saved so recovery can be checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saeseeds.activations.base import ActivationSource, ActivationSplits, check_token_budget
from saeseeds.activations.shards import GeneratedShards, TrainingRows, seeded_generator
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
        heldout_tokens: int,
        batch_size: int,
        data_seed: int,
        spectrum_decay: float = 0.0,
        shard_tokens: int = 65_536,
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
        if heldout_tokens < 1:
            raise DataError(f"data.heldout_tokens={heldout_tokens} must be at least 1.")
        check_token_budget(n_tokens, batch_size, "data=synthetic")
        self.d_in, self.n_true_features, self.k_true = d_in, n_true_features, k_true
        self.noise_std = noise_std
        self.min_magnitude, self.max_magnitude = min_magnitude, max_magnitude
        self.n_tokens, self.batch_size = n_tokens, batch_size
        self.n_heldout, self.shard_tokens = heldout_tokens, shard_tokens
        if spectrum_decay < 0:
            raise DataError(f"data.spectrum_decay={spectrum_decay} must be >= 0.")
        self.spectrum_decay = spectrum_decay
        self.data_seed = data_seed
        self.true_directions = self._sample_directions()  # [n_true_features, d_in]

    def _sample_directions(self) -> Tensor:
        generator = torch.Generator().manual_seed(self.data_seed)
        directions = torch.randn(self.n_true_features, self.d_in, generator=generator)
        if self.spectrum_decay > 0:
            scales = torch.exp(-self.spectrum_decay * torch.arange(self.d_in) / self.d_in)
            directions = directions * scales
        return directions / directions.norm(dim=1, keepdim=True)

    def sample(self, n_samples: int, generator: torch.Generator) -> Tensor:  # [n_samples, d_in]
        scores = torch.rand(n_samples, self.n_true_features, generator=generator)
        active = scores.topk(self.k_true, dim=1).indices  # uniform random k-subsets
        span = self.max_magnitude - self.min_magnitude
        magnitudes = self.min_magnitude + span * torch.rand(
            n_samples, self.k_true, generator=generator
        )
        codes = torch.zeros(n_samples, self.n_true_features).scatter_(1, active, magnitudes)
        noise = self.noise_std * torch.randn(n_samples, self.d_in, generator=generator)
        return codes @ self.true_directions + noise

    def train_shard(self, index: int, rows: int) -> Tensor:
        return self.sample(rows, seeded_generator(self.data_seed, "train", index))

    def heldout(self) -> Tensor:
        return self.sample(self.n_heldout, seeded_generator(self.data_seed, "heldout"))

    def load(self) -> ActivationSplits:
        shards = GeneratedShards(
            self.train_shard, self.d_in, self.shard_tokens, torch.float32, "synthetic data"
        )
        return ActivationSplits(
            train=TrainingRows(shards, self.n_tokens),
            heldout=self.heldout(),
            provenance=self.provenance(),
        )

    def provenance(self) -> dict[str, Any]:
        world = {
            "data_seed": self.data_seed,
            "d_in": self.d_in,
            "n_true_features": self.n_true_features,
            "k_true": self.k_true,
            "noise_std": self.noise_std,
            "min_magnitude": self.min_magnitude,
            "max_magnitude": self.max_magnitude,
            "spectrum_decay": self.spectrum_decay,
        }
        identity = {
            "kind": "synthetic",
            **world,
            "shard_tokens": self.shard_tokens,
            "heldout_tokens": self.n_heldout,
            "n_train_tokens": self.n_tokens,
        }
        return {
            "source": "synthetic",
            "model_name": "synthetic",
            "hook_name": "synthetic",
            "dtype": "float32",
            **world,
            "data_identity": identity,
        }

    def write_artifacts(self, run_dir: Path) -> None:
        atomic_save_safetensors(
            Path(run_dir) / GROUND_TRUTH_FILE,
            {"true_directions": self.true_directions},
            metadata={"k_true": str(self.k_true)},
        )
