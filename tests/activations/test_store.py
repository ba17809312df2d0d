"""The activation store: built once and then read; one store for every budget (a smaller one reads
a prefix, a larger one extends it); a damaged shard named, set aside and rebuilt alone; shared
safely by racing processes; inspected and verified from the command line."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from saeseeds.activations import models
from saeseeds.activations.shards import RowStats
from saeseeds.activations.store import (
    CORRUPT_DIR,
    HELDOUT_FILE,
    MANIFEST_FILE,
    ActivationStore,
    main,
    shard_path,
    stats_path,
    store_key,
)
from saeseeds.activations.store_build import ensure_store
from saeseeds.errors import DataError, OutputError
from tests.helpers import REPO_ROOT, store_folders


def count_sequences(source) -> list[int]:
    """Sequences the source's model runs forward (a hook on its embedding)."""
    model = models.load_model(source.model_config, source.model_cache_dir)
    sequences: list[int] = []
    model.bridge.embed.register_forward_hook(
        lambda module, inputs, output: sequences.append(output.shape[0])
    )
    return sequences


def training_rows(splits) -> torch.Tensor:
    return torch.cat([splits.train.read(i) for i in range(splits.train.n_shards)])


def store_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix == ".safetensors"}


def test_store_is_built_once_then_read(make_source, tmp_path):
    first = make_source()
    forwards = count_sequences(first)
    built = first.load()
    assert sum(forwards) > 0 and built.provenance["activation_store_hit"] is False
    (folder,) = store_folders(tmp_path / "cache")
    names = {p.name for p in folder.iterdir()}
    assert names == {
        MANIFEST_FILE,
        HELDOUT_FILE,
        *(f"shard-{i:06d}.safetensors" for i in range(4)),
        *(f"shard-{i:06d}.stats.safetensors" for i in range(4)),
    }  # no lock file and no temporary file is left behind
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert manifest["key"] == built.provenance["activation_store_key"]
    assert manifest["dtype"] == "float16" and manifest["rows_per_shard"] == 512
    assert "n_tokens" not in json.dumps(manifest["key_fields"])  # one store for every budget
    assert sorted(manifest["shards"]) == ["0", "1", "2", "3"]

    forwards.clear()
    second = make_source()
    read = second.load()
    assert forwards == [] and read.provenance["activation_store_hit"] is True
    assert torch.equal(training_rows(read), training_rows(built))
    assert torch.equal(read.heldout, built.heldout)


def test_budgets_share_one_store_a_smaller_reads_a_prefix_a_larger_extends_it(
    make_source, tmp_path
):
    full = make_source(n_tokens=2048)
    rows_2048 = training_rows(full.load())
    (folder,) = store_folders(tmp_path / "cache")
    before = store_files(folder)

    smaller = make_source(n_tokens=1000)
    forwards = count_sequences(smaller)
    rows_1000 = training_rows(smaller.load())
    assert forwards == [] and torch.equal(rows_1000, rows_2048[:1000])

    larger = make_source(n_tokens=3072)
    forwards = count_sequences(larger)
    rows_3072 = training_rows(larger.load())
    assert store_folders(tmp_path / "cache") == [folder]
    assert torch.equal(rows_3072[:2048], rows_2048)
    # Only shards 4 and 5 were computed (512 rows each: 17 sequences of 31 kept rows per shard).
    assert 2 * 17 <= sum(forwards) <= 2 * 18
    after = store_files(folder)
    assert {name: after[name] for name in before} == before  # nothing rewritten


def test_shards_built_in_any_order_or_process_are_the_bytes_of_a_serial_build(
    make_source, tmp_path
):
    """Shard i depends only on (key, i): ranges built separately, in reverse, match one pass."""
    make_source(cache_dir=str(tmp_path / "serial")).load()
    (serial,) = store_folders(tmp_path / "serial")
    for part in (range(2, 4), range(0, 2)):  # as two parts of a parallel build would
        source = make_source(cache_dir=str(tmp_path / "parts"))
        ensure_store(source.cache_dir, source.builder(), source.n_tokens, part)
    (parts,) = store_folders(tmp_path / "parts")
    assert store_files(parts) == store_files(serial) and len(store_files(serial)) == 9


