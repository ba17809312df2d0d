"""How the entry scripts end: as Python would, less the interpreter's teardown.

Once a command's work is done, Python stops its threads (the shutdown hooks of process pools and
joblib's workers, then a join of every non-daemon thread), runs the ``atexit`` handlers (logging's
flush and close, W&B's teardown, temporary folders) and flushes stdout and stderr. Then it tears
the interpreter down: every module's objects are cleared, a last garbage collection runs, C++
destructors run. With torch, Lightning and TransformerLens imported that last part alone took
1.3-1.9 s on a 2-core CPU, after every file had been written: a second and a half of every
``train.py``, ``analyze.py`` and ``build_store.py`` command spent on nothing.

:func:`run_then_exit` runs the command, does the first three steps itself, and ends the process
with ``os._exit``. Every file the commands write is written atomically and closed before
(:mod:`saeseeds.io`), so nothing the teardown would still do can change an output. Hydra reports
an exception inside a job itself and exits with status 1, which ends here too; one that still
escapes (a second Ctrl-C, or any with ``HYDRA_FULL_ERROR=1``) is left to Python: its traceback
and ordinary shutdown. Under a profiler or tracer (``python -m cProfile``, coverage, a debugger),
which writes its results after the command returns, the process ends the ordinary way as well.
This module imports nothing heavy.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Callable
from typing import NoReturn


def run_then_exit(main: Callable[[], object]) -> NoReturn:
    """Run ``main``, then end the process with its exit status and without the teardown."""
    try:
        main()
    except SystemExit as stop:
        status = exit_status(stop.code)
    else:
        status = 0
    if sys.getprofile() is not None or sys.gettrace() is not None:
        sys.exit(status)  # a profiler, coverage or a debugger still has its results to write
    finish_as_python_would()
    os._exit(status)


def exit_status(code: object) -> int:
    """The status Python gives ``sys.exit(code)``: None is 0, an int is itself, and anything
    else is printed on stderr and gives 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF  # what the operating system keeps of it
    print(code, file=sys.stderr)
    return 1


def finish_as_python_would() -> None:
    """Python's own steps before its teardown: stop the threads (the hooks that tell process
    pools' and joblib's manager threads to finish, then a join of every non-daemon thread), run
    the ``atexit`` handlers, flush stdout and stderr."""
    threading._shutdown()  # noqa: SLF001 - the call Python's own shutdown makes first
    atexit._run_exitfuncs()  # noqa: SLF001 - and then this one
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing left to flush
            pass
