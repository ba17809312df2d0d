"""Schemas for the model and hook groups (placeholders until real activations land)."""

from __future__ import annotations

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore


@dataclass
class ModelConfig:
    """The language model whose activations are read."""

    name: str = "smollm2-135m"


@dataclass
class HookConfig:
    """Where in the model activations are read."""

    point: str = "resid_pre"
    layer: int = 6
    name: str = "blocks.${.layer}.hook_${.point}"


def register(store: ConfigStore) -> None:
    store.store(group="model", name="model_schema", node=ModelConfig)
    store.store(group="hook", name="hook_schema", node=HookConfig)
