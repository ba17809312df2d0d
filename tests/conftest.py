"""Shared fixtures: an offline, quiet W&B and composed tiny training configs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig

from tests.helpers import TINY_SAE, TINY_SYNTHETIC, compose_train


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path_factory.mktemp("wandb_config")))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


@pytest.fixture
def train_config(tmp_path) -> Callable[..., DictConfig]:
    def make(*overrides: str, output_dir: Path | None = None) -> DictConfig:
        data = [] if "data=activations" in overrides else TINY_SYNTHETIC
        return compose_train([*TINY_SAE, *data, *overrides], output_dir or tmp_path / "run")

    return make
