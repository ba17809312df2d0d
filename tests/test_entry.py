"""How the entry scripts end (saeseeds.entry): Python's exit steps and status, not its teardown."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# A command as the entry scripts run one. It leaves a file from each of Python's exit steps (a
# non-daemon thread still running, an atexit handler, an unflushed stdout), and one from the
# teardown: a module-level object's finaliser, which runs only while the interpreter is torn down.
SCRIPT = """
import atexit, sys, threading, time
from pathlib import Path
from saeseeds.entry import run_then_exit

out, mode = Path(sys.argv[1]), sys.argv[2]

class Finalised:
    def __del__(self):
        (out / "teardown").write_text("ran")

KEPT = Finalised()

def late():
    time.sleep(0.3)
    (out / "thread").write_text("ran")

def square(x):
    return x * x

def main():
    if mode == "pool":  # a process pool left open, as a module-level pool is
        from concurrent.futures import ProcessPoolExecutor
        global POOL
        POOL = ProcessPoolExecutor(1)
        assert POOL.submit(square, 3).result() == 9
    threading.Thread(target=late).start()
    atexit.register(lambda: (out / "atexit").write_text("ran"))
    sys.stdout.write("unflushed")
    if mode == "int":
        sys.exit(3)
    if mode == "str":
        sys.exit("a message for stderr")
    if mode == "bug":
        raise RuntimeError("a bug")

run_then_exit(main)
"""


def run_script(
    tmp_path: Path, mode: str, python: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "command.py"
    script.write_text(SCRIPT)
    out = tmp_path / mode
    out.mkdir()
    return subprocess.run(
        [sys.executable, *python, str(script), str(out), mode],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("mode", "status", "stderr"),
    [("ok", 0, ""), ("int", 3, ""), ("str", 1, "a message for stderr\n"), ("pool", 0, "")],
)
def test_a_command_ends_with_pythons_exit_steps_and_status_but_no_teardown(
    tmp_path: Path, mode: str, status: int, stderr: str
) -> None:
    result = run_script(tmp_path, mode)

    assert result.returncode == status, result.stderr
    assert result.stderr == stderr
    assert result.stdout == "unflushed"
    out = tmp_path / mode
    assert (out / "thread").read_text() == "ran"  # joined, as Python joins non-daemon threads
    assert (out / "atexit").read_text() == "ran"
    assert not (out / "teardown").exists()  # the interpreter was not torn down


def test_an_uncaught_exception_keeps_its_traceback_and_pythons_whole_shutdown(
    tmp_path: Path,
) -> None:
    result = run_script(tmp_path, "bug")

    assert result.returncode == 1
    assert "Traceback" in result.stderr and "RuntimeError: a bug" in result.stderr
    out = tmp_path / "bug"
    assert all((out / step).read_text() == "ran" for step in ("thread", "atexit", "teardown"))


def test_under_a_profiler_a_command_ends_the_ordinary_way_so_the_profile_is_written(
    tmp_path: Path,
) -> None:
    profile = tmp_path / "command.prof"

    result = run_script(tmp_path, "ok", ("-m", "cProfile", "-o", str(profile)))

    assert result.returncode == 0, result.stderr
    assert profile.stat().st_size > 0
    assert (tmp_path / "ok" / "teardown").read_text() == "ran"
