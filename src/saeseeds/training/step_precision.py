"""The precision of the SAE training step: ``trainer.precision`` as set, or for ``null``/``auto``
the one :mod:`saeseeds.precision` chooses for this device and this SAE (bf16-mixed where it is
measurably faster, timed on the SAE step itself: forward, Top-K, losses, backward, Adam).

A resumed run keeps the precision its checkpoint was trained with, so a run never changes
precision half-way. This module decides and describes; it does not train.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from saeseeds import precision
from saeseeds.sae import SAEConfig, build_sae
from saeseeds.training.lifecycle.checkpoint_io import RECORD_KEY
from saeseeds.training.lifecycle.lightning_plugins import PRECISION_FIELD
from saeseeds.training.module import ADAM_OPTIONS, sae_step

AUTO = ("auto", None)
LIGHTNING_PRECISION = {"bfloat16": "bf16-mixed", "float32": "32-true"}
# An SAE step with fewer multiply-adds in its encoder (batch x d_in x n_features) than this is too
# small for bf16 to pay and is not timed: tiny runs train in float32 on every machine.
MIN_MEASURED_WORK = 2**27
PROBE_BATCH = 1024  # at most this many rows per timed step


def uses_cuda(accelerator: str) -> bool:
    return torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")


def step_workload(d_in: int, sae_config: SAEConfig, batch_size: int) -> str:
    """What identifies the timed step: the SAE's shape and config (not its learning schedule)."""
    fields = {
        name: value
        for name, value in sorted(asdict(sae_config).items())
        if name not in ("lr", "warmup_steps", "decay_start_fraction", "init_sample_size")
    }
    digest = json.dumps(fields, sort_keys=True, default=str)
    return (
        f"sae_step:{sae_config.architecture}:d_in={d_in}:n_features={sae_config.n_features}:"
        f"batch={min(batch_size, PROBE_BATCH)}:config={digest}"
    )


def timed_step(d_in: int, sae_config: SAEConfig, batch_size: int, dtype: torch.dtype) -> Any:
    """One training step of a fresh SAE of this config, under bf16 autocast for bfloat16 (what
    Lightning's bf16-mixed does), as a call to time."""
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(min(batch_size, PROBE_BATCH), d_in, generator=generator)
    sae = build_sae(d_in, sae_config)
    sae.initialize(rows[:256], generator)
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-4, **ADAM_OPTIONS)
    tokens_since_fired = torch.zeros(sae_config.n_features, dtype=torch.long)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss, _ = sae_step(sae, rows, tokens_since_fired, sae_config.dead_tokens_threshold)
        loss.backward()
        sae.before_optimizer_step()
        optimizer.step()
        sae.after_optimizer_step()

    return step


def step_precision(
    cfg: DictConfig,
    sae_config: SAEConfig,
    d_in: int,
    batch_size: int,
    checkpoint: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The Lightning precision of this job and how it was chosen: ``{"precision": "32-true",
    "requested": ..., "chosen": "float32", "reason": ..., "speedup": ..., ...}``."""
    requested = cfg.trainer.precision
    requested = None if requested is None else str(requested)
    if requested not in AUTO:
        return {
            "precision": requested,
            "requested": requested,
            "reason": "set by trainer.precision",
        }
    record = (checkpoint or {}).get(RECORD_KEY)
    resumed = record.get(PRECISION_FIELD) if isinstance(record, dict) else None
    if isinstance(resumed, dict) and isinstance(resumed.get("precision"), str):
        return dict(resumed)  # as chosen when the run started
    if checkpoint is not None:  # a checkpoint from before precisions were recorded
        legacy = "bf16-mixed" if uses_cuda(cfg.trainer.accelerator) else "32-true"
        reason = "resumed from a checkpoint written before precisions were recorded"
        return {"precision": legacy, "requested": requested, "reason": reason}
    device = precision.this_device("cuda" if uses_cuda(cfg.trainer.accelerator) else "cpu")
    work = min(batch_size, PROBE_BATCH) * d_in * sae_config.n_features
    choice = precision.choose(
        device,
        step_workload(d_in, sae_config, batch_size),
        Path(str(cfg.paths.model_cache_dir)),
        lambda dtype: timed_step(d_in, sae_config, batch_size, dtype),
        worth_measuring=work >= MIN_MEASURED_WORK,
    )
    return {
        "precision": LIGHTNING_PRECISION[choice.chosen],
        "requested": requested,
        **choice.record(),
    }
