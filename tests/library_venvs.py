"""Virtual environments that hold another SAE library, for the slow tests that run it for real.

SAE Lens 6 pins transformer-lens < 4 and saeseeds needs 4.x, so each library gets its own venv
(``~/.cache/saeseeds/<name>-venv``, or ``$SAESEEDS_<NAME>_VENV``), built once with torch first
(``$SAESEEDS_VENV_TORCH``, default ``torch==2.13.0``) and reused while it holds the pinned
version. A test skips when the package index cannot be reached, and fails on any other error.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TORCH_SPEC = os.environ.get(
    "SAESEEDS_VENV_TORCH", os.environ.get("SAESEEDS_SAELENS_TORCH", "torch==2.13.0")
)
UNREACHABLE = (
    "No matching distribution found",
    "Could not find a version that satisfies",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "Max retries exceeded",
    "ProxyError",
)


def venv_folder(name: str) -> Path:
    default = Path.home() / ".cache" / "saeseeds" / f"{name}-venv"
    return Path(os.environ.get(f"SAESEEDS_{name.upper()}_VENV", default))


def _has(python: Path, distribution: str, version: str) -> bool:
    check = (
        f"import importlib.metadata as m, sys; sys.exit(m.version({distribution!r}) != {version!r})"
    )
    return (
        python.is_file()
        and subprocess.run([python, "-c", check], capture_output=True).returncode == 0
    )


def library_python(name: str, distribution: str, version: str) -> Path:
    """The python of the ``name`` venv with ``distribution==version``: reused, else built."""
    venv = venv_folder(name)
    python = venv / "bin" / "python"
    if _has(python, distribution, version):
        return python
    created = not venv.exists()
    try:
        if created:
            venv.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        for spec in (TORCH_SPEC, f"{distribution}=={version}"):
            pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", spec]
            result = subprocess.run(pip, capture_output=True, text=True, timeout=1800)
            if result.returncode != 0:
                output = result.stdout + result.stderr
                tail = "\n".join(line for line in output.splitlines() if "ignored" not in line)
                if any(marker in output for marker in UNREACHABLE):
                    pytest.skip(f"cannot install {spec} from the package index: {tail[-400:]}")
                pytest.fail(f"pip install {spec} failed:\n{tail[-3000:]}")
    except BaseException:
        if created and venv.exists():  # only a venv this test made is removed
            shutil.rmtree(venv)
        raise
    assert _has(python, distribution, version)
    return python


def run_in_library(python: Path, script: Path, *args: str, timeout: int = 900):
    """Run ``script`` with a library venv's python, offline, without our PYTHON* settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.update(WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false")
    return subprocess.run(
        [python, script, *args], capture_output=True, text=True, env=env, timeout=timeout
    )
