"""Atomic files and folders, build locks and file hashes: one implementation of each.

Every file of a run or report folder, every checkpoint, every cache folder and every converted
model goes through here. A file is written to a temporary name in the same folder, flushed and
fsynced, then ``os.replace``d; a folder is built under a temporary name and renamed into place. A
reader never sees half a file or half a folder, and a writer killed at any point leaves the old
file or the new one. A write that fails for want of space or permission raises
:class:`saeseeds.errors.OutputError` naming the file. torch is imported only to write safetensors.
This module must stay free of training or analysis logic.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from saeseeds.errors import OutputError

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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise output_error(path, error) from error
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        # An error about another file (a read inside the block) is not this write's failure.
        if isinstance(error, OutputError) or error.filename not in (None, str(tmp), str(path)):
            raise
        raise output_error(path, error) from error
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def output_error(path: str | Path, error: OSError) -> OutputError:
    """The user-facing form of a failed write: which file, why, and what would work."""
    reason = error.strerror or str(error)
    return OutputError(
        f"cannot write {path}: {reason}. Outputs need a writable folder with free space; "
        "free some space or choose another output folder."
    )


def writable_folder_problem(folder: str | Path) -> str | None:
    """Why ``folder`` could not be created or written into, or None when it can.

    Checks the folder if it exists, else its nearest existing ancestor; creates nothing.
    """
    candidate = Path(folder).expanduser().absolute()
    while not candidate.exists():
        if candidate.parent == candidate:
            break
        candidate = candidate.parent
    if not candidate.is_dir():
        return f"{candidate} is not a folder"
    if not os.access(candidate, os.W_OK | os.X_OK):
        return f"{candidate} is not writable"
    return None


def remove_folder_if_only(folder: str | Path, names: set[str]) -> bool:
    """Delete ``folder`` if it holds nothing but entries named in ``names`` (and empty folders);
    True if deleted.

    Used to take back the folder a refused command created (Hydra's log file, the job's
    ``.hydra/``), never anything a user or a finished job wrote.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return False
    # Empty folders (a checkpoints/ folder whose first write failed) hold nothing either.
    entries = {
        entry.name
        for entry in folder.iterdir()
        if not (entry.is_dir() and entry.name not in names and not any(entry.iterdir()))
    }
    if not entries <= names:
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return not folder.exists()


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
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        try:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        except SafetensorError as error:
            # safetensors reports a failed write as "I/O error: No space left ... (os error 28)".
            code = re.search(r"os error (\d+)", str(error))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1)))) from error
        if metadata and len(metadata) > 1:
            _sort_safetensors_metadata(tmp)
    return Path(path)


def _sort_safetensors_metadata(path: Path) -> None:
    """Rewrite a safetensors header with its metadata keys sorted. safetensors writes metadata
    from a hash map, so with several keys the order (and the file's bytes) would differ from one
    process to the next; sorted, equal contents give byte-identical files."""
    with open(path, "r+b") as handle:
        size = int.from_bytes(handle.read(8), "little")
        text = handle.read(size).decode("utf-8")
        header = json.loads(text)
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        ordered = json.dumps(header, separators=(",", ":"), ensure_ascii=False)
        # Same keys and values: the same length, padded with spaces as safetensors pads.
        sorted_text = ordered.encode("utf-8").ljust(size, b" ")
        if len(sorted_text) != size or json.loads(sorted_text) != json.loads(text):
            return  # a header this code cannot reproduce exactly: keep safetensors' own
        handle.seek(8)
        handle.write(sorted_text)
        handle.flush()
        os.fsync(handle.fileno())


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


def read_config_file(path: str | Path) -> dict[str, Any] | None:
    """A YAML config such as ``.hydra/config.yaml`` as a plain dict, its interpolations resolved;
    None when the file is missing, unreadable or not a mapping.

    Interpolations that need a running Hydra app (``${hydra:...}``, only under ``paths``) are
    replaced by None first, so the rest (``data.cache_dir: ${paths.cache_dir}``) resolves.
    """
    from omegaconf import DictConfig, OmegaConf

    path = Path(path)
    if not path.is_file():
        return None
    try:
        config = OmegaConf.load(path)
        if not isinstance(config, DictConfig):
            return None
        _blank_hydra_interpolations(config)
        plain = OmegaConf.to_container(config, resolve=True)
    except Exception:  # noqa: BLE001 - OmegaConf and YAML raise many error types
        return None
    return plain if isinstance(plain, dict) else None


def _blank_hydra_interpolations(node: Any) -> None:
    from omegaconf import DictConfig, ListConfig

    keys = list(node.keys()) if isinstance(node, DictConfig) else range(len(node))
    for key in keys:
        child = node._get_node(key)
        if isinstance(child, DictConfig | ListConfig):
            _blank_hydra_interpolations(child)
        elif "${hydra:" in str(child._value()):
            node[key] = None
