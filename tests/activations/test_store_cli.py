"""Building stores from the command line: ``build_store.py`` over shard ranges in parallel writes
the bytes of a serial build; a killed build resumes at the first missing shard; a full disk stops
``train.py`` with one line naming the store and leaves no lock and no partial shard.

Each starts the real entry scripts (several processes for the first) and is marked slow:
``pytest -m slow tests/activations/test_store_cli.py``; tests/activations/test_store.py checks the
same properties in process."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from saeseeds.activations.store import ActivationStore, shard_path, stats_path
from saeseeds.activations.text import TextShardBuilder
from tests.helpers import REPO_ROOT, store_folders

TINY_STORE = [
    "data=pydocs",
    "data.seq_len=32",
    "data.heldout_tokens=200",
    "data.eval_sequences=4",
    "data.shard_tokens=512",
    "hook.layer=1",
]


def command(script: str, tiny_llama: Path, tmp_path: Path, *args: str) -> list[str]:
    flags = [arg for arg in args if arg.startswith("-")]  # Hydra reads flags first
    return [
        sys.executable,
        str(REPO_ROOT / script),
        *flags,
        "model=local",
        f"model.path={tiny_llama}",
        *TINY_STORE,
        f"paths.model_cache_dir={tmp_path / 'models'}",
        *(arg for arg in args if not arg.startswith("-")),
    ]


def environment() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def serial_store(make_source, n_tokens: int) -> Path:
    """The store built by one process, in this one."""
    source = make_source(n_tokens=n_tokens, cache_dir=str(make_source.root / "serial"))
    source.load()
    (folder,) = store_folders(make_source.root / "serial")
    return folder


@pytest.fixture
def serial(make_source, tmp_path):
    make_source.root = tmp_path
    return lambda n_tokens: serial_store(make_source, n_tokens)


def shard_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.safetensors"))}


@pytest.mark.slow
def test_a_parallel_build_over_shard_ranges_writes_the_bytes_of_a_serial_build(
    tiny_llama, tmp_path, serial
):
    result = subprocess.run(
        command(
            "build_store.py",
            tiny_llama,
            tmp_path,
            "-m",
            "store.part=0,1",
            "store.parts=2",
            "hydra/launcher=joblib",
            "threads=1",
            "store.progress=false",
            "data.n_tokens=4096",
            f"paths.cache_dir={tmp_path / 'parallel'}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ),
        cwd=tmp_path,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (parallel,) = store_folders(tmp_path / "parallel")
    expected = serial(4096)
    assert parallel.name == expected.name
    assert len(shard_files(parallel)) == 1 + 2 * 8  # held-out, 8 shards and their stats
    assert shard_files(parallel) == shard_files(expected)
    assert ActivationStore(parallel).n_shards == 8
    assert not [p for p in parallel.parent.rglob("*") if p.suffix in (".lock", ".tmp")]


@pytest.mark.slow
def test_a_killed_build_resumes_at_the_first_missing_shard(
    tiny_llama, tmp_path, serial, make_source, monkeypatch
):
    n_shards = 40
    builder = subprocess.Popen(
        command(
            "build_store.py",
            tiny_llama,
            tmp_path,
            "threads=1",
            f"data.n_tokens={n_shards * 512}",
            "model.forward_batch_size=4",
            f"paths.cache_dir={tmp_path / 'killed'}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ),
        cwd=tmp_path,
        env=environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while not list((tmp_path / "killed").rglob("shard-000003.stats.safetensors")):
        assert builder.poll() is None, builder.communicate()[1][-3000:]
        assert time.time() < deadline
        time.sleep(0.02)
    builder.send_signal(signal.SIGKILL)  # no chance to clean up
    builder.wait(timeout=60)
    (folder,) = store_folders(tmp_path / "killed")
    kept = ActivationStore(folder).n_shards
    assert 4 <= kept < n_shards
    assert not stats_path(folder, kept).exists()  # the shards it kept are a prefix, no holes

    expected = shard_files(serial(n_shards * 512))
    shards_built: list[int] = []
    real_shard = TextShardBuilder.shard
    monkeypatch.setattr(
        TextShardBuilder, "shard", lambda self, i: shards_built.append(i) or real_shard(self, i)
    )
    resumed = make_source(n_tokens=n_shards * 512, cache_dir=str(tmp_path / "killed")).load()
    assert resumed.provenance["activation_store_dir"] == str(folder)
    assert shards_built == list(range(kept, n_shards))  # only what was missing
    assert not [p for p in folder.iterdir() if p.suffix in (".lock", ".tmp")]
    assert shard_files(folder) == expected


@pytest.mark.slow
def test_a_full_disk_stops_training_with_one_line_naming_the_store(tiny_llama, tmp_path):
    limit = 48_000  # room for the held-out file (~33 kB), not for a shard (~66 kB)

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run(
        command(
            "train.py",
            tiny_llama,
            tmp_path,
            "data.n_tokens=2048",
            "data.batch_size=256",
            "logger=none",
            f"paths.cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ),
        cwd=tmp_path,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=limit_file_size,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    (folder,) = store_folders(tmp_path / "cache")
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert f"activation store {folder}" in line and "File too large" in line
    assert "Traceback" not in result.stderr
    left = sorted(p.name for p in (tmp_path / "cache").rglob("*"))
    assert not [name for name in left if name.endswith((".lock", ".tmp"))], left
    assert not shard_path(folder, 0).exists() and not stats_path(folder, 0).exists()
    assert ActivationStore(folder).n_shards == 0  # the store is intact; a rerun builds shard 0
