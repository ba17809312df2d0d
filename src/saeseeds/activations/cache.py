"""The on-disk activation cache: one folder per content key, shared by every job of a sweep.

Owns the key (a hash of everything that determines the activations), the folder layout, and safe
concurrent building: a lock per key, a temporary folder, an atomic rename, and a manifest with a
checksum that is verified on every read, so a half-written or corrupt cache is rebuilt, never used.
It also keeps the last cache read in memory, so sequential jobs in one process skip the disk.
It must not know how activations are computed: the caller passes a ``build`` function.

Layout under ``cache_dir``::

    activations/<label>-<key16>/activations.safetensors  tensors (no pickle)
    activations/<label>-<key16>/manifest.json            key fields, shapes, sha256; written last
    activations/<label>-<key16>.lock                     held while building

where ``key16`` is the first 16 hex digits of the key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file
from torch import Tensor

from saeseeds.io import atomic_directory, build_lock

log = logging.getLogger(__name__)

CACHE_FORMAT = "saeseeds.activation_cache/1"
TENSORS_FILE = "activations.safetensors"
MANIFEST_FILE = "manifest.json"


@dataclass
class CachedActivations:
    """What a cache folder holds, as read (or just built)."""

    key: str
    folder: Path
    tensors: dict[str, Tensor]
    info: dict[str, Any]
    """Extra JSON facts the builder recorded (e.g. build speed)."""
    built: bool
    """True when this call computed the activations; False when it read them."""


def cache_key(fields: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of the key fields."""
    canonical = json.dumps({"format": CACHE_FORMAT, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def cache_folder(cache_dir: str | Path, label: str, key: str) -> Path:
    safe_label = re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("._") or "activations"
    return Path(cache_dir).expanduser() / "activations" / f"{safe_label}-{key[:16]}"


_MEMORY: dict[str, CachedActivations] = {}


def load_or_build(
    cache_dir: str | Path,
    label: str,
    key_fields: dict[str, Any],
    build: Callable[[], tuple[dict[str, Tensor], dict[str, Any]]],
) -> CachedActivations:
    """Read the cache for ``key_fields``, or build it once (even with many processes racing)."""
    key = cache_key(key_fields)
    if key in _MEMORY:
        cached = _MEMORY[key]
        return CachedActivations(key, cached.folder, cached.tensors, cached.info, built=False)
    folder = cache_folder(cache_dir, label, key)
    cached, problem = _read(folder, key)
    if cached is None:
        with build_lock(folder):
            cached, problem = _read(folder, key)  # another process may have built it meanwhile
            if cached is None:
                if problem != "missing":
                    log.warning(
                        "Activation cache %s is unusable (%s); rebuilding it.", folder, problem
                    )
                cached = _build(folder, key, key_fields, build)
    _MEMORY.clear()  # one sweep's activations in memory at a time
    _MEMORY[key] = cached
    return cached


def forget_memory() -> None:
    """Drop the in-memory copy (the next read goes to disk)."""
    _MEMORY.clear()


def _read(folder: Path, key: str) -> tuple[CachedActivations | None, str]:
    """The cache in ``folder`` if it is complete and intact, else (None, what is wrong)."""
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        return None, "missing" if not folder.exists() else "incomplete: no manifest"
    try:
        manifest = json.loads(manifest_path.read_text())
        data = (folder / TENSORS_FILE).read_bytes()
    except (OSError, json.JSONDecodeError) as error:
        return None, f"unreadable: {error}"
    if manifest.get("format") != CACHE_FORMAT or manifest.get("key") != key:
        return None, "manifest of another format or key"
    if len(data) != manifest.get("bytes") or hashlib.sha256(data).hexdigest() != manifest.get(
        "sha256"
    ):
        return None, "checksum mismatch"
    try:
        tensors = load_safetensors(data)
    except Exception as error:  # safetensors raises its own error types
        return None, f"unparseable tensors: {error}"
    shapes = {name: list(tensor.shape) for name, tensor in tensors.items()}
    if shapes != manifest.get("shapes"):
        return None, "tensor shapes differ from the manifest"
    return CachedActivations(key, folder, tensors, manifest.get("info", {}), built=False), ""


def _build(
    folder: Path,
    key: str,
    key_fields: dict[str, Any],
    build: Callable[[], tuple[dict[str, Tensor], dict[str, Any]]],
) -> CachedActivations:
    """Build into a temporary folder and rename it into place; called with the lock held."""
    started = time.perf_counter()
    tensors, info = build()
    tensors = {name: tensor.contiguous().cpu() for name, tensor in tensors.items()}
    info = {**info, "build_seconds": round(time.perf_counter() - started, 3)}
    with atomic_directory(folder) as tmp:
        save_file(tensors, str(tmp / TENSORS_FILE))
        data = (tmp / TENSORS_FILE).read_bytes()
        manifest = {
            "format": CACHE_FORMAT,
            "key": key,
            "key_fields": key_fields,
            "shapes": {name: list(tensor.shape) for name, tensor in tensors.items()},
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "info": info,
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    log.info("Activation cache written to %s", folder)
    return CachedActivations(key, folder, tensors, info, built=True)
