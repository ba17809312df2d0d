"""The command line as a user types it: a multirun sweep into one folder and one W&B group, and
bad input rejected before any training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.helpers import TINY_SAE, TINY_SYNTHETIC, offline_wandb_run, run_app
from tests.training.test_run import CONTRACT_FILES as RUN_FILES

CONTRACT_FILES = (*RUN_FILES, ".hydra/config.yaml", "checkpoints/last.ckpt")


def offline_runs(job_dir: Path) -> list[Path]:
    return sorted((job_dir / "wandb").glob("offline-run-*"))


def test_multirun_sweep_of_seeds_and_sizes(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_app(
        "train.py",
        "-m",
        "seed=1,2",
        "sae.n_features=32,64",
        *[o for o in TINY_SAE if not o.startswith("sae.n_features")],
        *TINY_SYNTHETIC,
        "trainer.max_epochs=1",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    job_dirs = sorted(p.parent for p in sweep_dir.glob("*/COMPLETE"))
    # Lightning's messages show once per job on the console (not again from the console handler
    # its package installs), and without its advertisement.
    console = result.stdout + result.stderr
    assert console.count("GPU available: False") == len(job_dirs) == 4, console[-3000:]
    assert "💡" not in console
    # Folders are named from each job's overrides (the swept ones and the fixed ones).
    named = sorted(
        (part, other)
        for p in job_dirs
        for part in p.name.split(",")
        for other in p.name.split(",")
        if part.startswith("sae.n_features=") and other.startswith("seed=")
    )
    assert named == [
        ("sae.n_features=32", "seed=1"),
        ("sae.n_features=32", "seed=2"),
        ("sae.n_features=64", "seed=1"),
        ("sae.n_features=64", "seed=2"),
    ]
    groups, names = set(), set()
    for job_dir in job_dirs:
        for name in CONTRACT_FILES:
            assert (job_dir / name).is_file(), f"{job_dir.name}: {name} missing"
        cfg_json = json.loads((job_dir / "cfg.json").read_text())
        hydra_cfg = yaml.safe_load((job_dir / ".hydra/config.yaml").read_text())
        assert cfg_json["n_features"] == hydra_cfg["sae"]["n_features"]
        assert cfg_json["seed"] == hydra_cfg["seed"]
        runs = offline_runs(job_dir)
        assert len(runs) == 1, f"{job_dir.name}: expected one offline W&B run, found {runs}"
        wandb_info = json.loads((job_dir / "environment.json").read_text())["wandb"]
        assert wandb_info["mode"] == "offline"
        groups.add(wandb_info["group"])
        names.add(wandb_info["name"])
        run = offline_wandb_run(runs[0])
        assert (run["group"], run["name"], run["job_type"]) == (
            wandb_info["group"],
            wandb_info["name"],
            "train",
        )
        assert run["config"]["sae"]["n_features"] == cfg_json["n_features"]
        assert run["config"]["seed"] == cfg_json["seed"]
        metrics = json.loads((job_dir / "metrics.json").read_text())
        assert run["summary"]["final/fvu"] == pytest.approx(metrics["fvu"])
        logged = {"train/loss", "train/mse", "train/fvu", "train/l0", "train/dead_fraction"}
        logged |= {"train/auxk", "lr", "val/fvu", "val/explained_variance", "val/l0"}
        assert logged | {"val/dead_fraction"} <= run["history_keys"]
        # The step metrics are logged at every log_every_n_steps-th step, with the epoch.
        every = hydra_cfg["trainer"]["log_every_n_steps"]
        assert len(run["history_values"]["train/loss"]) == metrics["steps"] // every
        assert len(run["history_values"]["epoch"]) == metrics["steps"] // every + len(
            curve_keys(metrics)
        )
        # The held-out metrics are logged once per point of the held-out curve, and are it.
        curve = metrics["heldout_fvu_curve"]
        assert run["history_values"]["val/fvu"] == pytest.approx([curve[k] for k in sorted(curve)])
    assert groups == {f"{sweep_dir.parent.name}_{sweep_dir.name}"}
    assert names == {p.name for p in job_dirs}
    # Different seeds of one size learn different dictionaries.
    weights = [(d / "sae_weights.safetensors").read_bytes() for d in job_dirs[:2]]
    assert weights[0] != weights[1]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["sae.k=64", "sae.n_features=64"], "sae.k=64 must be in 1..63"),
        (["sae.n_features=abc"], "Value 'abc' of type 'str' could not be converted to Integer"),
        (["sae=huge"], "Could not find 'sae/huge'"),
        (["seed=abc"], "seed='abc' is not valid"),
        (["data=activations", "data.path=missing.npy"], "no such activations file"),
        (["data=activations", "data.path=acts.txt"], "activation files must be one of"),
        (["data.n_tokens=100", "data.batch_size=256"], "smaller than one batch"),
    ],
)
def test_bad_input_fails_before_training(tmp_path, overrides, message):
    run_dir = tmp_path / "run"
    data = [] if "data=activations" in overrides else TINY_SYNTHETIC
    result = run_app(
        "train.py", *TINY_SAE, *data, *overrides, f"hydra.run.dir={run_dir}", cwd=tmp_path
    )
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (run_dir / "checkpoints").exists()
    assert not (run_dir / "COMPLETE").exists()


def curve_keys(metrics: dict) -> list[str]:
    return sorted(metrics["heldout_fvu_curve"])


def test_step_metrics_reach_the_loggers_as_lightnings_log_would_write_them():
    import torch

    from saeseeds.training.module import _logged_scalar

    # A Python number is logged as a tensor of the default dtype; other dtypes are converted.
    assert _logged_scalar(0.1) == torch.tensor(0.1, dtype=torch.float32).item() != 0.1
    assert (
        _logged_scalar(torch.tensor(0.1, dtype=torch.bfloat16))
        == torch.tensor(0.1, dtype=torch.bfloat16).float().item()
    )
    assert _logged_scalar(torch.tensor(0.1, dtype=torch.float64)) == 0.1
    assert isinstance(_logged_scalar(torch.tensor(3)), float)
