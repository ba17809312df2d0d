"""The activation cache: built once, then read (from disk, or memory in the same process); shared
safely by racing processes; a corrupt or incomplete cache is detected and rebuilt."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from saeseeds.activations import cache as activation_cache
from saeseeds.activations import models
from saeseeds.activations.cache import MANIFEST_FILE, TENSORS_FILE
from tests.helpers import REPO_ROOT, cache_folders


def count_forwards(source) -> list[int]:
    """Counts real forward passes of the source's model (a hook on its embedding)."""
    model = models.load_model(source.model_config, source.model_cache_dir)
    calls: list[int] = []
    model.bridge.embed.register_forward_hook(lambda *args: calls.append(1))
    return calls


def test_cache_is_built_once_then_read_from_disk(make_source, tmp_path):
    first = make_source()
    forwards = count_forwards(first)
    built = first.load()
    assert first.cached.built and len(forwards) > 0
    assert built.provenance["activation_cache_hit"] is False
    (folder,) = cache_folders(tmp_path / "cache")
    assert {p.name for p in folder.iterdir()} == {TENSORS_FILE, MANIFEST_FILE}
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert manifest["key"] == built.provenance["activation_cache_key"]
    assert manifest["key_fields"]["hook_name"] == "blocks.1.hook_resid_pre"

    activation_cache.forget_memory()  # as a new process would
    forwards.clear()
    second = make_source()
    read = second.load()
    assert not second.cached.built and forwards == []
    assert read.provenance["activation_cache_hit"] is True
    assert torch.equal(read.train, built.train) and torch.equal(read.heldout, built.heldout)
    assert cache_folders(tmp_path / "cache") == [folder]


def test_next_job_in_the_same_process_reads_memory(make_source, tmp_path):
    first = make_source().load()
    (folder,) = cache_folders(tmp_path / "cache")
    for file in folder.iterdir():
        file.unlink()
    folder.rmdir()
    again = make_source().load()
    assert again.provenance["activation_cache_hit"] is True
    assert torch.equal(again.train, first.train)
    again.train.zero_()  # the trainer may change its copy in place ...
    assert torch.equal(make_source().load().train, first.train)  # ... without touching the cache


def test_everything_that_changes_activations_changes_the_key(make_source, tmp_path):
    keys = {
        make_source().load().provenance["activation_cache_key"],
        make_source(layer=0).load().provenance["activation_cache_key"],
        make_source(hook_point="mlp_out").load().provenance["activation_cache_key"],
        make_source(seq_len=16).load().provenance["activation_cache_key"],
        make_source(n_tokens=1024).load().provenance["activation_cache_key"],
        make_source(drop_first_position=False).load().provenance["activation_cache_key"],
        make_source(model={"init": "random"}).load().provenance["activation_cache_key"],
    }
    assert len(keys) == 7 and len(cache_folders(tmp_path / "cache")) == 7


def test_corrupt_cache_is_detected_and_rebuilt(make_source, tmp_path, caplog):
    original = make_source().load()
    (folder,) = cache_folders(tmp_path / "cache")
    tensors_file = folder / TENSORS_FILE
    data = bytearray(tensors_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of the activations
    tensors_file.write_bytes(bytes(data))
    activation_cache.forget_memory()
    with caplog.at_level(logging.WARNING, logger="saeseeds.activation_cache"):
        source = make_source()
        rebuilt = source.load()
    assert source.cached.built and "checksum mismatch" in caplog.text
    assert torch.equal(rebuilt.train, original.train)
    assert cache_folders(tmp_path / "cache") == [folder]


def test_incomplete_cache_and_leftovers_of_a_killed_build_are_replaced(make_source, tmp_path):
    make_source().load()
    (folder,) = cache_folders(tmp_path / "cache")
    (folder / MANIFEST_FILE).unlink()  # as if killed before the manifest was written
    leftover = folder.with_name(f".{folder.name}.tmp-999999-deadbeef")
    leftover.mkdir()
    activation_cache.forget_memory()
    source = make_source()
    source.load()
    assert source.cached.built and not leftover.exists()
    assert (folder / MANIFEST_FILE).is_file()


RACER = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from saeseeds.activations.corpora import PythonDocsCorpus
from saeseeds.activations.text import TextActivationSource
from saeseeds.activations import models
source = TextActivationSource(
    model={{"name": "local", "path": {model!r}, "forward_batch_size": 8}},
    hook={{"point": "resid_pre", "layer": 1, "name": "blocks.1.hook_resid_pre"}},
    corpus=PythonDocsCorpus(), seq_len=32, n_tokens=4096, batch_size=256,
    cache_dir={cache!r}, model_cache_dir={cache!r})
models.load_model(source.model_config, source.model_cache_dir)  # the slow part, before the race
PythonDocsCorpus().identity()
Path(sys.argv[1]).touch()
while not Path({go!r}).exists():
    time.sleep(0.01)
splits = source.load()
print(json.dumps({{"built": source.cached.built, "key": source.cached.key,
                   "sum": float(splits.train.double().sum())}}))
"""


def test_two_processes_racing_end_with_one_valid_cache(tiny_llama, tmp_path):
    cache, go = tmp_path / "cache", tmp_path / "go"
    script = tmp_path / "racer.py"
    script.write_text(
        RACER.format(repo=str(REPO_ROOT), model=str(tiny_llama), cache=str(cache), go=str(go))
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    racers = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / f"ready{i}")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    deadline = time.time() + 180
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
        assert time.time() < deadline and all(r.poll() is None for r in racers), [
            r.communicate()[1][-2000:] for r in racers if r.poll() is not None
        ]
        time.sleep(0.05)
    go.touch()  # both call load() now
    results = []
    for racer in racers:
        stdout, stderr = racer.communicate(timeout=180)
        assert racer.returncode == 0, stderr[-3000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    assert sorted(r["built"] for r in results) == [False, True]  # one built, the other waited
    assert results[0]["key"] == results[1]["key"] and results[0]["sum"] == results[1]["sum"]
    (folder,) = cache_folders(cache)
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp left
    activation_cache.forget_memory()
    cached, problem = activation_cache._read(folder, results[0]["key"])
    assert cached is not None, problem
    assert Path(folder.parent / f"{folder.name}.lock").exists()
