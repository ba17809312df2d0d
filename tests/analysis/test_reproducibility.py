"""Reproducibility notes: a second run of one seed says whether its weights are byte-identical,
and if not whether the conditions it recorded (threads, precision, device, torch build) explain
it; a group whose seeds ran in different precisions says so. Real run folders, real files."""

from __future__ import annotations

import json
from pathlib import Path

from saeseeds.analysis.discovery import discover
from saeseeds.analysis.grouping import group_runs
from saeseeds.analysis.reproducibility import recorded_conditions
from tests.analysis.run_folders import random_directions, write_run_folder

CPU_RUN = {
    "device": "cpu",
    "cpu_capability": "AVX512",
    "cuda_device": None,
    "precision": "32-true",
    "model_dtype": None,
    "torch_threads": 2,
    "torch": "2.13.0+cpu",
}


def write_run(folder: Path, seed: int, weights_seed: int, **conditions) -> None:
    write_run_folder(folder, random_directions(6, 4, weights_seed), seed=seed)
    environment = json.loads((folder / "environment.json").read_text())
    environment["reproducibility"] = {**CPU_RUN, **conditions}
    (folder / "environment.json").write_text(json.dumps(environment))


def duplicate_reason(tmp_path: Path) -> str:
    (group,) = group_runs(discover(str(tmp_path), tmp_path).runs)
    (duplicate,) = group.duplicates
    return duplicate.reason


def test_a_second_run_of_a_seed_with_the_same_bytes_says_so(tmp_path):
    write_run(tmp_path / "first", 1, weights_seed=0)
    write_run(tmp_path / "second", 1, weights_seed=0)
    write_run(tmp_path / "other_seed", 2, weights_seed=5)
    reason = duplicate_reason(tmp_path)
    assert "ignored" in reason and "byte-identical" in reason


def test_different_bytes_are_explained_by_the_conditions_that_differ(tmp_path):
    write_run(tmp_path / "first", 1, weights_seed=0, torch_threads=1)
    write_run(tmp_path / "second", 1, weights_seed=3, torch_threads=2)
    write_run(tmp_path / "other_seed", 2, weights_seed=5)
    reason = duplicate_reason(tmp_path)
    assert "differ from that run's, as expected" in reason
    assert "torch_threads 2 vs 1" in reason


def test_different_bytes_under_equal_conditions_are_called_unexpected(tmp_path):
    write_run(tmp_path / "first", 1, weights_seed=0)
    write_run(tmp_path / "second", 1, weights_seed=3)
    write_run(tmp_path / "other_seed", 2, weights_seed=5)
    assert "not expected" in duplicate_reason(tmp_path)


def test_seeds_trained_in_different_precisions_are_noted(tmp_path):
    write_run(tmp_path / "a", 1, weights_seed=0)
    write_run(tmp_path / "b", 2, weights_seed=1, precision="bf16-mixed")
    write_run(tmp_path / "c", 3, weights_seed=2, torch_threads=1)  # threads alone: no note
    (group,) = group_runs(discover(str(tmp_path), tmp_path).runs)
    (note,) = group.notes
    assert "different precision: 32-true (seeds 1, 3); bf16-mixed (seeds 2)" in note


def test_folders_from_before_the_record_are_read_from_their_older_fields(tmp_path):
    folder = write_run_folder(tmp_path / "old", random_directions(6, 4, 0))
    (folder / "environment.json").write_text(
        json.dumps(
            {
                "device": "cpu",
                "precision": "32-true",
                "platform": {"torch_threads": 4, "cuda_device": None},
                "versions": {"torch": "2.5.1"},
            }
        )
    )
    conditions = recorded_conditions(folder)
    assert conditions["torch_threads"] == 4 and conditions["torch"] == "2.5.1"
    assert conditions["precision"] == "32-true" and conditions["cpu_capability"] is None
