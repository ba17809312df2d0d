"""Schemas of the ``sae`` group: one per registered architecture.

Each architecture module of :mod:`saeseeds.sae` defines its config dataclass; this module stores
each as ``schema/sae/<architecture>``, which ``conf/sae/<architecture>.yaml`` extends. Adding an
architecture needs no change here.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore


def register(store: ConfigStore) -> None:
    from saeseeds.sae import REGISTRY

    for name, architecture in REGISTRY.items():
        store.store(group="schema/sae", name=name, node=architecture.Config)
