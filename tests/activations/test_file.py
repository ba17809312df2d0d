"""A user's own activations file: both formats, a fixed held-out split, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from saeseeds.activations.file import ActivationFileSource
from saeseeds.errors import DataError
from saeseeds.training.run import train


def source(path, **overrides) -> ActivationFileSource:
    arguments = dict(
        path=str(path), key=None, n_tokens=None, heldout_fraction=0.1, batch_size=64, split_seed=0
    )
    return ActivationFileSource(**{**arguments, **overrides})


@pytest.fixture
def activations() -> torch.Tensor:
    return torch.randn(1000, 12, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_reads_both_formats_with_a_disjoint_fixed_split(tmp_path, activations, suffix):
    path = tmp_path / f"acts{suffix}"
    if suffix == ".npy":
        np.save(path, activations.numpy())
    else:
        save_file({"acts": activations}, path)
    splits = source(path).load()
    assert splits.train.shape == (900, 12) and splits.heldout.shape == (100, 12)
    rows = {tuple(row.tolist()) for row in activations}
    train_rows = {tuple(row.tolist()) for row in splits.train}
    heldout_rows = {tuple(row.tolist()) for row in splits.heldout}
    assert train_rows | heldout_rows == rows and not train_rows & heldout_rows
    assert torch.equal(source(path).load().heldout, splits.heldout)  # split is seed-free
    assert len(splits.provenance["file_sha256"]) == 64


def test_token_budget_and_named_key(tmp_path, activations):
    path = tmp_path / "acts.safetensors"
    save_file({"a": activations, "b": activations[:, :4].contiguous()}, path)
    with pytest.raises(DataError, match=r"holds tensors \['a', 'b'\]; choose one with data.key"):
        source(path)
    assert source(path, key="b", n_tokens=256).load().train.shape == (256, 4)
    with pytest.raises(DataError, match="data.key='c' is not in"):
        source(path, key="c")
    with pytest.raises(DataError, match="data.n_tokens=5000 exceeds the 900 training rows"):
        source(path, key="a", n_tokens=5000)


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
    vector = tmp_path / "vector.npy"
    np.save(vector, np.zeros(10, dtype=np.float32))
    with pytest.raises(DataError, match=r"shape \(10,\); expected a non-empty \[n_tokens, d_in\]"):
        source(vector)
    pickled = tmp_path / "objects.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="Cannot read activations"):
        source(pickled)  # never unpickled
    nans = tmp_path / "nans.npy"
    np.save(nans, np.full((100, 4), np.nan, dtype=np.float32))
    with pytest.raises(DataError, match="NaN or infinite"):
        source(nans)
    small = tmp_path / "small.npy"
    np.save(small, activations[:50].numpy())
    with pytest.raises(DataError, match=r"smaller than one batch \(data.batch_size=64\)"):
        source(small)


def test_trains_on_a_users_activation_file(tmp_path, activations, train_config):
    path = tmp_path / "acts.npy"
    np.save(path, activations.numpy())
    cfg = train_config("data=activations", f"data.path={path}", "data.batch_size=100")
    metrics = train(cfg)
    assert metrics["steps"] == 2 * (900 // 100)
    assert 0 < metrics["fvu"] < 1
