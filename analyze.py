"""Seed-stability analysis of trained SAEs.

    python analyze.py sweep_dir=outputs/multirun/DATE/TIME

Reads run folders (the contract in docs/contract.md) and writes a report folder; see
conf/analyze.yaml for every option. Never imports training code. A user's error (nothing to
analyse, a bad option, an unwritable or full output folder) is one line on stderr and a non-zero
exit, never a traceback, and a refused command takes back the report folder Hydra made for it.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from saeseeds.analysis.app import run_analysis
from saeseeds.analysis.config import register_analysis_configs
from saeseeds.entry import run_then_exit
from saeseeds.errors import UserError
from saeseeds.io import remove_folder_if_only, writable_folder_problem

register_analysis_configs()
# OSErrors that are the machine's state, not a bug: the message alone says what to change.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES}
# What Hydra puts into the report folder before the analysis runs.
HYDRA_LEFTOVERS = {".hydra", "analyze.log"}
DEFAULT_REPORT_ROOT = "outputs/analysis"
# Hydra flags that print and exit without writing a report.
INFORMATION_FLAGS = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell")


def requested_output_folder(argv: list[str]) -> str | None:
    """The report folder the command line asks for (its nearest fixed part), or None to skip."""
    if any(arg.startswith(INFORMATION_FLAGS) for arg in argv):
        return None
    key = "hydra.sweep.dir=" if ("-m" in argv or "--multirun" in argv) else "hydra.run.dir="
    for arg in argv:
        if arg.startswith(key):
            folder = arg[len(key) :].strip("'\"")
            return None if "${" in folder else folder
    return DEFAULT_REPORT_ROOT


def check_output_folder(argv: list[str]) -> None:
    """Before Hydra creates the report folder: one line instead of Hydra's traceback. Also notes
    whether an explicitly named report folder already existed (then it is never removed)."""
    global REPORT_FOLDER_EXISTED
    folder = requested_output_folder(argv)
    if folder is None:
        return
    # os.path.exists: a name too long to look up does not exist (Path.exists raises).
    REPORT_FOLDER_EXISTED = folder != DEFAULT_REPORT_ROOT and os.path.exists(folder)
    problem = writable_folder_problem(folder)
    if problem is not None:
        print(
            f"analyze.py: cannot write the report folder {folder}: {problem}. Choose a writable "
            "folder with hydra.run.dir=PATH.",
            file=sys.stderr,
        )
        sys.exit(2)


# True unless the command line named a report folder that did not exist (or the default one).
REPORT_FOLDER_EXISTED = True


def take_back(report_dir: Path) -> None:
    """Remove what a failed analysis wrote: the whole folder if this command made it, else only
    Hydra's own files when nothing else is there."""
    if not REPORT_FOLDER_EXISTED:
        shutil.rmtree(report_dir, ignore_errors=True)
    else:
        remove_folder_if_only(report_dir, HYDRA_LEFTOVERS)


@hydra.main(version_base="1.3", config_path="conf", config_name="analyze")
def main(cfg: DictConfig) -> None:
    report_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        run_analysis(cfg, report_dir)
    except UserError as error:
        print(f"analyze.py: {error}", file=sys.stderr)
        take_back(report_dir)
        sys.exit(error.exit_code)
    except OSError as error:
        if error.errno not in ENVIRONMENT_ERRNOS:
            raise
        print(f"analyze.py: cannot write the report in {report_dir}: {error}", file=sys.stderr)
        take_back(report_dir)
        sys.exit(2)


if __name__ == "__main__":
    check_output_folder(sys.argv[1:])
    run_then_exit(main)
