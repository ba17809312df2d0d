"""Helpers shared by tests: compose the real Hydra configs, run the real entry scripts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from saeseeds.config import register_configs

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"

# Small synthetic problem used across tests: 32 true directions in 16 dimensions.
TINY_SYNTHETIC = [
    "data=synthetic",
    "data.d_in=16",
    "data.n_true_features=32",
    "data.k_true=2",
    "data.n_tokens=4096",
    "data.batch_size=256",
]
# A small, fast SAE and trainer for any data source.
TINY_SAE = [
    "sae.n_features=64",
    "sae.k=4",
    "sae.lr=0.004",
    "sae.warmup_steps=5",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=4",
]


def compose_train(overrides: list[str], output_dir: Path | None = None) -> DictConfig:
    """Compose conf/train.yaml exactly as the app does, outside a Hydra run."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


def run_app(
    script: str, *args: str, cwd: Path, timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    """Run one of the entry scripts in a subprocess, as a user would."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_wandb_records(path: Path) -> list:
    """Records of an offline ``.wandb`` file (W&B's LevelDB-style log of protobuf records).

    wandb >= 0.2x no longer ships a Python reader, so tests parse the documented framing: a 7-byte
    header, then 32 KiB blocks of chunks [crc32:4][length:2][type:1][payload], where type is
    FULL=1, FIRST=2, MIDDLE=3, LAST=4 and a block tail shorter than a header is padding.
    """
    from wandb.proto import wandb_internal_pb2

    block_size, header_size = 32768, 7
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    records, pending, offset = [], b"", header_size
    while offset + header_size <= len(data):
        remaining_in_block = block_size - offset % block_size
        if remaining_in_block < header_size:
            offset += remaining_in_block
            continue
        length = int.from_bytes(data[offset + 4 : offset + 6], "little")
        kind = data[offset + 6]
        payload = data[offset + header_size : offset + header_size + length]
        offset += header_size + length
        if kind == 0 and length == 0:
            break
        pending = payload if kind in (1, 2) else pending + payload
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def offline_wandb_run(run_folder: Path) -> dict:
    """The group, name, job type, config, final summary and history (its length, its keys and
    each key's logged values in order) of an offline run."""
    import json

    (wandb_file,) = Path(run_folder).glob("*.wandb")
    contents = {
        "config": {},
        "summary": {},
        "history_rows": 0,
        "history_keys": set(),
        "history_values": {},
    }
    for record in read_wandb_records(wandb_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            contents.update(
                group=record.run.run_group,
                name=record.run.display_name,
                job_type=record.run.job_type,
            )
            updates = record.run.config.update
            contents["config"].update({u.key: json.loads(u.value_json) for u in updates})
        elif kind == "config":
            contents["config"].update(
                {u.key: json.loads(u.value_json) for u in record.config.update}
            )
        elif kind == "summary":
            contents["summary"].update(
                {u.key: json.loads(u.value_json) for u in record.summary.update}
            )
        elif kind == "history":
            contents["history_rows"] += 1
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                contents["history_keys"].add(key)
                contents["history_values"].setdefault(key, []).append(json.loads(item.value_json))
    return contents


def topk_sae(
    d_in: int, n_features: int, k: int, sparse_decoder: bool = True, fused_encoder: bool = True
):
    """A Top-K SAE built the way the app builds one (from its typed config)."""
    from saeseeds.sae.topk import TopKConfig, TopKSAE

    config = TopKConfig(n_features=n_features, k=k, sparse_decoder=sparse_decoder)
    return TopKSAE(d_in, config, fused_encoder=fused_encoder)


def store_folders(cache_dir: Path) -> list[Path]:
    """Activation store folders (not locks, not temporary folders)."""
    root = Path(cache_dir) / "stores"
    return (
        sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if root.exists()
        else []
    )
