"""Typed config schemas (Hydra ConfigStore) and their validation.

``register_configs()`` must run before Hydra composes a config; both entry scripts call it.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore


def register_configs() -> None:
    from saeseeds.config import activations, training

    store = ConfigStore.instance()
    training.register(store)
    activations.register(store)
