"""A user's own activations file: both formats in their own dtype, read a shard at a time, a fixed
held-out split, the file hashed once per version, and clear errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from saeseeds.activations import file as file_source
from saeseeds.activations.file import ActivationFileSource
from saeseeds.errors import DataError
from saeseeds.training.run import train


def source(path, **overrides) -> ActivationFileSource:
    arguments = dict(
        path=str(path),
        key=None,
        n_tokens=None,
        heldout_tokens=100,
        batch_size=64,
        split_seed=0,
        shard_tokens=128,
        cache_dir=str(path.parent / "cache"),
    )
    return ActivationFileSource(**{**arguments, **overrides})


@pytest.fixture
def activations() -> torch.Tensor:
    return torch.randn(1000, 12, generator=torch.Generator().manual_seed(0))


def all_training_rows(splits) -> torch.Tensor:
    return torch.cat([splits.train.read(i) for i in range(splits.train.n_shards)])


@pytest.mark.parametrize(
    ("suffix", "dtype"),
    [(".npy", torch.float32), (".npy", torch.float16), (".safetensors", torch.bfloat16)],
)
def test_reads_both_formats_in_their_dtype_with_a_disjoint_fixed_split(
    tmp_path, activations, suffix, dtype
):
    path = tmp_path / f"acts{suffix}"
    stored = activations.to(dtype)
    if suffix == ".npy":
        np.save(path, stored.numpy())
    else:
        save_file({"acts": stored}, path)
    splits = source(path).load()
    train = all_training_rows(splits)
    assert train.dtype == dtype and splits.train.dtype == dtype  # no float32 copy of the file
    assert train.shape == (900, 12) and splits.heldout.shape == (100, 12)
    assert splits.train.n_shards == 8 and splits.train.used_rows[-1] == 900 - 7 * 128
    heldout = splits.heldout.to(dtype)
    rows = {tuple(row.tolist()) for row in stored}
    train_rows = {tuple(row.tolist()) for row in train}
    heldout_rows = {tuple(row.tolist()) for row in heldout}
    assert train_rows | heldout_rows == rows and not train_rows & heldout_rows
    # The training rows keep the file's order (shards are contiguous blocks of it).
    kept = torch.ones(1000, dtype=torch.bool)
    positions = [i for i, row in enumerate(stored.tolist()) if tuple(row) in heldout_rows]
    kept[positions] = False
    assert torch.equal(train, stored[kept])
    assert torch.equal(source(path).load().heldout, splits.heldout)  # the split is seed-free
    identity = splits.provenance["data_identity"]
    assert len(identity["file_sha256"]) == 64 and identity["kind"] == "activation_file"
    assert splits.provenance["file_sha256"] == identity["file_sha256"]


def test_the_file_is_hashed_once_per_version(tmp_path, activations, monkeypatch):
    path = tmp_path / "acts.npy"
    np.save(path, activations.numpy())
    scans = []
    real_scan = file_source.scan
    monkeypatch.setattr(file_source, "scan", lambda matrix: scans.append(1) or real_scan(matrix))
    first = source(path).file_sha256
    assert source(path).file_sha256 == first and len(scans) == 1  # remembered
    np.save(path, (activations + 1).numpy())  # a new version of the file: hashed again
    os.utime(path, ns=(1, 1))
    assert source(path).file_sha256 != first and len(scans) == 2


def test_token_budget_and_named_key(tmp_path, activations):
    path = tmp_path / "acts.safetensors"
    save_file({"a": activations, "b": activations[:, :4].contiguous()}, path)
    with pytest.raises(DataError, match=r"holds tensors \['a', 'b'\]; choose one with data.key"):
        source(path)
    splits = source(path, key="b", n_tokens=256).load()
    assert len(splits.train) == 256 and splits.d_in == 4 and splits.train.n_shards == 2
    with pytest.raises(DataError, match="data.key='c' is not in"):
        source(path, key="c")
    with pytest.raises(DataError, match="data.n_tokens=5000 exceeds the 900 training rows"):
        source(path, key="a", n_tokens=5000)
    with pytest.raises(DataError, match="data.heldout_tokens=1000 leaves no training rows"):
        source(path, key="a", heldout_tokens=1000)


def test_bad_files_fail_early_with_the_path(tmp_path, activations):
    with pytest.raises(DataError, match="no such activations file"):
        source(tmp_path / "missing.npy")
    with pytest.raises(DataError, match="activation files must be one of"):
        source(tmp_path / "acts.csv")
    truncated = tmp_path / "truncated.safetensors"
    save_file({"acts": activations}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(DataError, match="Cannot read activations from .*truncated.safetensors"):
        source(truncated)
    cut = tmp_path / "cut.npy"
    np.save(cut, activations.numpy())
    cut.write_bytes(cut.read_bytes()[:-100])
    with pytest.raises(DataError, match="cut.npy: the file is truncated"):
        source(cut)
    vector = tmp_path / "vector.npy"
    np.save(vector, np.zeros(10, dtype=np.float32))
    with pytest.raises(DataError, match=r"shape \(10,\); expected a non-empty \[n_tokens, d_in\]"):
        source(vector)
    pickled = tmp_path / "objects.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="Cannot read activations.*pickled arrays are never"):
        source(pickled)  # never unpickled
    fortran = tmp_path / "fortran.npy"
    np.save(fortran, np.asfortranarray(activations.numpy()))
    with pytest.raises(DataError, match="Fortran .* order; save it C-ordered"):
        source(fortran)
    integers = tmp_path / "integers.npy"
    np.save(integers, np.zeros((200, 4), dtype=np.int32))
    with pytest.raises(DataError, match="holds <i4 values; expected little-endian floating"):
        source(integers)
    nans = tmp_path / "nans.npy"
    np.save(nans, np.full((200, 4), np.nan, dtype=np.float32))
    with pytest.raises(DataError, match="NaN or infinite"):
        source(nans)
    small = tmp_path / "small.npy"
    np.save(small, activations[:150].numpy())
    with pytest.raises(DataError, match=r"smaller than one batch \(data.batch_size=64\)"):
        source(small)


def test_trains_on_a_users_activation_file(tmp_path, activations, train_config):
    path = tmp_path / "acts.npy"
    np.save(path, activations.numpy().astype(np.float16))
    cfg = train_config(
        "data=activations",
        f"data.path={path}",
        "data.batch_size=100",
        "data.heldout_tokens=100",
        "data.shard_tokens=256",
        "data.window_shards=2",
        f"paths.cache_dir={tmp_path / 'cache'}",
    )
    metrics = train(cfg)
    assert metrics["steps"] == 2 * (900 // 100)
    assert 0 < metrics["fvu"] < 1
