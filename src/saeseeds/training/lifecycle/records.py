"""Where a job stands in its launch, and what it leaves for the sweep: the Hydra run it is part
of, its DDP rank, the record each of its seeds writes into ``<sweep>/.saeseeds_jobs/`` (when it
starts and when it ends, atomically; :mod:`saeseeds.training.lifecycle.sweep` turns them into the
sweep's summary and the analysis uses them to name deleted jobs), and the temporaries a killed
write left. Imports neither torch nor Lightning.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from saeseeds import contract
from saeseeds.io import atomic_write_json
from saeseeds.training.lifecycle.sweep import LAUNCH_ENV

log = logging.getLogger("saeseeds")
# Where a process started for DDP finds its rank (Lightning's order). Only rank 0 writes.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
# What Hydra itself puts into a job folder before the job runs.
HYDRA_LEFTOVERS = {"train.log"}
# What a job that failed in a folder it created leaves (taken back with the folder).
ACCEPTED_LEFTOVERS = HYDRA_LEFTOVERS | {contract.HYDRA_DIR, contract.LOCK_FILE}


def hydra_config() -> Any | None:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def is_multirun(hydra_cfg: Any | None) -> bool:
    from hydra.types import RunMode

    return hydra_cfg is not None and hydra_cfg.mode == RunMode.MULTIRUN


def process_rank() -> int:
    """This process's rank in a multi-process (DDP) run; 0 in a single process."""
    for name in RANK_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def processes_started_outside() -> bool:
    """True when a launcher (torchrun, srun with several tasks) started every DDP process."""
    return "WORLD_SIZE" in os.environ or int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1


def is_fresh(folder: Path) -> bool:
    """The folder holds nothing but what Hydra put there for this command."""
    return folder.is_dir() and {entry.name for entry in folder.iterdir()} <= HYDRA_LEFTOVERS


class JobRecord:
    """``<sweep>/.saeseeds_jobs/<job>.json``: one seed's identity and outcome (multirun only)."""

    def __init__(self, hydra_cfg: Any, run_dir: Path, seed: Any, overrides: list[str]):
        sweep_dir = Path(hydra_cfg.sweep.dir).absolute()
        try:
            job = str(run_dir.absolute().relative_to(sweep_dir))
        except ValueError:
            job = run_dir.name
        self.path = sweep_dir / contract.JOB_RECORDS_DIR / (job.replace("/", "%2F") + ".json")
        self.payload: dict[str, Any] = {
            "format": contract.JOB_RECORD_FORMAT,
            "job": job,
            "num": int(hydra_cfg.job.num),
            "overrides": list(overrides),
            "launch": os.environ.get(LAUNCH_ENV),
            "seed": seed,
            "action": None,
            "outcome": "running",
            "reason": None,
            "config": None,
            "config_sha256": None,
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }

    def write(self, **changes: Any) -> None:
        self.payload.update(changes, updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        try:
            atomic_write_json(self.path, self.payload)
        except (OSError, ValueError) as error:  # the summary loses one line; the job goes on
            log.warning("Could not write the job record %s: %s", self.path, error)


def remove_stale_temporaries(run_dir: Path) -> None:
    """Temporary files of writes killed with SIGKILL (a kill leaves the old file whole, and its
    temporary beside it); the job owns its folder, so no other writer can be using them."""
    for folder in (run_dir, run_dir / contract.CHECKPOINT_DIR):
        for leftover in folder.glob(".*.tmp") if folder.is_dir() else ():
            leftover.unlink(missing_ok=True)


def describe_error(error: BaseException) -> str:
    from saeseeds.errors import UserError

    if isinstance(error, UserError):
        return str(error)
    first = str(error).strip().splitlines()
    return f"{type(error).__name__}: {first[0] if first else ''} (traceback in the job's log)"
