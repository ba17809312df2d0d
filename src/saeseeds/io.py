"""Atomic files and folders, strict JSON, locks and file hashes: one implementation of each.

Every file of a run or report folder, every checkpoint, every cache folder and every converted
model goes through here. A file is written to a temporary name in the same folder, flushed and
fsynced, then ``os.replace``d; a folder is built under a temporary name and renamed into place. A
reader never sees half a file or half a folder, and a writer killed at any point leaves the old
file or the new one. A write that fails for want of space or permission raises
:class:`saeseeds.errors.OutputError` naming the file. JSON is written strict (no NaN/Infinity,
which jq, JavaScript and W&B cannot read) and read with :func:`read_json`, which turns every way a
file can be malformed into a ``ValueError``. A job folder has one owner process at a time
(:func:`job_lock`), and the sizes and hashes its ``COMPLETE`` records are checked here
(:func:`damaged_file`). torch is imported only to write safetensors. This module must stay free
of training or analysis logic.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from saeseeds import contract
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

    Checks the folder if it exists, else its nearest existing ancestor, and that no part of its
    path is longer than that file system allows; creates nothing.
    """
    path = Path(folder).expanduser().absolute()
    candidate = path
    while not _exists(candidate):
        if candidate.parent == candidate:
            break
        candidate = candidate.parent
    too_long = name_too_long(path, candidate)
    if too_long is not None:
        return too_long
    if not candidate.is_dir():
        return f"{candidate} is not a folder"
    if not os.access(candidate, os.W_OK | os.X_OK):
        return f"{candidate} is not writable"
    return None


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long to look up does not exist
        return False


def fit_name(name: str, limit: int) -> str:
    """``name`` if it fits in ``limit`` bytes, else its start plus a hash of all of it.

    The hash keeps two long names apart whenever they differ anywhere, and gives a long name the
    same short form in every process (a job number would not: it restarts in every sweep).
    """
    encoded = name.encode()
    if len(encoded) <= limit:
        return name
    digest = hashlib.sha1(encoded).hexdigest()[:12]
    start = encoded[: limit - len(digest) - 3].decode(errors="ignore")
    return f"{start}...{digest}"


def name_too_long(path: Path, existing_ancestor: Path) -> str | None:
    """Which part of ``path`` (below ``existing_ancestor``) is longer than its file system takes."""
    try:
        name_max = os.pathconf(existing_ancestor, "PC_NAME_MAX")
        path_max = os.pathconf(existing_ancestor, "PC_PATH_MAX")
    except (OSError, ValueError):  # the system does not say: let the write find out
        return None
    for part in path.parts:
        if len(os.fsencode(part)) > name_max:
            return (
                f"the folder name {part[:40]}... is {len(os.fsencode(part))} bytes long, more "
                f"than the {name_max} this file system allows"
            )
    if len(os.fsencode(str(path))) >= path_max:
        return f"the path is {len(os.fsencode(str(path)))} bytes long, the limit is {path_max}"
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


def file_identity(status: os.stat_result) -> tuple[int, ...]:
    """(device, inode, size, modification time, change time) of a stat result, in nanoseconds:
    what tells that a file's bytes may have changed since it was last read. The change time
    moves with any write or rename and, unlike the modification time, cannot be set back."""
    return (
        status.st_dev,
        status.st_ino,
        status.st_size,
        status.st_mtime_ns,
        status.st_ctime_ns,
    )


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_text(payload: Any, sort_keys: bool = False) -> str:
    """``payload`` as strict JSON text (indented, newline-terminated).

    Raises ``ValueError`` naming the first NaN or infinite number: a writer must say what an
    undefined value means (``null``) or refuse it, never write a token strict parsers reject.
    """
    try:
        text = json.dumps(payload, indent=2, default=str, allow_nan=False, sort_keys=sort_keys)
    except ValueError:
        found = _first_non_finite(payload, "")
        raise ValueError(
            f"{found or 'a value'} is not a finite number (strict JSON has no NaN or Infinity)"
        ) from None
    return text + "\n"


