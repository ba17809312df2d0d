"""Atomic files and folders, build locks and file hashes: one implementation of each.

Every file of a run or report folder, every cache folder and every converted model goes through
here. A file is written to a temporary name in the same folder, flushed and fsynced, then
``os.replace``d; a folder is built under a temporary name and renamed into place. A reader never
sees half a file or half a folder. torch is imported only to write safetensors. This module must
stay free of training or analysis logic.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _umask_mode() -> int:
    # mkstemp creates 0600 files; give the final file the mode a plain open() would have.
    current = os.umask(0)
    os.umask(current)
    return 0o666 & ~current


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed to ``path``.

    On any exception (a full disk, a kill signal turned into an exception) the temporary file is
    removed and ``path`` keeps its old content, if any.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, payload: Any) -> Path:
    return atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")


def atomic_save_safetensors(
    path: str | Path, tensors: dict[str, Any], metadata: dict[str, str] | None = None
) -> Path:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return Path(path)


@contextlib.contextmanager
def atomic_directory(folder: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``folder``; on success it replaces ``folder``.

    Leftovers of builders that were killed are removed first. An existing ``folder`` (an
    incomplete or corrupt one) is moved aside and deleted only once the new one is in place.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    for leftover in folder.parent.glob(f".{folder.name}.tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        for file in tmp.rglob("*"):
            if file.is_file():
                with open(file, "rb") as handle:
                    os.fsync(handle.fileno())
        if folder.exists():
            trash = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(folder, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def build_lock(folder: str | Path) -> Iterator[None]:
    """Hold ``<folder>.lock`` (a file lock that works across processes and, on file systems
    with working locks, across nodes); says so when another process holds it."""
    from filelock import FileLock, Timeout

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder.with_name(folder.name + ".lock")))
    try:
        lock.acquire(timeout=0.5)
    except Timeout:
        log.info("Waiting for another process to finish building %s ...", folder)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()
