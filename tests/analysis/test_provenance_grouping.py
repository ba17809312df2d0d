"""What makes runs seeds of one condition beyond their config: the data they were trained on, a
config record that resolves as the trainer resolved it, and a sweep folder found by its name.

The data's identity is read from environment.json's provenance, as written today (the facts a
source records: ``file_sha256``, ``activation_cache_key``, ...) or as a source that records
``data_identity`` itself writes it; both group the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from saeseeds import contract
from saeseeds.analysis.discovery import discover
from saeseeds.analysis.grouping import group_runs
from tests.analysis.run_folders import hydra_config, random_directions, write_run_folder

REPO_ROOT = Path(__file__).resolve().parents[2]


def analyze(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    command = [sys.executable, str(REPO_ROOT / "analyze.py"), "progress=false", "logger=none"]
    command += [*overrides, f"hydra.run.dir={cwd / 'report'}"]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def trained_folder(folder: Path, seed: int, provenance: dict | None = None) -> Path:
    """A run folder as the trainer writes it: environment.json records the resolved config (and
    the data's provenance), .hydra/config.yaml the composed one, interpolations unresolved."""
    composed = hydra_config(6, 4, 4, seed)
    composed["hook"]["name"] = "blocks.${.layer}.hook_${.point}"
    base = random_directions(6, 4, seed=0)
    write_run_folder(folder, np.roll(base, seed, axis=0), seed=seed, config=composed)
    resolved = json.loads(json.dumps(composed))
    resolved["hook"]["name"] = "blocks.6.hook_resid_pre"
    resolved["paths"]["output_dir"] = str(folder)
    environment = json.loads((folder / contract.ENVIRONMENT_FILE).read_text())
    environment["config"] = contract.run_config(resolved)
    if provenance is not None:
        environment["data_provenance"] = provenance
    (folder / contract.ENVIRONMENT_FILE).write_text(json.dumps(environment))
    return folder


def on_file(sha256: str, **more: object) -> dict:
    return {"source": "activation_file", "path": "/data/acts.npy", "file_sha256": sha256, **more}


def test_other_data_under_one_config_is_another_group_whose_notes_say_so(tmp_path):
    for seed in (1, 2):
        trained_folder(tmp_path / f"seed={seed}", seed, on_file("a" * 64))
    for seed in (3, 4):
        trained_folder(tmp_path / f"seed={seed}", seed, on_file("b" * 64))
    groups = group_runs(discover(str(tmp_path), tmp_path).runs)
    assert [group.seeds for group in groups] == [[1, 2], [3, 4]]
    assert len({group.label for group in groups}) == 2
    assert all("file_sha256=" in group.label for group in groups)
    assert "file_sha256=aaaaaaaaaaaa… vs bbbbbbbbbbbb…" in groups[0].notes[0]
    assert "seed=3, seed=4" in groups[0].notes[0]


def test_per_run_provenance_does_not_split_a_condition(tmp_path):
    """Where the cache lives and whether it was hit differ between runs of one condition."""
    text = {"source": "text:python_docs", "activation_cache_key": "k" * 64, "corpus": {"sha": 1}}
    trained_folder(tmp_path / "seed=1", 1, {**text, "activation_cache_hit": False})
    trained_folder(tmp_path / "seed=2", 2, {**text, "activation_cache_dir": "/elsewhere"})
    (group,) = group_runs(discover(str(tmp_path), tmp_path).runs)
    assert group.seeds == [1, 2] and group.notes == []


def test_a_recorded_data_identity_is_taken_at_its_word(tmp_path):
    """A source that writes ``data_identity`` names exactly what identifies its data."""
    store = {"store_key": "s1", "model_weight_hash": "w"}
    trained_folder(tmp_path / "seed=1", 1, {**on_file("a" * 64), "data_identity": store})
    trained_folder(tmp_path / "seed=2", 2, {**on_file("c" * 64), "data_identity": store})
    trained_folder(tmp_path / "seed=3", 3, {"data_identity": {**store, "store_key": "s2"}})
    groups = group_runs(discover(str(tmp_path), tmp_path).runs)
    assert [group.seeds for group in groups] == [[1, 2], [3]]
    assert groups[0].data_identity == store
    assert "store_key=s1 vs s2" in groups[0].notes[0]


def test_a_folder_without_its_config_record_is_grouped_by_its_resolved_hydra_config(tmp_path):
    """Item 7: environment.json lacks the config (an older trainer); .hydra/config.yaml holds
    ``hook.name: blocks.${.layer}.hook_${.point}``, which must resolve as the trainer did."""
    sweep = tmp_path / "sweep"
    trained_folder(sweep / "seed=1", 1)
    trained_folder(sweep / "seed=2", 2)
    environment = sweep / "seed=2" / contract.ENVIRONMENT_FILE
    environment.write_text(json.dumps({"python": "3.11"}))  # no config record
    unresolvable = hydra_config(6, 4, 4, 3)
    unresolvable["hook"]["name"] = "${oc.env:SAESEEDS_UNSET_VARIABLE}"
    write_run_folder(sweep / "seed=3", random_directions(6, 4, 3), seed=3, config=unresolvable)

    result = analyze(tmp_path, f"sweep_dir={sweep}")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    (group,) = summary["groups"].values()
    assert group["seeds"] == [1, 2]
    (skipped,) = summary["skipped_runs"]
    assert Path(skipped["path"]).name == "seed=3" and skipped["status"] == "corrupt"
    assert "interpolations resolve" in skipped["reason"]


def test_an_existing_sweep_dir_is_taken_as_it_is_even_with_brackets(tmp_path):
    """Item 9: ``sweep[1]`` exists; it is that folder, not a glob matching ``sweep1``."""
    sweep = tmp_path / "sweep[1]"
    for seed in (1, 2):
        trained_folder(sweep / f"seed={seed}", seed)
    result = analyze(tmp_path, f"sweep_dir='{sweep}'")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["inputs"] == [str(sweep)]
    assert [group["seeds"] for group in summary["groups"].values()] == [[1, 2]]
