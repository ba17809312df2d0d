"""The same sweep command on Hydra's parallel launchers (conf/hydra/launcher/): the mission's
shape, 2 seeds x 2 sizes, on the tiny real transformer. Under joblib and submitit_local every job
completes, the activation store is built once across the parallel jobs, and the SAEs are
byte-identical to the basic launcher's; ``threads`` is checked before any job and applied in
each."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from saeseeds import contract
from saeseeds.analysis.discovery import discover
from saeseeds.config import register_configs
from saeseeds.io import atomic_write_json
from saeseeds.training.lifecycle.sweep import (
    LAUNCH_ENV,
    SweepCallback,
    launch_records,
    summarise,
)
from tests.helpers import CONF_DIR, run_app, store_folders

SWEEP = ["-m", "seed=1,2", "sae.n_features=32,64"]
TINY_TEXT = [
    "data=pydocs",
    "data.corpus.docstrings=false",
    "data.seq_len=32",
    "data.n_tokens=2048",
    "data.batch_size=256",
    "data.eval_sequences=2",
    "hook.layer=1",
    "sae.k=4",
    "sae.warmup_steps=2",
    "trainer.max_epochs=1",
    "logger=none",
    "trainer.enable_progress_bar=false",
]
BUILD_LINE = "Building the activation store"
# Hydra 1.3 merges each conf/hydra/launcher file with the plugin's config of the same name.
SCHEMA_WARNING = r"ignore:\s+'hydra/launcher/\w+' is validated against ConfigStore schema"


def sweep(tiny_llama: Path, tmp_path: Path, name: str, *launcher: str) -> Path:
    """Run the 2 x 2 sweep with its own activation store; the sweep folder."""
    sweep_dir = tmp_path / name
    result = run_app(
        "train.py",
        *SWEEP,
        "model=local",
        f"model.path={tiny_llama}",
        *TINY_TEXT,
        *launcher,
        f"paths.cache_dir={tmp_path / f'cache_{name}'}",
        f"paths.model_cache_dir={tmp_path / 'models'}",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4 jobs: 0 skipped, 0 resumed, 4 started, 0 failed" in result.stdout
    return sweep_dir


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(path for path in sweep_dir.iterdir() if path.is_dir() and path.name[0] != ".")


def weights(sweep_dir: Path) -> dict[str, bytes]:
    return {
        job.name: (job / contract.WEIGHTS_FILE).read_bytes()
        for job in job_dirs(sweep_dir)
        if (job / contract.COMPLETE_MARKER).is_file()
    }


def environment(job: Path) -> dict:
    return json.loads((job / contract.ENVIRONMENT_FILE).read_text())


def assert_built_once(sweep_dir: Path, cache_dir: Path) -> None:
    """One build across the parallel jobs: one job logged it and computed the activations, the
    other three read the store, and one store folder exists."""
    jobs = job_dirs(sweep_dir)
    builds = sum((job / "train.log").read_text().count(BUILD_LINE) for job in jobs)
    hits = [environment(job)["data_provenance"]["activation_store_hit"] for job in jobs]
    assert builds == 1 and sorted(hits) == [False, True, True, True]
    assert len(store_folders(cache_dir)) == 1
    assert len({environment(job)["activation_store_key"] for job in jobs}) == 1


@pytest.fixture(scope="module")
def basic_weights(tiny_llama, tmp_path_factory) -> dict[str, bytes]:
    """The basic launcher's SAEs (jobs one after another in one process), with threads=1."""
    tmp_path = tmp_path_factory.mktemp("basic")
    sweep_dir = sweep(tiny_llama, tmp_path, "basic", "threads=1")
    for job in job_dirs(sweep_dir):
        assert environment(job)["platform"]["torch_threads"] == 1
        assert "torch CPU threads: 1 (threads=1)" in (job / "train.log").read_text()
    found = weights(sweep_dir)
    assert len(found) == 4
    return found


# Slow (half a minute): run with -m slow; racing builders are tested by default in test_store.
@pytest.mark.slow
def test_joblib_runs_the_sweep_in_parallel_with_one_store_build(
    tiny_llama, tmp_path, basic_weights
):
    from joblib import cpu_count

    sweep_dir = sweep(tiny_llama, tmp_path, "joblib", "hydra/launcher=joblib")
    assert weights(sweep_dir) == basic_weights
    assert_built_once(sweep_dir, tmp_path / "cache_joblib")
    jobs = job_dirs(sweep_dir)
    # Two worker processes ran the four jobs; threads=null gave each cores / n_jobs threads.
    assert len({json.loads(path.read_text())["pid"] for path in job_records(sweep_dir)}) == 2
    expected_threads = max(cpu_count() // 2, 1)
    assert {environment(job)["platform"]["torch_threads"] for job in jobs} == {expected_threads}


def job_records(sweep_dir: Path) -> list[Path]:
    return sorted((sweep_dir / contract.JOB_RECORDS_DIR).glob("*.json"))


@pytest.mark.slow
def test_submitit_local_runs_the_sweep_with_one_store_build(tiny_llama, tmp_path, basic_weights):
    """Slow: four processes start at once, each importing torch and Lightning (~1-2 min here)."""
    sweep_dir = sweep(
        tiny_llama, tmp_path, "submitit", "hydra/launcher=submitit_local", "threads=1"
    )
    assert weights(sweep_dir) == basic_weights
    assert_built_once(sweep_dir, tmp_path / "cache_submitit")
    assert {environment(job)["platform"]["torch_threads"] for job in job_dirs(sweep_dir)} == {1}
    # submitit's pickles and logs sit in the sweep's hidden .submitit/; the analysis skips them.
    assert list((sweep_dir / ".submitit").rglob("*_submitted.pkl"))
    found = discover(str(sweep_dir), tmp_path)
    seen = [run.path for run in found.runs] + [skipped.path for skipped in found.skipped]
    assert sorted(seen) == [job.resolve() for job in job_dirs(sweep_dir)]


@pytest.mark.filterwarnings(SCHEMA_WARNING)
@pytest.mark.parametrize(
    ("launcher", "expected"),
    [
        ("joblib", {"n_jobs": 2, "batch_size": "1"}),
        ("submitit_local", {"submitit_folder": "SWEEP/.submitit/%j"}),
        (
            "submitit_slurm",
            {
                "submitit_folder": "SWEEP/.submitit/%j",
                "partition": None,
                "gpus_per_node": 1,
                "timeout_min": 240,
                "mem_gb": 32,
                "max_num_timeout": 3,
            },
        ),
    ],
)
def test_launcher_configs_compose_with_the_plugin_fields(launcher, expected, tmp_path):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[f"hydra/launcher={launcher}", f"hydra.sweep.dir={tmp_path}"],
            return_hydra_config=True,
        )
    resolved = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert resolved["_target_"].startswith(f"hydra_plugins.hydra_{launcher.split('_')[0]}")
    for key, value in expected.items():
        value = value.replace("SWEEP", str(tmp_path)) if isinstance(value, str) else value
        assert resolved[key] == value, key
    # Every field of the plugin's own config is there, so each can be overridden.
    plugin_fields = {
        "joblib": {"n_jobs", "prefer", "timeout", "pre_dispatch", "mmap_mode"},
        "submitit_local": {"timeout_min", "cpus_per_task", "gpus_per_node", "mem_gb"},
        "submitit_slurm": {"qos", "account", "setup", "additional_parameters", "exclude"},
    }[launcher]
    assert plugin_fields <= set(resolved)


