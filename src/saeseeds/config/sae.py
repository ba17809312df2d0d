"""Schemas of the ``sae`` group: one per registered architecture.

Each architecture's config dataclass is registered in :mod:`saeseeds.sae.configs` (no torch);
this module stores each as ``schema/sae/<architecture>``, which ``conf/sae/<architecture>.yaml``
extends. Adding an architecture needs no change here.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore


def register(store: ConfigStore) -> None:
    from saeseeds.sae import REGISTRY

    for name, config_class in REGISTRY.items():
        store.store(group="schema/sae", name=name, node=config_class)
