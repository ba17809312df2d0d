"""SAE architectures behind one interface (:mod:`saeseeds.sae.base`), one module each.

Importing the package imports every module in it, so an architecture registers itself; nothing
else lists them. :func:`architecture` looks one up by the name ``sae=<name>`` uses.
"""

from __future__ import annotations

import importlib
import pkgutil

from saeseeds.errors import ConfigError
from saeseeds.sae.base import REGISTRY, SAE, SAEConfig, SAEOutput

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def architecture(name: str) -> type[SAE]:
    if name not in REGISTRY:
        raise ConfigError(
            f"sae.architecture={name!r} is not available; choose one of {sorted(REGISTRY)}."
        )
    return REGISTRY[name]


def build_sae(d_in: int, config: SAEConfig) -> SAE:
    return architecture(config.architecture)(d_in, config)


__all__ = ["REGISTRY", "SAE", "SAEConfig", "SAEOutput", "architecture", "build_sae"]
