"""Typed config schemas (Hydra ConfigStore) and their validation.

``register_configs()`` must run before Hydra composes a config; both entry scripts call it.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf


def job_subdir(override_dirname: str, job_number: int) -> str:
    """Name a sweep's job folder from its overrides; fall back to the job number."""
    return override_dirname or str(job_number)


def register_configs() -> None:
    from saeseeds.config import activations, training

    if not OmegaConf.has_resolver("job_subdir"):
        OmegaConf.register_new_resolver("job_subdir", job_subdir)
    store = ConfigStore.instance()
    training.register(store)
    activations.register(store)