def test_a_full_disk_names_the_store_and_leaves_no_lock_and_no_partial_shard(
    make_source, tmp_path, monkeypatch
):
    from saeseeds import io

    real_replace = os.replace

    def disk_full_for_shards(source, target):
        if "shard-000001" in str(target):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(source))
        return real_replace(source, target)

    monkeypatch.setattr(io.os, "replace", disk_full_for_shards)
    with pytest.raises(OutputError, match=r"activation store .*: cannot write .*shard-000001"):
        make_source().load()
    monkeypatch.undo()
    (folder,) = store_folders(tmp_path / "cache")
    left = sorted(p.name for p in folder.parent.rglob("*"))
    assert not [name for name in left if name.endswith((".lock", ".tmp"))], left
    assert ActivationStore(folder).n_shards == 1 and not shard_path(folder, 1).exists()
    assert len(training_rows(make_source().load())) == 2048  # the next job completes it


def test_everything_that_changes_activations_changes_the_key(make_source):
    def key(**overrides) -> str:
        return store_key(make_source(**overrides).builder().key_fields)  # builds nothing

    keys = {
        key(),
        key(layer=0),
        key(hook_point="mlp_out"),
        key(seq_len=16),
        key(drop_first_position=False),
        key(store_dtype="bfloat16"),
        key(shard_tokens=256),
        key(heldout_tokens=400),
        key(split_seed=1),
        key(model={"init": "random"}),
    }
    assert len(keys) == 10
    assert key(n_tokens=1024, batch_size=128) == key()  # one store for every budget


def test_a_corrupt_shard_is_named_set_aside_and_rebuilt_alone(make_source, tmp_path):
    original = training_rows(make_source().load())
    (folder,) = store_folders(tmp_path / "cache")
    shard = shard_path(folder, 2)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte among the activations
    shard.write_bytes(bytes(data))

    splits = make_source().load()  # the size is right: job start does not read every byte
    with pytest.raises(DataError, match=r"shard-000002.safetensors is corrupt \(sha256 mismatch\)"):
        training_rows(splits)
    assert not shard.exists() and len(list((folder / CORRUPT_DIR).iterdir())) == 2

    rebuilt = make_source()
    forwards = count_sequences(rebuilt)
    splits = rebuilt.load()
    assert torch.equal(training_rows(splits), original)
    assert 17 <= sum(forwards) <= 18  # one shard's sequences
    assert splits.provenance["activation_store_hit"] is False


def test_a_shard_is_hashed_when_first_read_and_again_once_its_file_changes(make_source):
    splits = make_source(n_tokens=1300).load()  # shards 0, 1 and 276 rows of shard 2
    store = splits.train.shards
    rows = torch.empty(276, 64, dtype=store.dtype)
    splits.train.read_into(2, rows)  # read straight into a window's rows, the file hashed whole
    assert torch.equal(rows, store.read(2)[:276])
    shard = shard_path(store.folder, 2)
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # past the rows the prefix uses
    restored = shard.with_name("restored")
    restored.write_bytes(bytes(data))
    restored.replace(shard)  # a copy put back in its place
    with pytest.raises(DataError, match=r"shard-000002.safetensors is corrupt \(sha256 mismatch\)"):
        splits.train.read_into(2, rows)


