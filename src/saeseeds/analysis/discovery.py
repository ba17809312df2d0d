"""Finding run folders: from ``sweep_dir`` (a path, a list or a glob, or the latest multirun
folder) to the job folders inside, each loaded or listed with the reason it is skipped.

A job folder is any folder holding ``cfg.json`` or ``.hydra/``; the search does not descend
into a job folder (its ``checkpoints/`` and ``wandb/`` are never read). A sweep folder written by
train.py also lists its jobs in ``.saeseeds_jobs/``; a listed job whose folder is gone is
reported as **missing**, and one that failed before writing anything as **failed**, so a sweep
with fewer folders than jobs says which seeds it lacks. Nothing here compares runs with each
other beyond dropping a second copy of the same folder.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from saeseeds import contract
from saeseeds.analysis.errors import AnalysisError, RunFolderError
from saeseeds.analysis.loading import RunFolder, SkippedRun, load_run, run_identity
from saeseeds.io import read_json

GLOB_CHARACTERS = set("*?[")


@dataclass
class Discovery:
    """What the inputs hold: usable runs, skipped folders with reasons, and the roots searched."""

    roots: list[Path]
    runs: list[RunFolder] = field(default_factory=list)
    skipped: list[SkippedRun] = field(default_factory=list)


def latest_multirun(outputs_root: Path) -> Path:
    """The newest ``outputs/multirun/DATE/TIME`` folder (names sort by time)."""
    multirun_root = outputs_root / "multirun"
    candidates = sorted(path for path in multirun_root.glob("*/*") if path.is_dir())
    if not candidates:
        raise AnalysisError(
            f"No sweep_dir given and no multirun folder under {multirun_root}. Train a sweep "
            "first (python train.py -m seed=1,2,3 ...) or pass sweep_dir=PATH."
        )
    return candidates[-1]


def resolve_roots(sweep_dir: str | Sequence[str] | None, outputs_root: Path) -> list[Path]:
    """Expand ``sweep_dir`` into existing folders; a path that matches nothing is an error. An
    existing path is taken as it is, even when its name holds glob characters (``sweep[1]``)."""
    if sweep_dir is None or sweep_dir == "":
        return [latest_multirun(outputs_root)]
    valid = "a folder, a glob or a list of them, e.g. sweep_dir=outputs/multirun/DATE/TIME"
    if isinstance(sweep_dir, bool) or isinstance(sweep_dir, Mapping):
        raise AnalysisError(f"sweep_dir={sweep_dir!r} is not valid; give {valid}.")
    if isinstance(sweep_dir, int | float):  # a folder named 5 reaches us as the number 5
        sweep_dir = str(sweep_dir)
    entries = [sweep_dir] if isinstance(sweep_dir, str | os.PathLike) else list(sweep_dir)
    if not entries:
        raise AnalysisError(f"sweep_dir=[] names no folder; give {valid}.")
    roots: list[Path] = []
    for entry in entries:
        text = os.path.expanduser(str(entry))
        if GLOB_CHARACTERS & set(text) and not os.path.lexists(text):
            matches = sorted(Path(match) for match in glob.glob(text) if Path(match).is_dir())
            if not matches:
                raise AnalysisError(f"sweep_dir glob {text!r} matches no folder.")
            roots.extend(matches)
        elif not os.path.exists(text):  # also False for a name too long to look up
            raise AnalysisError(f"sweep_dir {text} does not exist.")
        elif not Path(text).is_dir():
            raise AnalysisError(f"sweep_dir {text} is not a folder.")
        else:
            roots.append(Path(text))
    return list(dict.fromkeys(root.resolve() for root in roots))


def is_run_folder(path: Path) -> bool:
    return (path / "cfg.json").is_file() or (path / ".hydra").is_dir()


def find_run_folders(root: Path) -> list[Path]:
    """Job folders under ``root`` (or ``root`` itself), in sorted order."""
    if is_run_folder(root):
        return [root]
    found: list[Path] = []
    for current, subfolders, _ in os.walk(root):
        current_path = Path(current)
        if current_path != root and is_run_folder(current_path):
            found.append(current_path)
            subfolders.clear()
            continue
        subfolders[:] = sorted(name for name in subfolders if not name.startswith((".", "wandb")))
    return sorted(found)


def discover(sweep_dir: str | Sequence[str] | None, outputs_root: Path) -> Discovery:
    """Load every job folder under the inputs; bad ones become :class:`SkippedRun` entries."""
    discovery = Discovery(roots=resolve_roots(sweep_dir, outputs_root))
    seen: set[Path] = set()
    for root in discovery.roots:
        for run_path in find_run_folders(root):
            if run_path in seen:
                continue
            seen.add(run_path)
            try:
                discovery.runs.append(load_run(run_path))
            except RunFolderError as error:
                seed, condition = run_identity(run_path)
                discovery.skipped.append(
                    SkippedRun(run_path, error.status, error.reason, seed, condition)
                )
        discovery.skipped.extend(absent_jobs(root, seen))
    return discovery


def absent_jobs(sweep_dir: Path, found: set[Path]) -> list[SkippedRun]:
    """Jobs the sweep's records list whose folder was not found: deleted, or never written."""
    absent = []
    for record_path in sorted((sweep_dir / contract.JOB_RECORDS_DIR).glob("*.json")):
        try:
            record = read_json(record_path)
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict) or not isinstance(record.get("job"), str):
            continue
        job_dir = (sweep_dir / record["job"]).resolve()
        if job_dir in found or is_run_folder(job_dir):
            continue
        config = record.get("config")
        condition = (
            contract.without_keys(config, contract.NON_CONDITION_KEYS)
            if isinstance(config, dict)
            else None
        )
        seed = record.get("seed") if isinstance(record.get("seed"), int) else None
        if record.get("outcome") == "failed":
            status, reason = "failed", f"the job failed before training: {record.get('reason')}"
        else:
            status = "missing"
            reason = (
                f"the job folder is gone (deleted or moved); {contract.JOB_RECORDS_DIR}/"
                f"{record_path.name} lists it as {record.get('outcome')}. Re-run the sweep's "
                "command to train it again."
            )
        absent.append(SkippedRun(job_dir, status, reason, seed, condition))
    return absent
