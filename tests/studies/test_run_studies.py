"""scripts/run_studies.py end to end at a tiny size: train both passes of the seed study with both
controls into one sweep folder, analyse it, run the masking experiment and write the page.

The default-suite test trains on synthetic activations with a known sparse dictionary, so that
stable features exist and the masking contrast has something to find; the slow test runs the same
on the tiny transformer, where the CE-loss score is measured too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

# One dictionary, one layer: 2 passes x 3 conditions x SEEDS tiny jobs.
SMALL = ["experiment/dictionary@_global_=n128_k8", "hook.layer=1"]
# 16 sparse true directions in 16 dimensions, which the SAE recovers in every seed. The token
# budgets are the smoke version's (4096, and the study pass's 1024).
SYNTHETIC = [
    "seed=1,2", "data=synthetic", "data.d_in=16", "data.n_true_features=16", "data.k_true=2",
    "sae.n_features=16", "sae.k=2", "sae.lr=0.01",
    "sae.warmup_steps=5", "trainer.max_epochs=10",
]  # fmt: skip


def run_studies(tmp_path: Path, *overrides: str) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "studies"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(REPO_ROOT / "scripts" / "run_studies.py"), "--tiny",
               "--only", "seed_study", "--jobs", "1", "--out", str(out),
               "--page", str(out / "page" / "results.md"), *SMALL, *overrides]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=900)  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result, out


def check_outputs(result: subprocess.CompletedProcess, out: Path, n_seeds: int) -> dict:
    study = out / "seed_study"
    runs = sorted(study.glob("sweep/*/COMPLETE"))
    assert len(runs) == 2 * 3 * n_seeds, [p.parent.name for p in runs]
    summary = json.loads((study / "analysis" / "summary.json").read_text())
    assert len(summary["groups"]) == 6  # 2 budgets x (condition, geometry, random model)
    masking = json.loads((study / "masking.json").read_text())
    # Masking runs on the project-budget groups only (the 1k-token pass is skipped).
    assert len(masking["groups"]) == 3
    for entry in masking["groups"].values():
        for run in entry["runs"].values():
            # Unmasked, the masking code reproduces the run's own held-out FVU: same SAE, same data.
            metrics = json.loads((Path(run["run"]) / "metrics.json").read_text())
            assert run["results"]["full"]["fvu"] == pytest.approx(metrics["fvu"], rel=1e-5)
            if metrics.get("ce_loss_score") is not None:
                assert run["results"]["full"]["ce_loss_score"] == pytest.approx(
                    metrics["ce_loss_score"], abs=1e-5
                )
    page = (out / "page" / "results.md").read_text()
    for heading in ("## Verdicts", "## 1. The multi-seed GPT-2 study", "## 4. Masking"):
        assert heading in page
    assert (out / "page" / "results_seed_study.png").stat().st_size > 1000
    assert "seed_study:" in result.stdout and "total:" in result.stdout
    return {"summary": summary, "masking": masking, "page": page}


# Slow (about a minute): run with -m slow; the claims, page and configs have fast tests.
@pytest.mark.slow
def test_seed_study_pipeline_on_synthetic_features(tmp_path):
    result, out = run_studies(tmp_path, *SYNTHETIC)
    outputs = check_outputs(result, out, n_seeds=2)
    groups = outputs["masking"]["groups"]
    (trained,) = [entry for label, entry in groups.items() if "data.control=none" in label
                  and "model.init=pretrained" in label]  # fmt: skip
    (control,) = [entry for label, entry in groups.items() if "data.control=gaussian" in label]
    # Sparse true features come back in every seed: most features are stable and carry the
    # reconstruction; the geometry control (no features) has fewer stable ones.
    assert trained["n_stable"]["mean"] > trained["n_unstable"]["mean"]
    assert trained["fvu"]["stable"]["mean"] > trained["fvu"]["unstable"]["mean"]
    assert trained["mass_share_stable"]["mean"] > control["mass_share_stable"]["mean"]
    assert "Stable features carry most" in outputs["page"]


@pytest.mark.slow
def test_seed_study_pipeline_on_the_tiny_transformer(tiny_llama, tmp_path):
    text = [f"model.path={tiny_llama}", "model=local", "data.seq_len=32", "sae.n_features=32",
            "sae.k=4", "seed=1,2,3", f"paths.cache_dir={tmp_path / 'cache'}",
            f"paths.model_cache_dir={tmp_path / 'models'}"]  # fmt: skip
    result, out = run_studies(tmp_path, *text)
    outputs = check_outputs(result, out, n_seeds=3)
    trained = [g for label, g in outputs["masking"]["groups"].items() if "model.init=pretrained"
               in label and "data.control=none" in label]  # fmt: skip
    assert all(run["results"]["full"]["ce_loss_score"] is not None
               for run in trained[0]["runs"].values())  # fmt: skip
    # Run again: every training job is skipped, and the page is rewritten from the same runs.
    again = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "run_studies.py"), "--tiny", "--only",
         "seed_study", "--jobs", "1", "--out", str(out), "--stages", "train", *SMALL, *text],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert (again.stdout + again.stderr).count("9 skipped, 0 resumed, 0 started") == 2
