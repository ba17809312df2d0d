"""Run one study's smoke version (``run_studies.py --tiny --only NAME``) in a test, on synthetic
activations: one job at a time, W&B offline, the page under ``<out>/page``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO_ROOT

# 16 sparse true directions in 16 dimensions.
SYNTHETIC = ["data=synthetic", "data.d_in=16", "data.n_true_features=16", "data.k_true=2"]


def run_tiny_study(
    tmp_path: Path, name: str, *overrides: str, synthetic: bool = True
) -> tuple[subprocess.CompletedProcess, Path]:
    """The finished command (asserted successful) and its output folder; ``synthetic=False``
    keeps the synthetic source's defaults (64 dimensions), for short job-folder names."""
    out = tmp_path / "studies"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(REPO_ROOT / "scripts" / "run_studies.py"), "--tiny", "--only",
               name, "--jobs", "1", "--out", str(out), "--page",
               str(out / "page" / "results.md"),
               *(SYNTHETIC if synthetic else SYNTHETIC[:1]), *overrides]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=1800)  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result, out
