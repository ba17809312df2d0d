"""Writes a training run folder, exactly contract v1 of DESIGN.md, and what produced it.

Every file is written atomically; ``COMPLETE`` is written last by :func:`mark_complete`. This module
does not train or evaluate; it only serialises what it is given.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from saeseeds import CONTRACT_VERSION
from saeseeds.io_utils import atomic_save_safetensors, atomic_write_json, atomic_write_text

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
COMPLETE_MARKER = "COMPLETE"


def write_weights(run_dir: Path, folded_state: dict[str, torch.Tensor]) -> None:
    atomic_save_safetensors(
        run_dir / "sae_weights.safetensors",
        folded_state,
        # One key only: safetensors writes metadata from a hash map, so several keys would come
        # out in a random order and same-seed files would not be byte-identical.
        metadata={"saeseeds_contract_version": str(CONTRACT_VERSION)},
    )


def write_feature_stats(
    run_dir: Path, fire_count: torch.Tensor, activation_sum: torch.Tensor, n_tokens: int
) -> None:
    atomic_save_safetensors(
        run_dir / "feature_stats.safetensors",
        {"fire_count": fire_count.long().cpu(), "activation_sum": activation_sum.float().cpu()},
        metadata={"n_tokens": str(int(n_tokens))},
    )


def write_json(run_dir: Path, name: str, payload: dict[str, Any]) -> None:
    atomic_write_json(run_dir / name, payload)


def mark_complete(run_dir: Path) -> None:
    atomic_write_text(run_dir / COMPLETE_MARKER, time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")


def sae_cfg(
    sae_config: Any, d_in: int, provenance: dict[str, Any], input_scale: float, seed: int
) -> dict[str, Any]:
    return {
        "contract_version": CONTRACT_VERSION,
        "architecture": sae_config.architecture,
        "d_in": d_in,
        "n_features": int(sae_config.n_features),
        "k": int(sae_config.k),
        "model_name": provenance.get("model_name", "unknown"),
        "hook_name": provenance.get("hook_name", "unknown"),
        "dtype": "float32",
        "activation_dtype": provenance.get("dtype", "float32"),
        "normalization": {"method": sae_config.normalize, "input_scale": input_scale},
        "seed": seed,
        "data": provenance.get("source", "unknown"),
    }


def environment(
    seed: int,
    device: str,
    precision: str,
    provenance: dict[str, Any],
    config_hash: str,
    wandb_run: dict[str, Any] | None,
) -> dict[str, Any]:
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
        "git": git_state(),
        "installed_packages_sha256": installed_packages_hash(),
        "seed": seed,
        "model_weight_hash": provenance.get("model_weight_hash"),
        "activation_cache_key": provenance.get("activation_cache_key"),
        "data_provenance": provenance,
        "config_sha256": config_hash,
        "command": sys.argv,
        "wandb": wandb_run,
    }


def config_hash(resolved_config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(resolved_config, sort_keys=True).encode()).hexdigest()


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def installed_packages_hash() -> str:
    names = sorted(
        f"{dist.metadata['Name']}=={dist.version}".lower()
        for dist in importlib.metadata.distributions()
    )
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


def git_state() -> dict[str, Any] | None:
    """Commit and dirty flag of the checkout this package runs from, if it is one."""
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
