"""Writing real contract-v1 run folders (safetensors + JSON + .hydra/config.yaml) for tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from safetensors.numpy import save_file


def unit(matrix: np.ndarray) -> np.ndarray:
    return (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)


def random_directions(n: int, d_in: int, seed: int) -> np.ndarray:  # [n, d_in]
    return unit(np.random.default_rng(seed).standard_normal((n, d_in)))


def hydra_config(n_features: int, d_in: int, k: int, seed: int, **changes: Any) -> dict:
    """A composed-config stand-in with the trainer's top-level keys."""
    config = {
        "model": {"name": "synthetic"},
        "hook": {"point": "resid_pre", "layer": 6},
        "sae": {"architecture": "topk", "n_features": n_features, "k": k},
        "data": {"d_in": d_in, "n_true_features": 32},
        "trainer": {"max_epochs": 1, "enable_progress_bar": seed % 2 == 0},
        "logger": {"enabled": True, "mode": "offline", "group": None},
        "paths": {"output_dir": "${hydra:runtime.output_dir}", "cache_dir": "outputs/cache"},
        "seed": seed,
        "resume": False,
        "ckpt_path": None,
    }
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


def write_run_folder(
    folder: Path,
    decoder: np.ndarray,  # [n_features, d_in]
    *,
    seed: int = 1,
    encoder: np.ndarray | None = None,  # [d_in, n_features]; default decoder.T
    fire_count: np.ndarray | None = None,
    n_tokens: int = 1000,
    k: int = 4,
    hook_name: str = "synthetic",
    contract_version: int = 1,
    config: dict | None = None,
    top_examples: dict[int, list[dict]] | None = None,
    wandb_group: str | None = "sweep-group",
    complete: bool = True,
) -> Path:
    """A run folder as the trainer writes it; ``config`` replaces .hydra/config.yaml."""
    n_features, d_in = decoder.shape
    folder.mkdir(parents=True, exist_ok=True)
    encoder = decoder.T.copy() if encoder is None else encoder
    fire_count = np.full(n_features, 10) if fire_count is None else fire_count
    save_file(
        {
            "W_enc": np.ascontiguousarray(encoder, dtype=np.float32),
            "b_enc": np.zeros(n_features, dtype=np.float32),
            "W_dec": np.ascontiguousarray(decoder, dtype=np.float32),
            "b_dec": np.zeros(d_in, dtype=np.float32),
        },
        str(folder / "sae_weights.safetensors"),
    )
    save_file(
        {
            "fire_count": np.asarray(fire_count, dtype=np.int64),
            "activation_sum": np.asarray(fire_count, dtype=np.float32),
        },
        str(folder / "feature_stats.safetensors"),
        metadata={"n_tokens": str(n_tokens)},
    )
    cfg = {
        "contract_version": contract_version,
        "architecture": "topk",
        "d_in": d_in,
        "n_features": n_features,
        "k": k,
        "model_name": "synthetic",
        "hook_name": hook_name,
        "dtype": "float32",
        "normalization": {"method": "scalar", "input_scale": 1.0},
        "seed": seed,
        "data": "synthetic",
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))
    (folder / ".hydra").mkdir(exist_ok=True)
    config = hydra_config(n_features, d_in, k, seed) if config is None else config
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    metrics = {"mse": 0.1, "fvu": 0.05, "explained_variance": 0.95, "l0": float(k)}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    wandb = {"group": wandb_group, "name": folder.name, "mode": "offline"} if wandb_group else None
    (folder / "environment.json").write_text(json.dumps({"python": "3.11", "wandb": wandb}))
    if top_examples is not None:
        payload = {
            "format": "saeseeds.top_examples/1",
            "marker": ["<<", ">>"],
            "features": {str(index): items for index, items in top_examples.items()},
        }
        (folder / "top_examples.json").write_text(json.dumps(payload))
    if complete:
        (folder / "COMPLETE").write_text("")
    return folder


def write_sweep(
    sweep: Path,
    dictionaries: dict[tuple[int, int], np.ndarray],
    dead: int = 0,
    **kwargs: Any,
) -> Path:
    """A multirun folder with one job per (n_features, seed): {(n, seed): decoder}; ``dead``
    randomly chosen features of each run never fire."""
    sweep.mkdir(parents=True, exist_ok=True)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    for (n_features, seed), decoder in dictionaries.items():
        fire_count = np.full(n_features, 10)
        fire_count[np.random.default_rng(seed).choice(n_features, dead, replace=False)] = 0
        write_run_folder(
            sweep / f"sae.n_features={n_features},seed={seed}",
            decoder,
            seed=seed,
            fire_count=fire_count,
            **kwargs,
        )
    return sweep


def write_snapshots(folder: Path, decoders: dict[float, np.ndarray], steps: int = 100) -> None:
    """snapshots/ as the trainer writes it: {fraction: decoder [n_features, d_in]} (encoder =
    decoderᵀ), with an index; the step of fraction f is round(f · steps)."""
    snapshots = folder / "snapshots"
    snapshots.mkdir(parents=True, exist_ok=True)
    entries = []
    for fraction, decoder in sorted(decoders.items()):
        name = f"fraction={fraction:g}.safetensors"
        n_features, d_in = decoder.shape
        save_file(
            {
                "W_enc": np.ascontiguousarray(decoder.T, dtype=np.float32),
                "b_enc": np.zeros(n_features, dtype=np.float32),
                "W_dec": np.ascontiguousarray(decoder, dtype=np.float32),
                "b_dec": np.zeros(d_in, dtype=np.float32),
            },
            str(snapshots / name),
        )
        step = round(fraction * steps)
        entries.append({"fraction": fraction, "step": step, "tokens_seen": step * 256,
                        "file": name, "heldout_fvu": 0.5 - 0.2 * fraction})  # fmt: skip
    index = {"format": "saeseeds.snapshots/1", "snapshots": entries, "missed": [],
             "bytes": 0, "seconds": 0.0}  # fmt: skip
    (snapshots / "index.json").write_text(json.dumps(index))


def write_heldout_codes(folder: Path, codes: np.ndarray, identity: str = "tokens-1") -> None:
    """heldout_codes.safetensors (CSR) of dense latents [n_tokens, n_features]."""
    rows, columns = np.nonzero(codes > 0)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(codes)))])
    save_file(
        {
            "indptr": indptr.astype(np.int64),
            "indices": columns.astype(np.int32),
            "values": codes[rows, columns].astype(np.float32),
        },
        str(folder / "heldout_codes.safetensors"),
        metadata={
            "n_tokens": str(len(codes)),
            "n_features": str(codes.shape[1]),
            "heldout_identity": identity,
            "saeseeds_contract_version": "1",
        },
    )
