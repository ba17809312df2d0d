"""The Trainer's checkpoint plugin and the callback that records the run (its config and the
identity of its data) in every checkpoint.

:class:`AtomicCheckpointIO` serialises a checkpoint in memory and writes it with
:func:`saeseeds.io.atomic_write_bytes` (temporary file in the same folder, fsync, rename), so a
writer killed at any point, or a full disk, leaves the previous ``last.ckpt`` whole, and a full
disk is one clear error. (Lightning's own writer stages the file in the system temporary folder
and copies it over, which a full disk truncates.) Reads go through
:func:`saeseeds.training.lifecycle.checkpoint_io.read_checkpoint` (``weights_only=True``).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback

from saeseeds import contract
from saeseeds.io import atomic_write_bytes
from saeseeds.training.lifecycle.checkpoint_io import RECORD_KEY, read_checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Atomic writes; safe reads; a checkpoint already read and checked is handed over once."""

    def __init__(self) -> None:
        super().__init__()
        self._handed_over: dict[str, dict[str, Any]] = {}

    def hand_over(self, path: str | Path, checkpoint: dict[str, Any]) -> None:
        """Let Lightning's next load of ``path`` use this already-checked checkpoint."""
        self._handed_over[str(path)] = checkpoint

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(Path(path), buffer.getbuffer())

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        handed_over = self._handed_over.pop(str(path), None)
        return handed_over if handed_over is not None else read_checkpoint(Path(path))


PRECISION_FIELD = "precision_choice"
"""The run record's field with the step precision and how it was chosen, so that a resume trains
on in the precision the run started with."""


class RunRecord(Callback):
    """Stores the job's config and its seeds (in SAE order), and once the data is loaded its
    identity, in every checkpoint, for :func:`check_config`, :func:`check_data` and a resume;
    and the precision the job trains in."""

    def __init__(self, config: dict[str, Any], seeds: list[int]):
        self.record = {
            "config": config,
            "config_sha256": contract.config_sha256(config),
            "seeds": [int(seed) for seed in seeds],
        }

    def note_data(self, provenance: dict[str, Any]) -> None:
        """Record the identity of the data the run trains on (its source's provenance)."""
        self.record = {**self.record, "data_identity": contract.data_identity(provenance)}

    def note_precision(self, choice: dict[str, Any]) -> None:
        """Record the step precision (:func:`saeseeds.training.step_precision.step_precision`)."""
        self.record = {**self.record, PRECISION_FIELD: dict(choice)}

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[RECORD_KEY] = self.record
