"""Reading run folders: what a usable run yields and why a bad one is rejected."""

from __future__ import annotations

import json

import numpy as np
import pytest

from saeseeds.analysis.errors import RunFolderError
from saeseeds.analysis.loading import load_run
from tests.analysis.run_folders import random_directions, write_run_folder


def test_a_complete_run_yields_unit_directions_stats_and_the_sweep_group(tmp_path):
    decoder = 3.0 * random_directions(12, 8, seed=0)
    fire = np.array([0, 5] * 6)
    run = load_run(write_run_folder(tmp_path / "run", decoder, seed=7, fire_count=fire))
    assert (run.seed, run.n_features, run.d_in) == (7, 12, 8)
    np.testing.assert_allclose(np.linalg.norm(run.decoder_directions, axis=1), 1.0, atol=1e-6)
    # Encoder directions are the columns of W_enc, one per feature.
    np.testing.assert_allclose(run.encoder_directions, run.decoder_directions, atol=1e-6)
    np.testing.assert_allclose(run.firing_frequency, fire / 1000)
    assert run.live_mask.sum() == 6
    assert run.wandb_group == "sweep-group"
    # Seed and output paths are not part of what a group compares.
    assert "seed" not in run.comparable_config and "paths" not in run.comparable_config
    assert "enable_progress_bar" not in run.comparable_config["trainer"]


def test_top_examples_are_read_by_feature_index(tmp_path):
    examples = {3: [{"activation": 2.0, "text": "the capital is <<Paris>>", "token": "Paris"}]}
    run = load_run(
        write_run_folder(tmp_path / "run", random_directions(5, 4, 0), top_examples=examples)
    )
    assert run.top_examples()[3][0]["token"] == "Paris"
    assert 0 not in run.top_examples()


def rejection(tmp_path, damage) -> RunFolderError:
    folder = write_run_folder(tmp_path / "run", random_directions(6, 4, seed=1))
    damage(folder)
    with pytest.raises(RunFolderError) as caught:
        load_run(folder)
    return caught.value


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_safetensors_is_corrupt(tmp_path):
    error = rejection(tmp_path, lambda f: truncate(f / "sae_weights.safetensors"))
    assert error.status == "corrupt" and "truncated" in error.reason


def test_nan_weights_are_corrupt(tmp_path):
    decoder = random_directions(6, 4, seed=1)
    decoder[2, 1] = np.nan
    folder = write_run_folder(tmp_path / "run", decoder)
    with pytest.raises(RunFolderError, match="W_dec contains NaN"):
        load_run(folder)


def test_missing_cfg_json_is_corrupt(tmp_path):
    error = rejection(tmp_path, lambda f: (f / "cfg.json").unlink())
    assert (error.status, error.reason) == ("corrupt", "missing cfg.json (the run's SAE config)")


def test_no_complete_marker_is_incomplete(tmp_path):
    error = rejection(tmp_path, lambda f: (f / "COMPLETE").unlink())
    assert error.status == "incomplete"


def test_other_contract_versions_are_rejected(tmp_path):
    def bump(folder):
        cfg = json.loads((folder / "cfg.json").read_text())
        (folder / "cfg.json").write_text(json.dumps({**cfg, "contract_version": 2}))

    error = rejection(tmp_path, bump)
    assert error.status == "rejected" and "contract_version 2" in error.reason


def test_weights_that_disagree_with_cfg_json_are_corrupt(tmp_path):
    def shrink(folder):
        cfg = json.loads((folder / "cfg.json").read_text())
        (folder / "cfg.json").write_text(json.dumps({**cfg, "d_in": 5}))

    assert "W_dec has shape [6, 4], cfg.json implies [6, 5]" in rejection(tmp_path, shrink).reason


@pytest.mark.parametrize(
    "change, shown",
    [
        ({"d_in": "4"}, "d_in='4'"),
        ({"n_features": 6.0}, "n_features=6.0"),
        ({"seed": True}, "seed=True"),
        ({"seed": None}, "seed=None"),
    ],
)
def test_sizes_and_seeds_that_are_not_integers_are_corrupt(tmp_path, change, shown):
    def edit(folder):
        cfg = json.loads((folder / "cfg.json").read_text())
        (folder / "cfg.json").write_text(json.dumps({**cfg, **change}))

    error = rejection(tmp_path, edit)
    assert error.status == "corrupt"
    assert error.reason == f"cfg.json lacks an integer d_in/n_features/seed ({shown})"


def test_a_missing_seed_is_named(tmp_path):
    def drop(folder):
        cfg = json.loads((folder / "cfg.json").read_text())
        del cfg["seed"]
        (folder / "cfg.json").write_text(json.dumps(cfg))

    assert rejection(tmp_path, drop).reason.endswith("(seed missing)")
