"""Grouping runs by config (apart from seed and paths), and groups that cannot be analysed."""

from __future__ import annotations

from saeseeds.analysis.discovery import discover
from saeseeds.analysis.grouping import group_runs
from tests.analysis.run_folders import hydra_config, random_directions, write_run_folder


def test_configs_equal_apart_from_seed_and_paths_form_one_group(stable_sweep, tmp_path):
    groups = group_runs(discover(str(stable_sweep), tmp_path).runs)
    assert [(group.label, group.seeds) for group in groups] == [
        ("sae.n_features=24", [1, 2, 3]),
        ("sae.n_features=40", [1, 2, 3]),
    ]
    assert all(group.analysable for group in groups)


def test_a_single_seed_is_reported_as_needing_two(tmp_path):
    write_run_folder(tmp_path / "only", random_directions(6, 4, 0), seed=5)
    (group,) = group_runs(discover(str(tmp_path), tmp_path).runs)
    assert not group.analysable and "needs >= 2 seeds" in group.problem


def test_different_d_in_or_hook_inside_one_config_is_reported(tmp_path):
    # An activation file that changed between runs: same composed config, different d_in.
    config = hydra_config(6, 4, 4, seed=0)
    write_run_folder(tmp_path / "a", random_directions(6, 4, 0), seed=1, config=config)
    write_run_folder(tmp_path / "b", random_directions(6, 8, 0), seed=2, config=config)
    write_run_folder(
        tmp_path / "c",
        random_directions(6, 4, 0),
        seed=3,
        config=config,
        hook_name="blocks.3.hook_resid_pre",
    )
    (group,) = group_runs(discover(str(tmp_path), tmp_path).runs)
    assert not group.analysable
    assert "differ in d_in" in group.problem and "a: 4" in group.problem and "b: 8" in group.problem
    (group,) = group_runs(discover([str(tmp_path / "a"), str(tmp_path / "c")], tmp_path).runs)
    assert "differ in hook_name" in group.problem


def test_the_same_seed_twice_is_kept_once(tmp_path):
    for name in ("first", "second", "third"):
        seed = 2 if name == "third" else 1
        write_run_folder(tmp_path / name, random_directions(6, 4, 0), seed=seed)
    (group,) = group_runs(discover(str(tmp_path), tmp_path).runs)
    assert group.seeds == [1, 2]
    assert [entry.path.name for entry in group.duplicates] == ["second"]
