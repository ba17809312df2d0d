"""scripts/sweep_architectures.py on synthetic activations: calibrate λ, train the three
architectures with their geometry controls into one sweep folder, and on a second call reuse
the recorded λ instead of searching again (and search JumpReLU's); then the studies script
analyses the sweep and writes the architectures section of the results page, each architecture
beside its own control."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

TINY = [
    "data=synthetic", "data.d_in=16", "data.n_true_features=16", "data.k_true=2",
    "data.n_tokens=2048", "data.batch_size=256", "sae.n_features=16", "trainer.max_epochs=2",
    "logger=none", "trainer.enable_progress_bar=false",
]  # fmt: skip


def sweep_architectures(sweep: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(REPO_ROOT / "scripts" / "sweep_architectures.py"),
               "--k", "2", "--seeds", "1,2", "--max-probes", "1", "--control", "gaussian",
               "--sweep-dir", str(sweep), *flags, *TINY]  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=900)  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


# Slow (about a minute): run with -m slow. The calibration and sweep logic it drives are also
# covered by the architectures' own CLI tests.
@pytest.mark.slow
def test_each_architecture_gets_its_control_and_a_rerun_reuses_the_calibration(tmp_path):
    out = tmp_path / "studies"
    sweep = out / "architectures" / "sweep"  # where run_studies.py looks for it
    first = sweep_architectures(sweep)
    assert "Searching the ReLU+L1 coefficient" in first.stdout
    complete = sorted(sweep.glob("*/COMPLETE"))
    configs = [json.loads((path.parent / "cfg.json").read_text()) for path in complete]
    assert len(complete) == 12, [path.parent.name for path in complete]
    names = [path.parent.name for path in complete]
    for architecture in ("topk", "batchtopk", "relu_l1"):
        ours = [name for name in names if f"sae={architecture}," in name]
        assert sorted("data.control=gaussian" in name for name in ours) == [0, 0, 1, 1], names
    assert {config["architecture"] for config in configs} == {"topk", "batchtopk", "relu_l1"}
    # Synthetic data: the ground-truth table, one row per architecture (the controls have none).
    table = (sweep / "ground_truth.md").read_text()
    assert "Ground-truth recovery" in first.stdout and table in first.stdout
    assert [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| ")][1:] == [
        "| batchtopk", "| relu_l1", "| topk",
    ]  # fmt: skip
    record = json.loads((sweep / "calibration.json").read_text())
    assert record["k"] == 2 and record["overrides"] == TINY and record["l1_coefficient"] > 0

    second = sweep_architectures(sweep, "--calibrate-only", "--architectures", "relu_l1,jumprelu")
    assert "Reusing the ReLU+L1 coefficient" in second.stdout
    assert "Searching the ReLU+L1" not in second.stdout
    assert f"λ = {record['l1_coefficient']:.6g} (ReLU+L1)" in second.stdout
    # JumpReLU's L0 coefficient is searched the same way (one probe here), then reported.
    assert "Searching the JumpReLU coefficient for held-out L0 ≈ 2" in second.stdout
    probe = second.stdout.split("Searching the JumpReLU coefficient")[1].splitlines()[1]
    assert probe.strip().startswith("λ=1") and "L0=" in probe
    assert "(JumpReLU)" in second.stdout
    assert "l0_coefficient" not in json.loads((sweep / "calibration.json").read_text())

    page = out / "results.md"
    command = [sys.executable, str(REPO_ROOT / "scripts" / "run_studies.py"), "--tiny",
               "--only", "architectures", "--stages", "analyze,page", "--out", str(out),
               "--page", str(page)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=900)  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    summary = json.loads((out / "architectures" / "analysis" / "summary.json").read_text())
    assert len(summary["groups"]) == 6  # 3 architectures x (condition, geometry control)
    conditions = [g for g in summary["groups"].values() if g.get("role") == "condition"]
    assert len(conditions) == 3 and all("gaussian" in g["controls"] for g in conditions)
    assert all("redundancy" in group for group in summary["groups"].values())
    text = page.read_text()
    section = text.split("## 3. Architectures")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "(" in line]
    assert {row.split(" | ")[0][2:] for row in rows} >= {"topk", "batchtopk", "relu_l1"}
    claim = text.split("**ReLU+L1 SAEs are more stable than Top-K")[-1].split("\n\n")[1]
    assert claim.count("gaussian:") == 2, claim  # shared and median, each against the controls


def load_script():
    path = REPO_ROOT / "scripts" / "sweep_architectures.py"
    spec = importlib.util.spec_from_file_location("sweep_architectures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_hierarchy_preset_yields_to_the_command_line_and_the_table_reads_the_sweep(tmp_path):
    script = load_script()
    overrides = script.with_preset(script.HIERARCHICAL_WORLD, ["data.d_in=16", "+foo=1"])
    assert "data.d_in=16" in overrides and "data.d_in=32" not in overrides
    assert "data.hierarchy.n_parents=8" in overrides and overrides[-1] == "+foo=1"

    runs = {"a": ("topk", 4), "b": ("topk", 6), "c": ("matryoshka", 1), "d": ("relu_l1", None)}
    for name, (architecture, absorbed) in runs.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "cfg.json").write_text(json.dumps({"architecture": architecture}))
        metrics = {"fvu": 0.1}
        if absorbed is not None:
            metrics.update(gt_recovered=0.5, gt_absorbed_children=absorbed)
        (folder / "metrics.json").write_text(json.dumps(metrics))
        (folder / "COMPLETE").write_text("{}")
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "cfg.json").write_text(json.dumps({"architecture": "jumprelu"}))
    rows = [line for line in script.ground_truth_report(tmp_path).splitlines() if "| " in line]
    assert rows[0].startswith("| architecture | seeds | features recovered")
    assert rows[1:] == [
        "| matryoshka | 1 | 50% | – | – | 1.0 | – |",
        "| topk | 2 | 50% | – | – | 5.0 (4.0–6.0) | – |",
    ]
    assert script.ground_truth_report(tmp_path / "d") is None


def test_the_hierarchical_world_gets_a_k_below_its_width_unless_one_is_given():
    script = load_script()
    width = int(next(o for o in script.HIERARCHICAL_WORLD if o.startswith("sae.n_features="))[15:])
    assert script.target_k(None, hierarchy=True) == script.HIERARCHY_K < width
    assert script.target_k(None, hierarchy=False) == 32
    assert script.target_k(5, hierarchy=True) == 5
