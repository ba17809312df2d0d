"""Shared fixtures: composing the real Hydra configs, and an offline, quiet W&B."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from saeseeds.config import register_configs

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"

# Small synthetic problem used across tests: 32 true directions in 16 dimensions.
TINY_SYNTHETIC = [
    "data=synthetic",
    "data.d_in=16",
    "data.n_true_features=32",
    "data.k_true=2",
    "data.n_tokens=4096",
    "data.batch_size=256",
    "sae.n_features=64",
    "sae.k=4",
    "sae.lr=0.004",
    "sae.warmup_steps=5",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=4",
]


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path_factory.mktemp("wandb_config")))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def compose_train(overrides: list[str], output_dir: Path | None = None) -> DictConfig:
    """Compose conf/train.yaml exactly as the app does, outside a Hydra run."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


@pytest.fixture
def train_config(tmp_path) -> Callable[..., DictConfig]:
    def make(*overrides: str, output_dir: Path | None = None) -> DictConfig:
        return compose_train([*TINY_SYNTHETIC, *overrides], output_dir or tmp_path / "run")

    return make


def run_app(
    script: str, *args: str, cwd: Path, timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    """Run one of the entry scripts in a subprocess, as a user would."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
