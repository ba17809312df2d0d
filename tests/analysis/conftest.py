"""Fixtures of the analysis tests: analysis configs and small sweeps of real run folders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig, OmegaConf

from saeseeds.analysis.config import AnalyzeConfig
from tests.analysis.run_folders import random_directions, unit, write_sweep


@pytest.fixture
def analysis_config() -> Callable[..., DictConfig]:
    """A typed analysis config (no Hydra run needed), quick defaults, W&B off."""

    def make(sweep_dir: object, **changes: object) -> DictConfig:
        cfg = OmegaConf.structured(AnalyzeConfig)
        cfg.sweep_dir = sweep_dir
        cfg.logger.enabled = False
        cfg.progress = False
        cfg.bootstrap.n_samples = 200
        cfg.baseline.n_samples = 9
        for dotted, value in changes.items():
            OmegaConf.update(cfg, dotted, value)
        return cfg

    return make


def noisy_permuted_copy(base: np.ndarray, seed: int, noise: float) -> np.ndarray:
    """``base`` with rows shuffled and perturbed: a stand-in for another seed's dictionary."""
    rng = np.random.default_rng(seed)
    shuffled = base[rng.permutation(len(base))]
    return unit(shuffled + noise * rng.standard_normal(shuffled.shape) / np.sqrt(base.shape[1]))


@pytest.fixture
def stable_sweep(tmp_path: Path) -> Path:
    """Two groups (n_features 24 and 40, d_in 16) of three seeds each: noisy permuted copies of
    one dictionary per group, so most features are shared; two dead features per run."""
    dictionaries = {}
    for n_features in (24, 40):
        base = random_directions(n_features, 16, seed=n_features)
        for seed in (1, 2, 3):
            dictionaries[(n_features, seed)] = noisy_permuted_copy(base, seed, noise=0.3)
    sweep = tmp_path / "multirun" / "2026-11-22" / "10-00-00"
    return write_sweep(sweep, dictionaries, dead=2)
