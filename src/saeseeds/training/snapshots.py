"""Snapshots: each SAE's folded weights at fixed fractions of training, for the analysis's
stability trajectory (``snapshots/`` in docs/contract.md).

:class:`SnapshotWriter` is a Lightning callback. At the end of the step where ``global_step``
reaches ``round(fraction · total_steps)`` (the steps the held-out FVU curve is measured at), it
writes every SAE's folded weights (the tensors, names and folding of ``sae_weights.safetensors``)
to ``<run>/snapshots/fraction=F.safetensors``, atomically, and rewrites ``snapshots/index.json``.
What it wrote is part of its checkpointed state, so a resumed run keeps the snapshots already
written and writes the rest at the same steps, from the same weights: the files are
byte-identical to an uninterrupted run's. It only reads the SAEs and draws no random number, so
the weights are identical with and without it. A fraction whose step passed before the writer
could see it (a run resumed from a checkpoint saved with snapshots off) is recorded as missed,
never written from later weights. Several SAEs in one fit (``seeds=[...]``) write into their own
folders; under DDP only rank 0 writes.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from saeseeds import contract
from saeseeds.io import atomic_save_safetensors, atomic_write_json
from saeseeds.training.batch_order import fraction_step
from saeseeds.training.callbacks import HeldoutCurve

log = logging.getLogger(__name__)


class SnapshotWriter(Callback):
    """Writes the snapshots of the SAEs a module trains (``module.trained_saes``) into
    ``run_dirs`` (one per SAE, in the same order; None for an SAE whose folder is not written)."""

    def __init__(self, fractions: list[float], run_dirs: list[Path | None], batch_size: int):
        self.fractions = sorted(float(fraction) for fraction in fractions)
        self.run_dirs = list(run_dirs)
        self.batch_size = batch_size
        self.entries: dict[str, dict[str, Any]] = {}  # "0.25" -> step, tokens, FVU per SAE
        self.missed: dict[str, int] = {}  # "0.25" -> the step it was due at
        self.bytes: list[int] = [0] * len(self.run_dirs)
        self.seconds = 0.0

    def on_train_start(self, trainer: L.Trainer, module: Any) -> None:
        if trainer.is_global_zero and not self.entries and trainer.global_step == 0:
            for run_dir in self.run_dirs:  # a fresh start: nothing of an earlier attempt stays
                if run_dir is not None:
                    remove_snapshots(run_dir)

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, *args: Any) -> None:
        step = trainer.global_step
        for fraction in self.fractions:
            key = f"{fraction:g}"
            if key in self.entries or key in self.missed:
                continue
            due = fraction_step(fraction, module.total_steps)
            if step == due:
                self._write(trainer, module, fraction, step)
            elif step > due:
                self.missed[key] = due
                log.warning(
                    "No snapshot at %s of training (step %d): the run resumed at a later step "
                    "from a checkpoint that had not recorded it.", key, due,
                )  # fmt: skip

    def _write(self, trainer: L.Trainer, module: Any, fraction: float, step: int) -> None:
        started = time.perf_counter()
        key = f"{fraction:g}"
        curves = _fvu_curves(trainer)
        fvus = [curve.get(key) for curve in curves] if curves else []
        self.entries[key] = {"fraction": fraction, "step": step, "fvu": fvus}
        if trainer.is_global_zero:
            metadata = {
                "saeseeds_contract_version": str(contract.CONTRACT_VERSION),
                "fraction": key,
                "step": str(step),
                "tokens_seen": str(step * self.batch_size),
            }
            for index, (sae, run_dir) in enumerate(
                zip(module.trained_saes, self.run_dirs, strict=True)
            ):
                if run_dir is None:
                    continue
                path = run_dir / contract.SNAPSHOTS_DIR / contract.snapshot_file(fraction)
                atomic_save_safetensors(path, sae.folded_state(module.input_scale), metadata)
                self.bytes[index] += path.stat().st_size
        self.seconds += time.perf_counter() - started
        if trainer.is_global_zero:
            for index, run_dir in enumerate(self.run_dirs):
                if run_dir is not None:
                    atomic_write_json(
                        run_dir / contract.SNAPSHOTS_DIR / contract.SNAPSHOT_INDEX,
                        self.index(index),
                    )

    def index(self, sae_index: int) -> dict[str, Any]:
        """snapshots/index.json of one SAE's folder."""
        snapshots = []
        for entry in sorted(self.entries.values(), key=lambda entry: entry["fraction"]):
            fvus = entry["fvu"]
            snapshots.append(
                {
                    "fraction": entry["fraction"],
                    "step": entry["step"],
                    "tokens_seen": entry["step"] * self.batch_size,
                    "file": contract.snapshot_file(entry["fraction"]),
                    "heldout_fvu": fvus[sae_index] if sae_index < len(fvus) else None,
                }
            )
        return {
            "format": contract.SNAPSHOTS_FORMAT,
            "snapshots": snapshots,
            "missed": [{"fraction": float(key), "step": due} for key, due in self.missed.items()],
            "bytes": self.bytes[sae_index],
            "seconds": round(self.seconds, 3),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "entries": {key: dict(entry) for key, entry in self.entries.items()},
            "missed": dict(self.missed),
            "bytes": list(self.bytes),
            "seconds": self.seconds,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.entries = {key: dict(entry) for key, entry in state_dict.get("entries", {}).items()}
        self.missed = dict(state_dict.get("missed", {}))
        saved_bytes = list(state_dict.get("bytes", []))
        if len(saved_bytes) == len(self.run_dirs):
            self.bytes = saved_bytes
        self.seconds = float(state_dict.get("seconds", 0.0))


def _fvu_curves(trainer: L.Trainer) -> list[dict[str, float]]:
    """The held-out FVU curves measured so far, one per SAE (the FVU at a snapshot's fraction is
    on them when the fraction is one of the curve's)."""
    for callback in trainer.callbacks:
        if isinstance(callback, HeldoutCurve):
            return callback.curves
    return []


def remove_snapshots(run_dir: Path) -> None:
    """Delete the snapshot files (and temporaries of killed writes) in ``run_dir/snapshots``."""
    folder = Path(run_dir) / contract.SNAPSHOTS_DIR
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        is_snapshot = path.name.startswith("fraction=") and path.suffix == ".safetensors"
        if path.is_file() and (
            is_snapshot or path.name == contract.SNAPSHOT_INDEX or path.name.endswith(".tmp")
        ):
            path.unlink(missing_ok=True)
    if not any(folder.iterdir()):
        folder.rmdir()


def snapshot_writer(trainer_cfg: Any, run_dirs: list[Path | None], batch_size: int) -> Callback:
    """The writer of ``trainer.snapshot_fractions``; with ``trainer.snapshots`` off it writes
    nothing and only clears what an earlier attempt at a fresh run left (off means no folder)."""
    enabled = bool(trainer_cfg.get("snapshots", False))
    fractions = list(trainer_cfg.get("snapshot_fractions") or []) if enabled else []
    return SnapshotWriter(fractions, run_dirs, batch_size)


def snapshot_cost(run_dir: Path) -> dict[str, Any]:
    """``{"snapshots": {"count", "bytes", "seconds"}}`` for metrics.json, from the folder's
    index; empty when the run wrote no snapshots."""
    path = Path(run_dir) / contract.SNAPSHOTS_DIR / contract.SNAPSHOT_INDEX
    if not path.is_file():
        return {}
    index = json.loads(path.read_text(encoding="utf-8"))
    return {
        "snapshots": {
            "count": len(index["snapshots"]),
            "bytes": index["bytes"],
            "seconds": index["seconds"],
        }
    }
