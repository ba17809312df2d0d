"""Weights & Biases settings shared by both apps: the ``logger`` config schema, and choosing the
mode (online with credentials, offline otherwise).

Both apps compose ``conf/logger/{wandb,none}.yaml`` against :class:`LoggerConfig`. This module
never creates runs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

VALID_MODES = ("auto", "online", "offline", "disabled")


@dataclass
class LoggerConfig:
    """Weights & Biases logging; ``logger=none`` disables it."""

    enabled: bool = True
    project: str = "saeseeds"
    entity: str | None = None
    mode: str = "auto"
    """auto | online | offline | disabled; auto is online when an API key is available."""
    group: str | None = None
    """``null``: training uses the multirun folder (all jobs of a sweep share it) or the run
    folder; the analysis uses the sweep's group from environment.json."""
    name: str | None = None
    """``null``: training uses the job's overrides; the analysis "analysis-<group>"."""
    tags: list[str] = field(default_factory=list)


def resolve_wandb_mode(requested: str | None) -> str:
    """``auto`` means online when an API key is available (env or netrc), offline otherwise."""
    requested = (requested or "auto").lower()
    if requested not in VALID_MODES:
        raise ValueError(f"logger.mode={requested!r} is not valid; choose one of {VALID_MODES}.")
    env_mode = os.environ.get("WANDB_MODE")
    if requested == "auto" and env_mode in ("online", "offline", "disabled"):
        return env_mode
    if requested != "auto":
        return requested
    return "online" if _has_credentials() else "offline"


def _has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc

        hosts = netrc.netrc().hosts
    except (FileNotFoundError, OSError, netrc.NetrcParseError):
        return False
    return any("wandb" in host for host in hosts)


def offline_hint(save_dir: str) -> str:
    return (
        f"W&B is offline (no API key found); runs are saved under {save_dir}/wandb. "
        "Upload them later with `wandb sync <run folder>`."
    )
