"""Finding run folders from a path, a list, a glob or the latest multirun folder."""

from __future__ import annotations

import pytest

from saeseeds.analysis.discovery import discover, find_run_folders, resolve_roots
from saeseeds.analysis.errors import AnalysisError
from tests.analysis.run_folders import random_directions, write_run_folder


def make_sweep(root, seeds=(1, 2)):
    for seed in seeds:
        write_run_folder(root / f"sae.n_features=6/seed={seed}", random_directions(6, 4, seed))
    return root


def test_nested_job_folders_are_found_but_not_searched_inside(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    (sweep / "sae.n_features=6/seed=1/checkpoints/inner").mkdir(parents=True)
    (sweep / "sae.n_features=6/seed=1/checkpoints/inner/cfg.json").write_text("{}")
    found = find_run_folders(sweep)
    assert [path.name for path in found] == ["seed=1", "seed=2"]
    assert find_run_folders(found[0]) == [found[0]]  # a single run folder is accepted


def test_default_is_the_latest_multirun_folder(tmp_path):
    make_sweep(tmp_path / "outputs/multirun/2026-11-21/23-59-59")
    latest = make_sweep(tmp_path / "outputs/multirun/2026-11-22/10-00-00")
    assert resolve_roots(None, tmp_path / "outputs") == [latest.resolve()]


def test_lists_and_globs_are_expanded(tmp_path):
    first = make_sweep(tmp_path / "multirun/a")
    second = make_sweep(tmp_path / "multirun/b")
    assert resolve_roots([str(first), str(second)], tmp_path) == [first, second]
    assert resolve_roots(str(tmp_path / "multirun/*"), tmp_path) == [first, second]


@pytest.mark.parametrize(
    "sweep_dir, message",
    [("missing", "does not exist"), ("multirun/zz*", "matches no folder"), (None, "no multirun")],
)
def test_inputs_that_name_nothing_fail_clearly(tmp_path, sweep_dir, message):
    with pytest.raises(AnalysisError, match=message):
        resolve_roots(None if sweep_dir is None else str(tmp_path / sweep_dir), tmp_path)


def test_bad_runs_are_listed_with_reasons_and_good_ones_kept(tmp_path):
    sweep = make_sweep(tmp_path / "sweep", seeds=(1, 2, 3))
    (sweep / "sae.n_features=6/seed=2/COMPLETE").unlink()
    (sweep / "sae.n_features=6/seed=3/cfg.json").unlink()
    discovery = discover(str(sweep), tmp_path)
    assert [run.seed for run in discovery.runs] == [1]
    assert {(entry.path.name, entry.status) for entry in discovery.skipped} == {
        ("seed=2", "incomplete"),
        ("seed=3", "corrupt"),
    }