def test_bad_threads_fail_before_any_job(tmp_path):
    result = run_app("train.py", "threads=0", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "threads=0 is not valid; use a positive integer" in result.stderr
    assert not (tmp_path / "run").exists()


def hydra_config(tmp_path: Path, *overrides: str, task: list[str]):
    """The composed config as a multirun's callbacks see it: ``task`` holds the sweep's
    overrides as typed, swept ones included."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[*overrides, f"hydra.sweep.dir={tmp_path / 'sweep'}"],
            return_hydra_config=True,
        )
    with open_dict(cfg):
        cfg.hydra.overrides.task = task
    return cfg


@pytest.mark.filterwarnings(SCHEMA_WARNING)
@pytest.mark.parametrize(
    ("overrides", "task", "message"),
    [
        ([], ["seed=1", "threads=1,abc"], "threads='abc' is not valid"),
        ([], ["threads=range(0,2)"], "threads=0 is not valid"),
        (
            [
                "hydra/launcher=joblib",
                "hydra.launcher._target_=hydra_plugins.hydra_absent_launcher.absent.Launcher",
            ],
            [],
            "hydra/launcher=joblib needs the package hydra-absent-launcher",
        ),
    ],
)
def test_a_sweep_with_bad_threads_or_no_launcher_stops_before_any_job(
    overrides, task, message, tmp_path, capsys
):
    cfg = hydra_config(tmp_path, *overrides, task=task)
    with pytest.raises(SystemExit) as stop:
        SweepCallback().on_multirun_start(cfg)
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()


def test_a_sweep_summary_counts_only_its_own_launch(tmp_path):
    # A study runs two launches into one sweep folder a second apart: each summary must count
    # its own jobs, not the other launch's last records (however recent their files are).
    records = tmp_path / contract.JOB_RECORDS_DIR
    records.mkdir()
    now = time.time()
    written = {
        "mine": ("launch-b", now),
        "mine_early": ("launch-b", now - 3600),  # this launch's, whatever its time
        "previous_launch": ("launch-a", now),  # another launch, a moment ago
        "no_launch_recent": (None, now),  # a launcher whose jobs lose the environment
        "no_launch_old": (None, now - 3600),
    }
    for job, (launch, mtime) in written.items():
        path = records / f"{job}.json"
        atomic_write_json(path, {"job": job, "launch": launch, "outcome": "skipped"})
        os.utime(path, (mtime, mtime))
    counted = launch_records(tmp_path, "launch-b", since=now - 1.0)
    assert sorted(record["job"] for record in counted) == ["mine", "mine_early", "no_launch_recent"]
    assert summarise(counted)[0] == "3 jobs: 3 skipped, 0 resumed, 0 started, 0 failed"


def _job_start_in_worker(callback: SweepCallback) -> str | None:
    """What a job started in this (joblib worker) process puts in its record as its launch."""
    callback.on_job_start(OmegaConf.create({"threads": None}))
    return os.environ.get(LAUNCH_ENV)


def test_a_worker_kept_from_an_earlier_launch_records_the_new_launch(tmp_path, monkeypatch):
    # joblib keeps its worker processes between launches of one Python process (a notebook, a
    # driver script), with the environment they started with; Hydra sends the callback to them
    # with each job. Two launches through the same real workers: each job records its own.
    from joblib import Parallel, delayed

    monkeypatch.setenv(LAUNCH_ENV, "not-a-launch")  # put back after the test
    cfg = OmegaConf.create({"threads": None, "hydra": {"sweep": {"dir": str(tmp_path / "s")}}})
    launches = []
    for _ in range(2):
        callback = SweepCallback()
        callback.on_multirun_start(cfg)
        seen = Parallel(n_jobs=2, backend="loky")(
            delayed(_job_start_in_worker)(callback) for _ in range(4)
        )
        assert seen == [callback.launch] * 4
        launches.append(callback.launch)
    assert launches[0] != launches[1]