def test_a_later_job_of_the_process_reads_a_verified_shard_without_hashing_it(
    make_source, monkeypatch
):
    # A sweep's jobs each open the store afresh; a shard whose file is unchanged since this
    # process checked its sha256 is not hashed again, and a replaced file is.
    real_sha256, hashed = hashlib.sha256, []
    monkeypatch.setattr(hashlib, "sha256", lambda *a: hashed.append(1) or real_sha256(*a))
    first, later = (make_source(n_tokens=1300).load().train for _ in range(2))
    assert first.shards is not later.shards
    rows = torch.empty(first.used_rows[1], 64, dtype=first.dtype)
    counted = len(hashed)
    first.read_into(1, rows)
    assert len(hashed) == counted + 1
    again = torch.empty_like(rows)
    later.read_into(1, again)
    assert len(hashed) == counted + 1 and torch.equal(again, rows)
    shard = shard_path(later.shards.folder, 1)
    status = shard.stat()
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    replaced = shard.with_name("replaced")
    replaced.write_bytes(bytes(data))
    os.utime(replaced, ns=(status.st_atime_ns, status.st_mtime_ns))  # only the inode tells
    replaced.replace(shard)  # another file (inode) in its place
    with pytest.raises(DataError, match=r"shard-000001.safetensors is corrupt \(sha256 mismatch\)"):
        later.read_into(1, again)


def test_a_shard_rewritten_in_place_with_its_mtime_set_back_is_hashed_again(make_source):
    # Same inode, same size, same mtime: only the change time, which no one can set back,
    # shows that the verified bytes are not the ones on disk now.
    train = make_source(n_tokens=1300).load().train
    rows = torch.empty(train.used_rows[1], 64, dtype=train.dtype)
    train.read_into(1, rows)  # verified, and remembered for the process
    shard = shard_path(train.shards.folder, 1)
    status = shard.stat()
    time.sleep(0.05)  # past the file system's clock tick, so the change time moves
    with open(shard, "r+b") as handle:
        handle.seek(-1, os.SEEK_END)
        last = handle.read(1)
        handle.seek(-1, os.SEEK_END)
        handle.write(bytes([last[0] ^ 0xFF]))
    os.utime(shard, ns=(status.st_atime_ns, status.st_mtime_ns))
    after = shard.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        status.st_ino,
        status.st_size,
        status.st_mtime_ns,
    )
    later = make_source(n_tokens=1300).load().train
    with pytest.raises(DataError, match=r"shard-000001.safetensors is corrupt \(sha256 mismatch\)"):
        later.read_into(1, rows)


def test_a_truncated_shard_is_rebuilt_when_a_job_starts(make_source, tmp_path, caplog):
    original = training_rows(make_source().load())
    (folder,) = store_folders(tmp_path / "cache")
    shard = shard_path(folder, 1)
    shard.write_bytes(shard.read_bytes()[:1000])
    source = make_source()
    forwards = count_sequences(source)
    assert torch.equal(training_rows(source.load()), original)
    assert 17 <= sum(forwards) <= 18
    assert "Shard 1 of" in caplog.text and "1000 bytes instead of" in caplog.text


def test_prefix_statistics_are_exact(make_source):
    """Mean, covariance and norms of any prefix, from per-shard stats plus the partial shard."""
    splits = make_source(n_tokens=1300).load()  # shards 0, 1 and 276 rows of shard 2
    rows = training_rows(splits)
    assert rows.shape == (1300, 64)
    stats = splits.train.stats(scatter=True)
    direct = RowStats.of(rows, scatter=True)
    assert stats.count == 1300
    assert torch.allclose(stats.mean, rows.double().mean(0), atol=1e-9)
    assert torch.allclose(stats.covariance(), torch.cov(rows.double().T), atol=1e-9)
    assert stats.squared_norms == pytest.approx(direct.squared_norms, rel=1e-12)


