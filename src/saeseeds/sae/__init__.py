"""SAE architectures behind one interface (:mod:`saeseeds.sae.base`), one module each, and their
configs and registry (:mod:`saeseeds.sae.configs`).

Importing the package imports no torch: it holds only the configs, which is all that Hydra's
schemas and the config check need, so a bad option is refused without the seconds torch takes to
import. An architecture's module, and torch, are imported when its SAE class is first needed:
:func:`architecture`, :func:`build_sae`, or the names ``SAE`` and ``SAEOutput``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from saeseeds.errors import ConfigError
from saeseeds.sae.configs import REGISTRY, SAEConfig

if TYPE_CHECKING:
    from saeseeds.sae.base import SAE, SAEOutput


def architecture_config(name: str) -> type[SAEConfig]:
    """The config dataclass of the architecture ``sae=<name>`` picks (no torch)."""
    if name not in REGISTRY:
        raise ConfigError(
            f"sae.architecture={name!r} is not available; choose one of {sorted(REGISTRY)}."
        )
    return REGISTRY[name]


def architecture(name: str) -> type[SAE]:
    """The SAE class of the architecture ``sae=<name>`` picks (imports its module, and torch)."""
    module, _, class_name = architecture_config(name).sae_class.rpartition(".")
    return getattr(importlib.import_module(module), class_name)


def build_sae(d_in: int, config: SAEConfig) -> SAE:
    return architecture(config.architecture)(d_in, config)


def __getattr__(name: str) -> Any:
    """``SAE`` and ``SAEOutput``, imported on first use (PEP 562) because they need torch."""
    if name in ("SAE", "SAEOutput"):
        from saeseeds.sae import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "REGISTRY",
    "SAE",
    "SAEConfig",
    "SAEOutput",
    "architecture",
    "architecture_config",
    "build_sae",
]
