"""Typed config schemas (Hydra ConfigStore), one module per group, and their validation.

``register_configs()`` must run before Hydra composes a config; both entry scripts call it.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from saeseeds.io import fit_name

MAX_FOLDER_NAME = 200  # file systems allow 255 bytes per path component


def job_subdir(override_dirname: str, job_number: int | str) -> str:
    """Name a sweep's job folder from its overrides; fall back to the job number.

    Names too long for a file system keep their start plus a hash of the whole name, so they stay
    unique across the sweeps that share a folder (job numbers restart in every sweep).
    """
    if not override_dirname:
        return str(job_number)
    # A value such as model.path=/x/y or model.name=org/model must not nest folders.
    return fit_name(override_dirname.replace("/", "%2F"), MAX_FOLDER_NAME)


def register_configs() -> None:
    from saeseeds.config import data, hook, model, sae, trainer
    from saeseeds.tracking import LoggerConfig

    if not OmegaConf.has_resolver("job_subdir"):
        OmegaConf.register_new_resolver("job_subdir", job_subdir)
    store = ConfigStore.instance()
    store.store(group="schema/model", name="model", node=model.ModelConfig)
    store.store(group="schema/hook", name="hook", node=hook.HookConfig)
    store.store(group="schema/logger", name="logger", node=LoggerConfig)
    data.register(store)
    sae.register(store)
    trainer.register(store)
