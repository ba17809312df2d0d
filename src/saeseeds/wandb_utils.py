"""Choosing how Weights & Biases runs: online with credentials, offline otherwise.

Shared by both apps; it only decides the mode and prints the hint, it never creates runs.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

VALID_MODES = ("auto", "online", "offline", "disabled")


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
