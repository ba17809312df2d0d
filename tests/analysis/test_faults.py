"""The analysis of a sweep that went wrong: one job killed, one corrupt weights file, one with NaN
weights, one relabelled after it finished, one folder deleted. Each is named with its reason,
the rest is analysed, and the group says which of its seeds are missing. Malformed optional
inputs cost their own content, never the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from saeseeds import contract
from saeseeds.analysis.app import run_analysis
from saeseeds.analysis.discovery import discover
from saeseeds.analysis.errors import RunFolderError
from saeseeds.analysis.grouping import group_runs
from saeseeds.analysis.loading import load_run, read_top_examples
from tests.analysis.conftest import noisy_permuted_copy
from tests.analysis.run_folders import hydra_config, random_directions, write_run_folder

SEEDS = (1, 2, 3, 4, 5, 6, 7, 8)


def record_completion(folder: Path, config: dict) -> None:
    """environment.json's config, as the trainer records it at completion."""
    environment = json.loads((folder / "environment.json").read_text())
    run_config = contract.run_config(config)
    environment.update(config=run_config, config_sha256=contract.config_sha256(run_config))
    (folder / "environment.json").write_text(json.dumps(environment))


def job_record(sweep: Path, job: str, seed: int, config: dict, outcome: str) -> None:
    records = sweep / contract.JOB_RECORDS_DIR
    records.mkdir(exist_ok=True)
    payload = {
        "format": contract.JOB_RECORD_FORMAT,
        "job": job,
        "seed": seed,
        "outcome": outcome,
        "reason": None,
        "config": contract.run_config(config),
    }
    (records / f"{job}.json").write_text(json.dumps(payload))


def faulty_sweep(root: Path) -> Path:
    """Eight seeds of one condition (n_features=12, d_in=6): 1, 2, 3 are fine; 4 was killed, 5
    has a truncated weights file, 6 has NaN weights, 7 was relabelled (re-run with k=8 after it
    finished) and 8 was deleted."""
    sweep = root / "multirun" / "2026-11-22" / "10-00-00"
    base = random_directions(12, 6, seed=0)
    for seed in SEEDS:
        job = f"seed={seed}"
        config = hydra_config(12, 6, 4, seed)
        write_run_folder(
            sweep / job,
            noisy_permuted_copy(base, seed, noise=0.05),
            seed=seed,
            config=config,
            complete=seed != 4,
        )
        record_completion(sweep / job, config)
        job_record(sweep, job, seed, config, "running" if seed == 4 else "started")
    for path in (sweep / "seed=4").iterdir():  # killed: only what an accepted job writes first
        if path.is_file():
            path.unlink()
    weights = sweep / "seed=5" / contract.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:150])
    nan_decoder = base.copy()
    nan_decoder[3, 1] = np.nan
    write_run_folder(sweep / "seed=6", nan_decoder, seed=6, encoder=base.T.copy())
    record_completion(sweep / "seed=6", hydra_config(12, 6, 4, 6))
    relabelled = hydra_config(12, 6, 8, 7)
    (sweep / "seed=7" / contract.HYDRA_CONFIG).write_text(yaml.safe_dump(relabelled))
    for path in sorted((sweep / "seed=8").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (sweep / "seed=8").rmdir()
    return sweep


def test_faulty_sweep_is_analysed_without_the_bad_seeds_and_says_why(tmp_path, analysis_config):
    sweep = faulty_sweep(tmp_path)
    outcome = run_analysis(analysis_config(str(sweep)), tmp_path / "report")

    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    skipped = {Path(entry["path"]).name: entry for entry in summary["skipped_runs"]}
    assert set(skipped) == {"seed=4", "seed=5", "seed=6", "seed=7", "seed=8"}
    assert skipped["seed=4"]["status"] == "incomplete"
    assert skipped["seed=5"]["status"] == "corrupt" and "truncated" in skipped["seed=5"]["reason"]
    assert skipped["seed=6"]["reason"] == "W_dec contains NaN or infinite values"
    assert skipped["seed=7"]["status"] == "relabelled"
    assert "sae.k=4 vs 8" in skipped["seed=7"]["reason"]
    assert skipped["seed=8"]["status"] == "missing"
    assert "deleted" in skipped["seed=8"]["reason"]
    assert (tmp_path / "report" / "report.md").is_file()
    (group,) = outcome.reports
    assert group.group.seeds == [1, 2, 3]

    # The group knows which of its seeds are missing, and why (for the report to render).
    discovery = discover(str(sweep), tmp_path)
    (grouped,) = group_runs(discovery.runs, discovery.skipped)
    assert grouped.seeds == [1, 2, 3]
    noted = sorted(entry.seed for entry in grouped.missing)
    assert noted == [4, 5, 6, 7, 8]
    relabelled = "seed 7 not analysed (seed=7): relabelled"
    assert any(note.startswith(relabelled) for note in grouped.notes)


def test_relabelled_folder_is_detected_only_in_keys_that_define_the_run(tmp_path):
    base = random_directions(6, 4, seed=0)
    config = hydra_config(6, 4, 4, 1)
    folder = write_run_folder(tmp_path / "run", base, seed=1, config=config)
    record_completion(folder, config)
    operational = hydra_config(6, 4, 4, 1, trainer__enable_progress_bar=True)
    operational["paths"]["cache_dir"] = "/somewhere/else"
    (folder / contract.HYDRA_CONFIG).write_text(yaml.safe_dump(operational))
    assert load_run(folder).seed == 1  # operational keys may differ

    (folder / contract.HYDRA_CONFIG).write_text(yaml.safe_dump(hydra_config(6, 4, 4, 2)))
    try:
        load_run(folder)
    except RunFolderError as error:
        assert error.status == "relabelled" and "seed=1 vs 2" in error.reason
    else:
        raise AssertionError("a relabelled seed was accepted")


def test_all_zero_dictionary_is_not_analysed(tmp_path):
    folder = write_run_folder(tmp_path / "run", np.zeros((6, 4), dtype=np.float32), seed=1)
    try:
        load_run(folder)
    except RunFolderError as error:
        assert error.status == "corrupt" and "all zeros" in error.reason
    else:
        raise AssertionError("an all-zero dictionary was accepted")


def test_malformed_top_examples_cost_their_entries_not_the_report(tmp_path, analysis_config):
    base = random_directions(8, 4, seed=0)
    good = {"text": "a <<b>> c", "token": "b", "activation": 1.5}
    malformed = {
        0: [good, {"text": 3, "token": "b", "activation": 1.0}, "not a dict"],
        1: [{"text": "x", "token": None, "activation": "high"}],
        2: "not a list",
    }
    sweep = tmp_path / "sweep"
    for seed in (1, 2):
        write_run_folder(
            sweep / f"seed={seed}",
            base[np.random.default_rng(seed).permutation(8)],
            seed=seed,
            top_examples=malformed,
        )
    (sweep / "seed=2" / contract.TOP_EXAMPLES_FILE).write_text('{"features": [1, 2]}')

    assert read_top_examples(sweep / "seed=1") == {0: [good]}
    assert read_top_examples(sweep / "seed=2") == {}
    run_analysis(analysis_config(str(sweep)), tmp_path / "report")
    assert (tmp_path / "report" / "report.md").is_file()
    assert (tmp_path / "report" / "summary.json").is_file()
