"""Reading and checking Lightning checkpoints (torch only; Lightning is not imported here).

Every read goes through :func:`read_checkpoint`, which passes ``weights_only=True`` explicitly
rather than relying on torch's default (``pyproject.toml`` allows torch releases where the
default is False), and turns a missing, corrupt, truncated, unsafe or foreign file into a
:class:`ConfigError` naming it. Every checkpoint carries the job's config and seeds under
:data:`RECORD_KEY` (written by :class:`saeseeds.training.lifecycle.lightning_plugins.RunRecord`)
and the identity of its training data; :func:`check_config`, :func:`check_shapes` and
:func:`check_data` refuse to resume a run whose config, SAE shapes or data differ from the
checkpoint's. Writing is :mod:`saeseeds.training.lifecycle.lightning_plugins`'s.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import torch

from saeseeds import contract
from saeseeds.errors import ConfigError

log = logging.getLogger(__name__)
RECORD_KEY = "saeseeds"
# Keys every Lightning training checkpoint has.
LIGHTNING_KEYS = ("state_dict", "loops", "global_step")
SAME_RUN_HINT = (
    "Resume with the same seed and config as the interrupted run, or start a new run folder."
)


def read_checkpoint(path: Path, what: str | None = None) -> dict[str, Any]:
    """A Lightning checkpoint read with ``weights_only=True``; a clear error when it is not one."""
    what = what or str(path)
    if not path.is_file():
        raise ConfigError(f"{what}: no such checkpoint file.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "global" not in str(error).lower():  # random bytes also fail as a bad pickle
            raise ConfigError(
                f"{what} is truncated, corrupt or not a torch checkpoint (it is not a torch "
                "file). Resume from an intact checkpoints/last.ckpt, or start the run again in a "
                "new folder."
            ) from None
        raise ConfigError(
            f"{what} is not a checkpoint that can be loaded safely: it holds Python objects "
            f"beyond tensors and plain values ({_first_line(error)}). Resume only from "
            "checkpoints/last.ckpt of a saeseeds run."
        ) from None
    except Exception as error:  # noqa: BLE001 - garbage makes the unpickler raise anything
        # (RuntimeError, EOFError, OSError, ValueError, BadZipFile, and KeyError from a memo
        # reference to nothing, IndexError, ... for random bytes).
        raise ConfigError(
            f"{what} is truncated, corrupt or not a torch checkpoint ({_first_line(error)}). "
            "Resume from an intact checkpoints/last.ckpt, or start the run again in a new folder."
        ) from None
    if not isinstance(checkpoint, dict) or not all(key in checkpoint for key in LIGHTNING_KEYS):
        raise ConfigError(
            f"{what} is not a Lightning training checkpoint (it lacks "
            f"{', '.join(LIGHTNING_KEYS)}). Resume only from checkpoints/last.ckpt of a "
            "saeseeds run."
        )
    return checkpoint


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def checkpoint_step(checkpoint: dict[str, Any]) -> int:
    return int(checkpoint.get("global_step", 0))


def check_config(checkpoint: dict[str, Any], run_config: dict[str, Any], what: str) -> None:
    """Refuse a checkpoint written by a run with another config (seed included)."""
    record = checkpoint.get(RECORD_KEY)
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        log.warning(
            "%s has no config record (written before saeseeds recorded one); only its seed, data "
            "order and shapes can be checked.",
            what,
        )
        return
    recorded = contract.without_keys(record["config"], contract.OPERATIONAL_KEYS)
    current = contract.without_keys(run_config, contract.OPERATIONAL_KEYS)
    if contract.differing_keys(recorded, current):
        raise ConfigError(
            f"{what} was written by a run with another config "
            f"({contract.describe_differences(recorded, current)}; checkpoint vs now). "
            + SAME_RUN_HINT
        )


def check_shapes(checkpoint: dict[str, Any], module: torch.nn.Module, what: str) -> None:
    """Refuse a checkpoint whose tensors do not fit this run's SAE."""
    saved = checkpoint.get("state_dict")
    if not isinstance(saved, dict):
        raise ConfigError(f"{what} has no state_dict. {SAME_RUN_HINT}")
    expected = module.state_dict()
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise ConfigError(
            f"{what} holds another model: missing {missing[:4]}, unexpected {unexpected[:4]}. "
            + SAME_RUN_HINT
        )
    # The SAE's own tensors first: they name the size that differs.
    for name, tensor in sorted(expected.items(), key=lambda item: not item[0].startswith("saes.")):
        other = saved[name]
        if not isinstance(other, torch.Tensor) or tuple(other.shape) != tuple(tensor.shape):
            shape = list(other.shape) if isinstance(other, torch.Tensor) else type(other).__name__
            raise ConfigError(
                f"{what} holds an SAE of another size: {name} is {shape} there and "
                f"{list(tensor.shape)} here. " + SAME_RUN_HINT
            )


def check_data(checkpoint: dict[str, Any], provenance: dict[str, Any], what: str) -> None:
    """Refuse a checkpoint trained on other data than this run loaded (a replaced activation file,
    an edited corpus, other model weights): resuming would mix two datasets in one SAE.

    Only the facts both records hold are compared, so a checkpoint whose record names its data
    differently (written by another version) is not refused for that alone.
    """
    record = checkpoint.get(RECORD_KEY)
    recorded = record.get("data_identity") if isinstance(record, dict) else None
    if not isinstance(recorded, dict):
        log.warning("%s does not record its data (written before saeseeds did); not checked.", what)
        return
    current = contract.data_identity(provenance)
    shared = sorted(set(recorded) & set(current))
    if not shared and recorded and current:
        log.warning("%s records its data by other facts than this version; not checked.", what)
    before = {key: recorded[key] for key in shared}
    now = {key: current[key] for key in shared}
    if contract.differing_keys(before, now):
        raise ConfigError(
            f"{what} was trained on other data than this run loaded "
            f"({contract.describe_identity_differences(before, now)}; checkpoint vs now): the "
            "data changed since it was written. Restore the data it was trained on to resume, or "
            "start a new run folder for the new data."
        )
