"""The activation store on disk: a folder of fixed-size shards, a held-out file and a manifest.

Layout (``docs/store.md`` is the user's description)::

    <cache_dir>/stores/<label>-<key16>/
        manifest.json                    format, key and key fields, dtype, d_in, rows per shard,
                                         the held-out file's and every shard's bytes and sha256,
                                         build provenance; rewritten atomically as shards land
        heldout.safetensors              held-out activations (+ their token ids for text)
        shard-000000.safetensors         ``activations`` [rows, d_in] in the store's dtype
        shard-000000.stats.safetensors   that shard's Σx and Σ‖x‖² (float64), and its rows,
                                         bytes and sha256 in the metadata
        shard-000000.scatter.safetensors its scatter Σ(x − x̄)(x − x̄)ᵀ (float64), written the
                                         first time a job needs a covariance (the Gaussian control)
        corrupt/                         shards found damaged, moved aside (safe to delete)

Integrity, and when it is checked: when a job opens a store, the manifest and, for every shard it
needs, the shard file's size (a ``stat``); when a job first reads a shard, the whole file's
sha256 (in the same pass), and again at a later read only if the file has changed since; the
held-out file's sha256 whenever it is read; everything with
``python -m saeseeds.activations.store verify FOLDER``. A damaged shard is named in a one-line
error and moved to ``corrupt/``, so the next job rebuilds that shard alone. Every file is
written atomically and a shard counts only once its stats file (written after it) exists, so a
store is never read half-written.

This module owns the format, reading and checking; building is :mod:`.store_build`'s. It must not
know how activations are computed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import Tensor

from saeseeds.activations.matrix_file import READ_BLOCK, read_into
from saeseeds.activations.shards import RowStats, ShardSequence, dtype_name, storage_dtype
from saeseeds.errors import DataError
from saeseeds.io import atomic_write_bytes, atomic_write_json, build_lock, file_identity

log = logging.getLogger(__name__)

STORE_FORMAT = "saeseeds.activation_store/1"
MANIFEST_FILE = "manifest.json"
HELDOUT_FILE = "heldout.safetensors"
CORRUPT_DIR = "corrupt"
ACTIVATIONS = "activations"
STORES_DIR = "stores"


def store_key(fields: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of everything that determines the store's bytes."""
    canonical = json.dumps({"format": STORE_FORMAT, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


# Readable facts of a store's key that a run's data identity repeats beside the key itself.
IDENTITY_FIELDS = ("model_name", "model_weight_hash", "hook_name", "corpus", "store_dtype")


def store_identity(key: str, key_fields: dict[str, Any], n_rows: int) -> dict[str, Any]:
    """The data identity of a run that trains on the first ``n_rows`` rows of a store (the same
    whether the store was built by the job, read from ``data.path`` or streamed)."""
    return {
        "kind": "activation_store",
        "activation_store_key": key,
        "n_train_tokens": n_rows,
        **{name: key_fields.get(name) for name in IDENTITY_FIELDS},
    }


def store_folder(cache_dir: str | Path, label: str, key: str) -> Path:
    safe_label = re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("._") or "activations"
    return Path(cache_dir).expanduser() / STORES_DIR / f"{safe_label}-{key[:16]}"


def shard_path(folder: Path, index: int) -> Path:
    return folder / f"shard-{index:06d}.safetensors"


def stats_path(folder: Path, index: int) -> Path:
    return folder / f"shard-{index:06d}.stats.safetensors"


def scatter_path(folder: Path, index: int) -> Path:
    return folder / f"shard-{index:06d}.scatter.safetensors"


def is_store(folder: Path) -> bool:
    return (Path(folder) / MANIFEST_FILE).is_file()


@contextlib.contextmanager
def held_lock(path: Path) -> Iterator[None]:
    """``saeseeds.io.build_lock(path)``, whose lock file its holder deletes before letting go
    (filelock takes a fresh file when the one it waited on was unlinked), so that no lock file
    outlives its holder, even after a failed write."""
    with build_lock(path):
        try:
            yield
        finally:
            path.with_name(path.name + ".lock").unlink(missing_ok=True)


def remove_leftovers(folder: Path, name: str) -> None:
    """Temporary files of a writer of ``name*`` that was killed; called with the lock that
    writers of ``name`` hold, so no live writer owns them."""
    for leftover in folder.glob(f".{name}*.tmp"):
        leftover.unlink(missing_ok=True)


def update_manifest(
    folder: Path,
    add: dict[int, dict[str, Any]] | None = None,
    drop: tuple[int, ...] = (),
    train_rows: int | None = None,
) -> None:
    """Add or drop shard records (read, merge, atomic rewrite, under the manifest's lock)."""
    with held_lock(folder / "manifest"):
        remove_leftovers(folder, MANIFEST_FILE)
        manifest = read_manifest(folder)
        shards = manifest["shards"]
        shards.update({str(index): record for index, record in (add or {}).items()})
        for index in drop:
            shards.pop(str(index), None)
        manifest["shards"] = dict(sorted(shards.items(), key=lambda item: int(item[0])))
        if train_rows is not None:
            manifest["train_rows"] = train_rows
        atomic_write_json(folder / MANIFEST_FILE, manifest)


def read_manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((Path(folder) / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(
            f"Activation store {folder}: unreadable manifest.json ({error})."
        ) from error
    if not isinstance(manifest, dict) or manifest.get("format") != STORE_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise DataError(
            f"Activation store {folder} has format {found!r}; this version reads {STORE_FORMAT!r}."
        )
    return manifest


class ActivationStore(ShardSequence):
    """A store folder as a sequence of shards: the contiguous run of complete shards from 0.

    ``repair=True`` (a store its job can rebuild) moves a damaged shard aside; a store given as
    ``data.path`` is only read.
    """

    def __init__(self, folder: str | Path, repair: bool = False):
        self.folder, self.repair = Path(folder), repair
        self.manifest = read_manifest(self.folder)
        self.key: str = self.manifest["key"]
        self.d_in = int(self.manifest["d_in"])
        self.dtype = storage_dtype(self.manifest["dtype"], "the store's dtype")
        self.rows_per_shard = int(self.manifest["rows_per_shard"])
        self._records: dict[int, dict[str, Any]] = {
            int(index): record for index, record in self.manifest.get("shards", {}).items()
        }
        # Shards found missing or of the wrong size, and how: opening the store stops at the
        # first, and forgets its record, so verify reports them from here.
        self.damaged: dict[int, str] = {}
        self.n_shards = self.complete_prefix()

    # ---- which shards are there ----

    def record(self, index: int) -> dict[str, Any] | None:
        """The shard's rows, bytes and sha256: from the manifest, else from its stats file (a
        shard that landed while another process rewrote the manifest)."""
        if index not in self._records:
            sidecar = stats_path(self.folder, index)
            if not sidecar.is_file():
                return None
            try:
                with safe_open(str(sidecar), framework="pt") as handle:
                    record = json.loads((handle.metadata() or {})["shard"])
                self._records[index] = {name: record[name] for name in ("rows", "bytes", "sha256")}
            except Exception:  # noqa: BLE001 - a damaged stats file: the shard is rebuilt
                return None
        return self._records[index]

    def present(self, index: int) -> bool:
        """Cheap check: the shard is recorded and its file has the recorded size."""
        record = self.record(index)
        if record is None:
            return False
        try:
            size = shard_path(self.folder, index).stat().st_size
        except FileNotFoundError:
            size = None
        if size == record["bytes"]:
            return True
        what = "missing" if size is None else f"{size} bytes instead of {record['bytes']}"
        log.warning("Shard %d of %s is damaged (%s).", index, self.folder, what)
        self.damaged[index] = what
        self.set_aside(index)
        return False

    def complete_prefix(self) -> int:
        """Shards 0 .. n−1 all present (stat only)."""
        count = 0
        while self.present(count):
            count += 1
        return count

    def forget(self, index: int) -> None:
        self.recheck(index)
        self._records.pop(index, None)

    def recheck(self, index: int) -> None:
        """Hash the shard at its next read even if this process found it unchanged before."""
        record = self._records.get(index)
        if record is not None:
            VERIFIED.pop(verified_key(shard_path(self.folder, index), record["sha256"]), None)

    def set_aside(self, index: int) -> None:
        """Move a damaged shard (and its stats) into ``corrupt/`` so it is rebuilt alone."""
        self.forget(index)
        if not self.repair:
            return
        stamp = time.strftime("%Y%m%d-%H%M%S")
        (self.folder / CORRUPT_DIR).mkdir(exist_ok=True)
        paths = (
            stats_path(self.folder, index),
            scatter_path(self.folder, index),
            shard_path(self.folder, index),
        )
        for path in paths:
            if path.exists():
                path.replace(self.folder / CORRUPT_DIR / f"{path.name}.{stamp}")
        update_manifest(self.folder, drop=(index,))

    # ---- reading ----

    def shard_rows(self, index: int) -> int:
        record = self.record(index)
        return int(record["rows"]) if record is not None else self.rows_per_shard

    def read(self, index: int) -> Tensor:
        """The whole shard (:meth:`read_into`)."""
        tensor = torch.empty(self.shard_rows(index), self.d_in, dtype=self.dtype)
        self.read_into(index, tensor)
        return tensor

    def read_into(self, index: int, out: Tensor) -> None:
        """The shard's first ``len(out)`` rows, read from its file straight into ``out``. The
        whole file's sha256 is checked the first time this process reads it, and again whenever
        the file has changed since; a mismatch is a one-line error naming the shard."""
        record = self.record(index)
        path = shard_path(self.folder, index)
        if record is None:
            raise DataError(f"Activation store {self.folder} has no shard {index} ({path.name}).")
        key = verified_key(path, record["sha256"])
        identity, problem = read_checked(path, out, record["sha256"], VERIFIED.get(key))
        if problem is None:
            VERIFIED[key] = identity
            return
        self.set_aside(index)
        fix = (
            "it was moved to corrupt/; run again to rebuild that shard alone"
            if self.repair
            else "rebuild the store or restore the file"
        )
        raise DataError(f"Activation store shard {path} is corrupt ({problem}): {fix}.")

    def shard_stats(self, index: int, rows: int, scatter: bool) -> RowStats:
        record = self.record(index)
        if record is None or rows != record["rows"]:
            return RowStats.of(self.read(index)[:rows], scatter)  # a partial last shard
        with safe_open(str(stats_path(self.folder, index)), framework="pt") as handle:
            stats = RowStats(
                rows, handle.get_tensor("total"), float(handle.get_tensor("squared_norms"))
            )
        if scatter:
            stats.scatter = self.shard_scatter(index, record)
        return stats

    def shard_scatter(self, index: int, record: dict[str, Any]) -> Tensor:
        """The shard's scatter matrix, computed from the shard (sha256 checked) the first time
        and then kept beside it; d_in² flops a row, so builds leave it to the jobs that use it."""
        path = scatter_path(self.folder, index)
        try:
            with safe_open(str(path), framework="pt") as handle:
                if (handle.metadata() or {}).get("shard_sha256") == record["sha256"]:
                    return handle.get_tensor("scatter")
        except Exception:  # noqa: BLE001 - missing or damaged: computed again below
            pass
        scatter = RowStats.of(self.read(index), scatter=True).scatter
        assert scatter is not None
        try:
            atomic_write_bytes(
                path, save({"scatter": scatter}, metadata={"shard_sha256": record["sha256"]})
            )
        except OSError as error:  # a read-only store: computed again next time, nothing more
            log.info("Could not keep the scatter of shard %d in %s: %s", index, self.folder, error)
        return scatter

    def heldout(self) -> dict[str, Tensor]:
        """The held-out tensors (activations, and token ids for text), sha256 checked."""
        path = self.folder / HELDOUT_FILE
        expected = self.manifest["heldout"]
        try:
            data = path.read_bytes()
        except OSError as error:
            raise DataError(f"Activation store {self.folder}: cannot read {path.name}.") from error
        if hashlib.sha256(data).hexdigest() != expected["sha256"]:
            raise DataError(
                f"Activation store held-out file {path} is corrupt (sha256 mismatch); delete the "
                f"store folder {self.folder} to rebuild it."
            )
        from safetensors.torch import load

        return load(data)

    def describe(self) -> str:
        return f"the activation store {self.folder}"

    def provenance(self) -> dict[str, Any]:
        return dict(self.manifest.get("provenance", {}))


# The identity (saeseeds.io.file_identity) of each shard file when its bytes last matched its
# sha256, by (path, sha256): kept for the process, so a sweep's later jobs on the same store (each
# opens it afresh) do not hash its shards again; a changed file (another identity) is hashed again.
VERIFIED: dict[tuple[str, str], tuple[int, ...]] = {}


def verified_key(path: Path, sha256: str) -> tuple[str, str]:
    return str(Path(path).absolute()), sha256


def read_checked(
    path: Path, out: Tensor, sha256: str, verified: tuple[int, ...] | None = None
) -> tuple[tuple[int, ...] | None, str | None]:
    """Fill ``out`` with the first rows of the one-tensor safetensors shard ``path`` and check
    the whole file's sha256 against ``sha256``, unless the open file is still the one whose
    identity (:func:`saeseeds.io.file_identity`) is ``verified``. Returns (the file's identity, the
    problem found: None, "truncated" or "sha256 mismatch")."""
    try:
        with open(path, "rb", buffering=0) as handle:
            identity = file_identity(os.fstat(handle.fileno()))
            digest = None if identity == verified else hashlib.sha256()
            prefix = handle.read(8)
            header = handle.read(int.from_bytes(prefix, "little")) if len(prefix) == 8 else b""
            if digest is None:
                read_into(handle, out, path)
                return identity, None
            digest.update(prefix + header)
            read_into(handle, out, path, digest)
            for rest in iter(lambda: handle.read(READ_BLOCK), b""):  # a prefix's partial shard
                digest.update(rest)
    except (DataError, FileNotFoundError):
        return None, "truncated"
    return identity, None if digest.hexdigest() == sha256 else "sha256 mismatch"


# ---- inspect and verify ----


def summary(folder: Path) -> dict[str, Any]:
    """What ``inspect`` prints: tokens, shards, dtype, size on disk, provenance."""
    store = ActivationStore(folder)
    shards = [store.record(index) for index in range(store.n_shards)]
    size = sum(path.stat().st_size for path in folder.iterdir() if path.is_file())
    return {
        "folder": str(folder),
        "key": store.key,
        "dtype": dtype_name(store.dtype),
        "d_in": store.d_in,
        "rows_per_shard": store.rows_per_shard,
        "shards": store.n_shards,
        "train_tokens": sum(record["rows"] for record in shards if record),
        "heldout_tokens": store.manifest["heldout"]["rows"],
        "bytes_on_disk": size,
        "corpus_train_tokens": store.manifest.get("train_rows"),  # known once a build ran out
        "corrupt_files_set_aside": sorted(p.name for p in (folder / CORRUPT_DIR).glob("*"))
        if (folder / CORRUPT_DIR).is_dir()
        else [],
        "key_fields": store.manifest.get("key_fields", {}),
        "provenance": store.provenance(),
    }


def verify(folder: Path, repair: bool) -> list[str]:
    """Read every shard and the held-out file and check their sha256; the problems found."""
    from tqdm.auto import tqdm

    store = ActivationStore(folder, repair=repair)
    problems = []
    try:
        store.heldout()
    except DataError as error:
        problems.append(str(error))
    indices = sorted({*store._records, *store.damaged, *range(store.n_shards)})
    for index in tqdm(indices, desc="verify", unit="shard"):
        try:
            if index not in store.damaged and store.present(index):
                store.recheck(index)  # every byte, whatever this process read before
                store.read(index)
        except DataError as error:
            problems.append(str(error))
        if index in store.damaged:
            problems.append(f"shard {index} is damaged ({store.damaged[index]})")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m saeseeds.activations.store",
        description="Inspect or verify an activation store folder.",
    )
    parser.add_argument("command", choices=("inspect", "verify"))
    parser.add_argument("folder", type=Path)
    parser.add_argument(
        "--repair",
        action="store_true",
        help="verify: move damaged shards to corrupt/ so the next job rebuilds them",
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "inspect":
            print(json.dumps(summary(args.folder), indent=2))
            return 0
        problems = verify(args.folder, args.repair)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for problem in problems:
        print(problem)
    print(f"{args.folder}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