def _first_non_finite(value: Any, where: str) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where or 'the value'}={value}"
    if isinstance(value, dict):
        children: Any = value.items()
    else:
        children = enumerate(value) if isinstance(value, list | tuple) else ()
    for key, child in children:
        found = _first_non_finite(child, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def atomic_write_json(path: str | Path, payload: Any) -> Path:
    """Write ``payload`` as strict JSON (:func:`json_text`), atomically."""
    return atomic_write_text(path, json_text(payload))


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: valid JSON, but no float holds it
        raise ValueError(f"the number {text} is too large for a float")
    return value


def read_json(path: str | Path) -> Any:
    """A JSON file's content. Every way it can be malformed raises ``ValueError`` (a subclass of
    it for bad syntax) with the reason: not UTF-8, bad JSON, a number too large for a float
    (``1e400``), nesting too deep for Python's parser. A missing file raises ``OSError``.

    The bare ``NaN``/``Infinity`` tokens that older versions wrote (metrics.json's undefined
    CE-loss score) are still read, so their folders stay readable.
    """
    text = Path(path).read_bytes()
    try:
        return json.loads(text.decode("utf-8"), parse_float=_finite_float)
    except UnicodeDecodeError as error:
        raise ValueError(f"it is not UTF-8 text ({error.reason})") from None
    except RecursionError:
        raise ValueError("it is nested too deeply to read") from None


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


# flock errors that mean "held by another process" (some file systems report EACCES).
_CONTENTION = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES)


class FolderInUse(OutputError):
    """Another process owns the job folder; the message names it (PID, host, since when)."""


@contextlib.contextmanager
def job_lock(folder: str | Path) -> Iterator[None]:
    """Own ``folder`` for the block: hold an exclusive lock on ``<folder>/.saeseeds.lock`` and
    write the owner (PID, host, start time, command) into it. Raises :class:`FolderInUse`, naming
    the owner, when another live process holds it.

    The lock is the kernel's (``flock``): it is released when the owner ends, however it ends, so
    a lock left by a killed process is free and is taken over (and said so). The owner record
    stays in the file until a clean release, which is how a takeover is recognised. On a file
    system without ``flock`` the record alone decides: a record of a live process on this host,
    or of any process on another host, is respected. The file itself stays (empty), so every
    contender locks the same inode. ``fcntl`` is used directly: the owner record must live in
    the locked file, which filelock's open may truncate.
    """
    import fcntl  # POSIX only, like the signals the trainer handles

    path = Path(folder) / contract.LOCK_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, _umask_mode())
    except OSError as error:
        raise output_error(path, error) from error
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = True
        except OSError as error:
            if error.errno in _CONTENTION:
                raise FolderInUse(_in_use_message(Path(folder), _wait_for_owner(fd))) from None
            locked = False  # no flock here (ENOLCK, EOPNOTSUPP): the record decides
        previous = _read_owner(fd)
        if previous is not None and not locked and _owner_may_run(previous):
            raise FolderInUse(_in_use_message(Path(folder), previous))
        if previous is not None and previous.get("pid") != os.getpid():
            log.warning("%s", _takeover_message(Path(folder), previous))
        _write_owner(fd, _owner_record())
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # released cleanly: no record left to take over
    finally:
        os.close(fd)  # closing releases the flock


def _owner_record() -> dict[str, Any]:
    import sys

    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv)[:500],
    }


def _write_owner(fd: int, record: dict[str, Any]) -> None:
    data = json.dumps(record).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


