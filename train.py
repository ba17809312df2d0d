"""Train one SAE: ``python train.py``; sweep: ``python train.py -m seed=1,2,3``.

A user's error is one line on stderr and exit status 2, never a traceback. Inside a multirun a
failed job is reported and the sweep goes on (Hydra's launchers carry on past a job that returns;
``sys.exit`` would end the whole sweep); the summary at the end exits non-zero. SIGTERM or
SIGINT saves a checkpoint and exits with 128 + the signal number.
"""

import errno
import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from saeseeds.config import register_configs
from saeseeds.entry import run_then_exit
from saeseeds.errors import UserError

register_configs()
log = logging.getLogger("saeseeds")
# OSErrors that are the machine's state, not a bug: the message alone says what to change.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES}


def user_facing(error: BaseException) -> bool:
    if isinstance(error, UserError):
        return True
    return isinstance(error, OSError) and error.errno in ENVIRONMENT_ERRNOS


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    # Light imports only: a bad option fails before torch's and Lightning's import time.
    from saeseeds.training.job import hydra_config, is_multirun, run_job

    multirun = is_multirun(hydra_config())
    try:
        run_job(cfg)
    except SystemExit as stop:
        if getattr(stop, "signum", None) is not None:  # SIGTERM/SIGINT: checkpoint, then stop
            print(f"stopped: {stop}", file=sys.stderr, flush=True)
        raise
    except Exception as error:  # noqa: BLE001 - sorted below: user error, sweep job, or bug
        if user_facing(error):
            # A user's input error: the message says what to change; a traceback would bury it.
            job = f"job {Path(str(cfg.paths.output_dir)).name}: " if multirun else ""
            print(f"error: {job}{error}", file=sys.stderr, flush=True)
            if not multirun:
                sys.exit(getattr(error, "exit_code", 2))
        elif not multirun:
            raise
        else:
            log.exception("Job %s failed with an unexpected error", cfg.paths.output_dir)
        # In a multirun the job's record says it failed; the sweep goes on to the next job.


if __name__ == "__main__":
    run_then_exit(main)