def test_inspect_and_verify_from_the_command_line(make_source, tmp_path, capsys):
    make_source().load()
    (folder,) = store_folders(tmp_path / "cache")
    assert main(["inspect", str(folder)]) == 0  # python -m saeseeds.activations.store inspect
    summary = json.loads(capsys.readouterr().out)
    assert (summary["train_tokens"], summary["shards"], summary["dtype"]) == (2048, 4, "float16")
    assert summary["bytes_on_disk"] > 4 * 512 * 64 * 2 and summary["provenance"]["model_name"]

    assert main(["verify", str(folder)]) == 0 and capsys.readouterr().out.endswith(": OK\n")
    stats = stats_path(folder, 3)
    shard = shard_path(folder, 3)
    before = shard.stat()
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    # The same file, size and modification time as when this process last hashed it: verify
    # still reads every byte.
    os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert main(["verify", str(folder)]) == 1
    assert "shard-000003.safetensors is corrupt" in capsys.readouterr().out
    assert shard.exists() and stats.exists()  # verify without --repair only reports
    assert main(["verify", "--repair", str(folder)]) == 1 and not shard.exists()
    assert ActivationStore(folder).n_shards == 3


def test_verify_names_a_missing_or_truncated_shard_before_the_last(make_source, tmp_path, capsys):
    """Opening a store stops at the first shard of the wrong size; verify still reports it,
    and every damaged shard after it."""
    make_source().load()
    (folder,) = store_folders(tmp_path / "cache")
    truncated = shard_path(folder, 1)
    truncated.write_bytes(truncated.read_bytes()[:1000])
    shard_path(folder, 2).unlink()
    assert main(["verify", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "shard 1 is damaged (1000 bytes instead of" in out
    assert "shard 2 is damaged (missing)" in out and out.endswith(": 2 problem(s)\n")
    assert truncated.exists()  # verify without --repair only reports
    assert main(["verify", "--repair", str(folder)]) == 1
    capsys.readouterr()
    assert not truncated.exists() and len(list((folder / CORRUPT_DIR).iterdir())) >= 2


RACER = """
import json, sys, time
from pathlib import Path
from saeseeds.activations.corpora import PythonDocsCorpus
from saeseeds.activations.text import TextActivationSource
from saeseeds.activations import models
source = TextActivationSource(
    model={{"name": "local", "path": {model!r}, "forward_batch_size": 8}},
    hook={{"point": "resid_pre", "layer": 1, "name": "blocks.1.hook_resid_pre"}},
    corpus=PythonDocsCorpus(), seq_len=32, n_tokens=2048, heldout_tokens=200, batch_size=256,
    shard_tokens=512, cache_dir={cache!r}, model_cache_dir={cache!r})
models.load_model(source.model_config, source.model_cache_dir)  # the slow part, before the race
PythonDocsCorpus().identity()
Path(sys.argv[1]).touch()
while not Path({go!r}).exists():
    time.sleep(0.01)
splits = source.load()
rows = torch.cat([splits.train.read(i) for i in range(splits.train.n_shards)])
print(json.dumps({{"hit": source.store_hit, "key": source.store_key,
                   "sum": float(rows.double().sum())}}))
""".replace("import json, sys, time", "import json, sys, time\nimport torch")


def test_two_processes_racing_end_with_one_valid_store(tiny_llama, tmp_path):
    cache, go = tmp_path / "cache", tmp_path / "go"
    script = tmp_path / "racer.py"
    script.write_text(RACER.format(model=str(tiny_llama), cache=str(cache), go=str(go)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    racers = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / f"ready{i}")],
            env=env,
            cwd=REPO_ROOT,
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
    assert sorted(r["hit"] for r in results) == [False, True]  # one built, the other waited
    assert results[0]["key"] == results[1]["key"] and results[0]["sum"] == results[1]["sum"]
    (folder,) = store_folders(cache)
    leftovers = [p.name for p in folder.parent.iterdir() if p.name.endswith(".lock")]
    leftovers += [p.name for p in folder.iterdir() if p.suffix in (".lock", ".tmp")]
    assert leftovers == []
    assert ActivationStore(folder).n_shards == 4