def _read_owner(fd: int) -> dict[str, Any] | None:
    try:
        data = os.pread(fd, 4096, 0)
        record = json.loads(data.decode("utf-8")) if data.strip() else None
    except (OSError, ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def _wait_for_owner(fd: int, seconds: float = 2.0) -> dict[str, Any] | None:
    """The holder's record; a holder that has just locked writes it within moments."""
    deadline = time.monotonic() + seconds
    while (record := _read_owner(fd)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return record


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _owner_may_run(record: dict[str, Any]) -> bool:
    if record.get("host") != socket.gethostname():
        return True  # this host cannot tell
    return record.get("pid") != os.getpid() and _pid_alive(record.get("pid"))


def _describe_owner(record: dict[str, Any]) -> str:
    host = record.get("host")
    where = "this host" if host == socket.gethostname() else "another host"
    since = record.get("since")
    return f"process {record.get('pid')} on {where} ({host}), which took it at {since}"


def _in_use_message(folder: Path, record: dict[str, Any] | None) -> str:
    if record is None:
        return (
            f"{folder} is in use by another process (it holds {contract.LOCK_FILE}); a job folder "
            "has one process at a time. Wait for that job to end, or stop it, then re-run."
        )
    same_host = record.get("host") == socket.gethostname()
    if same_host and not _pid_alive(record.get("pid")):
        return (
            f"{folder} is locked although its owner, {_describe_owner(record)}, has ended: a "
            f"process it started still holds {folder / contract.LOCK_FILE} (fuser -v names it). "
            "Stop that process, then re-run."
        )
    if same_host:
        stop = f"stop it (kill {record.get('pid')})"
    else:  # a lock that outlived its host can only be cleared by hand
        stop = (
            f"stop it on {record.get('host')}; if it is gone, delete {folder / contract.LOCK_FILE}"
        )
    return (
        f"{folder} is in use: the job is running in {_describe_owner(record)}; a job folder has "
        f"one process at a time. Wait for it to end, or {stop}, then re-run."
    )


def _takeover_message(folder: Path, record: dict[str, Any]) -> str:
    if record.get("host") == socket.gethostname():
        return (
            f"Took over {folder}: its lock was left by {_describe_owner(record)}, which is no "
            "longer running (killed or crashed)."
        )
    return (
        f"Took over {folder}: its lock was left by {_describe_owner(record)}, and nobody holds it "
        f"now. If that process still runs, this file system does not share locks between hosts: "
        "stop one of the two."
    )


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def file_manifest(folder: str | Path, names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """{name: {"bytes", "sha256"}} of each of ``names`` present in ``folder``."""
    manifest = {}
    for name in names:
        path = Path(folder) / name
        if path.is_file():
            manifest[name] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
    return manifest


def manifest_problem(
    folder: str | Path, manifest: dict[str, Any], check_hashes: bool
) -> str | None:
    """What is wrong with the first file of ``manifest`` that is not as recorded
    (``sae_weights.safetensors is missing ...``), or None. Sizes are always compared (one
    ``stat`` each); hashes with ``check_hashes``."""
    for name, record in manifest.items():
        path = Path(folder) / name
        expected = record.get("bytes") if isinstance(record, dict) else None
        if not path.is_file():
            return f"{name} is missing (COMPLETE recorded it, {expected} bytes)"
        size = path.stat().st_size
        if size != expected:
            return f"{name} is {size} bytes, but COMPLETE recorded {expected}"
        if check_hashes and file_sha256(path) != record.get("sha256"):
            return f"{name} changed after completion (its sha256 differs from COMPLETE's record)"
    return None


def damaged_file(run_dir: str | Path, check_hashes: bool) -> str | None:
    """What is wrong with a run folder whose ``COMPLETE`` records its files, if anything; None
    also for folders whose ``COMPLETE`` is no manifest (written before it was one)."""
    try:
        complete = read_json(Path(run_dir) / contract.COMPLETE_MARKER)
    except (OSError, ValueError):
        return None
    files = contract.recorded_files(complete)
    return None if files is None else manifest_problem(run_dir, files, check_hashes)


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
