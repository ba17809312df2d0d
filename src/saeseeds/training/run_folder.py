"""Writes a training run folder (the contract of :mod:`saeseeds.contract`, documented in
``docs/contract.md``) and the record of what produced it.

Every file is written atomically, JSON strictly; ``COMPLETE`` is written last by
:func:`mark_complete`, with the size and sha256 of every file it vouches for. Weights or metrics
that are not finite are refused before they are written: a diverged run is an error, never a
result. This module does not train or evaluate; it only serialises what it is given.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import math
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from saeseeds import contract
from saeseeds.errors import DataError
from saeseeds.io import (
    atomic_save_safetensors,
    atomic_write_json,
    atomic_write_text,
    file_manifest,
    json_text,
)

# Metrics that are undefined, not wrong, in some runs: the CE-loss score when zero ablation costs
# nothing (CE_zero = CE_clean), and the KL without a clean baseline. metrics.json says null.
MAY_BE_UNDEFINED = ("ce_loss_score", "kl_div")
RECORDED_PACKAGES = (
    "torch",
    "numpy",
    "scipy",
    "transformers",
    "transformer-lens",
    "hydra-core",
    "omegaconf",
    "lightning",
    "wandb",
    "safetensors",
)


class NonFiniteResult(DataError):
    """The trained SAE or its held-out metrics are NaN or infinite; nothing is marked complete."""


def check_finite_weights(state: dict[str, torch.Tensor], where: str) -> None:
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise NonFiniteResult(
                f"the SAE's {name} holds NaN or infinite values {where}, so it was not saved and "
                "the run is not complete. Training diverged: lower sae.lr, check the activations "
                "for NaN/inf values and their scale (sae.normalize=scalar rescales them)."
            )


def write_weights(run_dir: Path, folded_state: dict[str, torch.Tensor]) -> None:
    check_finite_weights(folded_state, "at the end of training")
    atomic_save_safetensors(
        run_dir / contract.WEIGHTS_FILE,
        folded_state,
        # One key only: safetensors writes metadata from a hash map, so several keys would come
        # out in a random order and same-seed files would not be byte-identical.
        metadata={"saeseeds_contract_version": str(contract.CONTRACT_VERSION)},
    )


def write_feature_stats(
    run_dir: Path, fire_count: torch.Tensor, activation_sum: torch.Tensor, n_tokens: int
) -> None:
    atomic_save_safetensors(
        run_dir / contract.FEATURE_STATS_FILE,
        {"fire_count": fire_count.long().cpu(), "activation_sum": activation_sum.float().cpu()},
        metadata={"n_tokens": str(int(n_tokens))},
    )


def write_json(run_dir: Path, name: str, payload: dict[str, Any]) -> None:
    atomic_write_json(run_dir / name, payload)


def write_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    """metrics.json: undefined metrics (:data:`MAY_BE_UNDEFINED`) as null; a run with any other
    value that is not finite (the held-out FVU, the curve, ...) is refused."""
    record = {
        name: None if name in MAY_BE_UNDEFINED and _not_finite(value) else value
        for name, value in metrics.items()
    }
    try:
        text = json_text(record)
    except ValueError as error:
        raise NonFiniteResult(
            f"{contract.METRICS_FILE}: {error}, so the run is not complete. The held-out "
            "activations hold NaN or infinite values, or the SAE's output overflows; check the "
            "data and its scale (sae.normalize=scalar rescales it)."
        ) from None
    atomic_write_text(run_dir / contract.METRICS_FILE, text)


def _not_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def mark_complete(run_dir: Path) -> None:
    """COMPLETE, last: the completion time and the size and sha256 of each contract file."""
    completed = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    files = file_manifest(run_dir, contract.RECORDED_FILES)
    atomic_write_json(
        run_dir / contract.COMPLETE_MARKER, contract.completion_record(files, completed)
    )


def sae_cfg(sae: Any, provenance: dict[str, Any], input_scale: float, seed: int) -> dict[str, Any]:
    """cfg.json: the contract's fields, then the ones the architecture adds."""
    return {
        "contract_version": contract.CONTRACT_VERSION,
        "architecture": sae.architecture,
        "d_in": sae.d_in,
        "n_features": sae.n_features,
        **sae.cfg_fields(),
        "model_name": provenance.get("model_name", "unknown"),
        "hook_name": provenance.get("hook_name", "unknown"),
        "dtype": "float32",
        "activation_dtype": provenance.get("dtype", "float32"),
        "normalization": {"method": sae.config.normalize, "input_scale": input_scale},
        "seed": seed,
        "data": provenance.get("source", "unknown"),
    }


def environment(
    seed: int,
    device: str,
    precision: str,
    provenance: dict[str, Any],
    resolved_config: dict[str, Any],
    wandb_run: dict[str, Any] | None,
    seeds_trained_together: list[int] | None = None,
    precision_choice: dict[str, Any] | None = None,
    eval_precision_choice: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """environment.json: versions, platform, git, hashes, and the run's own config record.
    ``seeds_trained_together``: the seeds of a multi-seed job (``seeds=[...]``) that trained this
    run, or None for a run trained by its own job. ``precision_choice``: how the step precision
    was chosen (measured, fixed by the device, or set); ``eval_precision_choice``: the same for
    the language-model forward of the CE-loss score (None without one); ``reproducibility``
    gathers what two runs of one config must share to give byte-identical weights."""
    run_config = contract.run_config(resolved_config)
    return {
        "python": sys.version.split()[0],
        "versions": {name: _version(name) for name in RECORDED_PACKAGES},
        "platform": {
            "system": platform.platform(),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.version.cuda,
            "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "device": device,
        "precision": precision,
        "precision_choice": precision_choice,
        "eval_precision_choice": eval_precision_choice,
        "reproducibility": reproducibility_conditions(device, precision, provenance),
        "git": git_state(),
        "installed_packages_sha256": installed_packages_hash(),
        "seed": seed,
        "model_weight_hash": provenance.get("model_weight_hash"),
        "activation_store_key": provenance.get("activation_store_key"),
        "data_provenance": provenance,
        "config_sha256": contract.config_sha256(run_config),
        "condition_sha256": contract.config_sha256(contract.condition_config(resolved_config)),
        "config": run_config,
        "command": sys.argv,
        "seeds_trained_together": seeds_trained_together,
        "wandb": wandb_run,
    }


def reproducibility_conditions(
    device: str, precision: str, provenance: dict[str, Any]
) -> dict[str, Any]:
    """What, besides the config and seed, decides a run's exact bytes: the device kind (and
    CPU capability or CUDA device), the step precision, the language model's dtype (text data),
    the torch CPU threads (reductions split differently) and the torch build."""
    on_cuda = device.startswith("cuda")
    return {
        "device": device.split(":")[0],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda_device": torch.cuda.get_device_name(0) if on_cuda else None,
        "precision": precision,
        "model_dtype": provenance.get("model_dtype"),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.cache  # what this process runs: read once, not again by each job of a sweep
def installed_packages_hash() -> str:
    names = sorted(
        f"{dist.metadata['Name']}=={dist.version}".lower()
        for dist in importlib.metadata.distributions()
    )
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


def git_state() -> dict[str, Any] | None:
    """Commit and dirty flag of the checkout this package runs from, if it is one."""
    state = _git_state()
    return dict(state) if state is not None else None


@functools.cache  # the code this process imported: read once, not again by each job
def _git_state() -> dict[str, Any] | None:
    source_dir = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=source_dir, capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=source_dir,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
