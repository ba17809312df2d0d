"""Building an activation store: once, resumably, in parallel, and safely beside its readers.

A :class:`ShardBuilder` (the text source's, :mod:`.text`) computes the held-out tensors and any
shard ``i`` on demand, and shard i's bytes depend only on the store key and i. So a build is a loop
over the missing shards, each taken under its own lock, written atomically (shard file, then its
stats file, then the manifest entry) and skipped when another process got there first:

- a killed build continues at the first missing shard (at most one shard of work is lost);
- disjoint shard ranges built by separate processes give the bytes of one serial build;
- a job that needs a shard another process is building waits for it, then reads it.

Locks are :func:`saeseeds.activations.store.held_lock` files, removed by their holder before it
lets go, so a store at rest has none, even after a failed write. It must not know how activations
are computed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import platform
import socket
import time
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import save
from torch import Tensor
from tqdm.auto import tqdm

from saeseeds.activations.shards import RowStats, dtype_name
from saeseeds.activations.store import (
    HELDOUT_FILE,
    MANIFEST_FILE,
    STORE_FORMAT,
    ActivationStore,
    held_lock,
    is_store,
    remove_leftovers,
    shard_path,
    stats_path,
    store_folder,
    store_key,
    update_manifest,
)
from saeseeds.errors import DataError, OutputError
from saeseeds.io import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)


class ShardBuilder(Protocol):
    """What a store needs of its source."""

    label: str
    """Readable start of the folder name (model and hook)."""
    key_fields: dict[str, Any]
    """Everything that determines the store's bytes (never the number of training tokens)."""
    dtype: torch.dtype
    rows_per_shard: int

    def heldout(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The held-out tensors (``activations`` in the store dtype, plus e.g. token ids) and
        facts for the manifest."""

    def available_rows(self, limit: int) -> int:
        """How many training rows the data gives, counted up to ``limit``; cheap next to
        computing them, and called before any shard is."""

    def too_few_rows(self, available: int, needed: int) -> DataError:
        """The error for data that cannot fill ``needed`` rows."""

    def shard(self, index: int) -> Tensor:
        """Shard ``index``: [rows_per_shard, d_in] in :attr:`dtype` (fewer rows only for the last
        shard of finite data)."""

    def provenance(self) -> dict[str, Any]:
        """Facts about how the store was built (model origin, versions, ...), for the manifest."""


def folder_for(cache_dir: str | Path, builder: ShardBuilder) -> tuple[Path, str]:
    key = store_key(builder.key_fields)
    return store_folder(cache_dir, builder.label, key), key


def shards_for(n_rows: int, rows_per_shard: int) -> int:
    return -(-n_rows // rows_per_shard)


def ensure_store(
    cache_dir: str | Path,
    builder: ShardBuilder,
    n_rows: int,
    shards: range | None = None,
    progress: bool = True,
) -> tuple[ActivationStore, bool]:
    """The store of ``builder`` with the shards of its first ``n_rows`` training rows complete,
    building what is missing; (store, whether this call built anything).

    A training job (``shards=None``) builds under the store's lock, so jobs that start together
    build it once: the others wait, then read. One part of a parallel build (``shards``: its
    range) takes only the locks of its shards, so the parts run side by side. A failed write
    names the store folder.
    """
    folder, key = folder_for(cache_dir, builder)
    exclusive = shards is None
    if shards is None:
        shards = range(shards_for(n_rows, builder.rows_per_shard))
    try:
        if is_store(folder):
            store = open_store(folder, key)
            if all(store.present(index) for index in shards):
                return store, False
        with held_lock(folder) if exclusive else contextlib.nullcontext():
            return _ensure(folder, key, builder, n_rows, shards, progress, exclusive)
    except OutputError as error:
        raise OutputError(f"activation store {folder}: {error}") from None
    except OSError as error:  # a failed read or write outside saeseeds.io's atomic writers
        if error.errno is None:
            raise
        raise OutputError(
            f"activation store {folder}: {error.strerror or error} ({error.filename})."
        ) from None


def open_store(folder: Path, key: str) -> ActivationStore:
    store = ActivationStore(folder, repair=True)
    if store.key != key:
        raise DataError(
            f"Activation store {folder} holds the key {store.key[:16]}..., not {key[:16]}...; "
            "move the folder away."
        )
    return store


def _ensure(
    folder: Path,
    key: str,
    builder: ShardBuilder,
    n_rows: int,
    shards: range,
    progress: bool,
    store_locked: bool,
) -> tuple[ActivationStore, bool]:
    built = False
    if not is_store(folder):
        with contextlib.nullcontext() if store_locked else held_lock(folder):
            if not is_store(folder):  # another process may have created it meanwhile
                create_store(folder, key, builder)
                built = True
    store = open_store(folder, key)
    missing = [index for index in shards if not store.present(index)]
    if missing:
        needed = min(n_rows, (max(missing) + 1) * builder.rows_per_shard)
        total = store.manifest.get("train_rows")  # known once the data has run out
        available = builder.available_rows(needed) if total is None else min(total, needed)
        if available < needed:
            raise builder.too_few_rows(available, needed)
        built = _build_shards(store, builder, missing, progress) or built
    store.n_shards = store.complete_prefix()
    return store, built


def create_store(folder: Path, key: str, builder: ShardBuilder) -> None:
    """The held-out file and the first manifest; called with the store's lock held."""
    started = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    remove_leftovers(folder, HELDOUT_FILE)
    remove_leftovers(folder, MANIFEST_FILE)
    tensors, facts = builder.heldout()
    activations = tensors["activations"]
    data = save({name: tensor.contiguous() for name, tensor in tensors.items()})
    atomic_write_bytes(folder / HELDOUT_FILE, data)
    manifest = {
        "format": STORE_FORMAT,
        "key": key,
        "key_fields": builder.key_fields,
        "dtype": dtype_name(builder.dtype),
        "d_in": int(activations.shape[1]),
        "rows_per_shard": builder.rows_per_shard,
        "heldout": {
            "rows": int(activations.shape[0]),
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            **facts,
        },
        "shards": {},
        "train_rows": None,
        "provenance": {
            **builder.provenance(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": socket.gethostname(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "heldout_build_seconds": round(time.perf_counter() - started, 3),
        },
    }
    atomic_write_json(folder / MANIFEST_FILE, manifest)
    log.info("Created the activation store %s", folder)


def _build_shards(
    store: ActivationStore, builder: ShardBuilder, missing: list[int], progress: bool
) -> bool:
    built = False
    shard_tokens = builder.rows_per_shard
    log.info(
        "Building the activation store %s: %d shard(s) of %d tokens",
        store.folder,
        len(missing),
        shard_tokens,
    )
    with tqdm(
        total=len(missing) * shard_tokens,
        unit="tok",
        unit_scale=True,
        desc="store",
        disable=not progress,
    ) as bar:
        for index in missing:
            with held_lock(store.folder / f"shard-{index:06d}"):
                remove_leftovers(store.folder, f"shard-{index:06d}")
                store.forget(index)
                if not store.present(index):  # nobody built it while we waited
                    started = time.perf_counter()
                    rows = builder.shard(index)
                    write_shard(store, index, rows, time.perf_counter() - started)
                    built = True
            bar.update(shard_tokens)
    return built


def write_shard(store: ActivationStore, index: int, rows: Tensor, seconds: float) -> None:
    """Shard file, then its stats file (which makes it count), then the manifest entry."""
    if rows.dtype != store.dtype or rows.shape[1] != store.d_in:
        raise RuntimeError(
            f"shard {index}: {tuple(rows.shape)} {rows.dtype} does not fit the store"
        )
    data = save({"activations": rows.contiguous()})
    record = {"rows": int(rows.shape[0]), "bytes": len(data)}
    record["sha256"] = hashlib.sha256(data).hexdigest()
    atomic_write_bytes(shard_path(store.folder, index), data)
    del data
    stats = RowStats.of(rows)  # the scatter is left to the first job that needs it
    tensors = {
        "total": stats.total,
        "squared_norms": torch.tensor(stats.squared_norms, dtype=torch.float64),
    }
    # One metadata key: safetensors writes several in hash-map order, which varies between runs.
    metadata = {"shard": json.dumps(record, sort_keys=True)}
    atomic_write_bytes(stats_path(store.folder, index), save(tensors, metadata=metadata))
    record["build_seconds"] = round(seconds, 3)
    total = None  # a short shard is the last one the data fills
    if rows.shape[0] < store.rows_per_shard:
        total = index * store.rows_per_shard + int(rows.shape[0])
    update_manifest(store.folder, add={index: record}, train_rows=total)
    store._records[index] = record
