"""The text activation source: shapes and provenance, early errors, the CE-loss score bounds and
top activating examples that are real corpus text."""

from __future__ import annotations

import pytest
import torch

from saeseeds.activations.corpora import TextFilesCorpus, python_docs_texts
from saeseeds.errors import DataError
from tests.helpers import store_folders

REQUIRED_PROVENANCE = (
    "model_name",
    "hook_name",
    "dtype",
    "model_weight_hash",
    "activation_store_key",
    "data_identity",
)


def test_splits_have_the_budget_and_drop_the_first_position(make_source):
    source = make_source()
    splits = source.load()
    assert len(splits.train) == 2048 and splits.d_in == 64 and splits.train.n_shards == 4
    assert splits.train.dtype == torch.float16 and splits.heldout.dtype == torch.float32
    assert splits.train.read(0).shape == (512, 64)
    # heldout_tokens=200 is 7 whole sequences of 31 kept positions (32, BOS dropped)
    assert len(source.heldout_token_ids) == 7 and splits.heldout.shape == (7 * 31, 64)
    assert all(splits.provenance[key] for key in REQUIRED_PROVENANCE)
    assert splits.provenance["n_train_tokens"] == 2048
    identity = splits.provenance["data_identity"]
    assert identity["activation_store_key"] == splits.provenance["activation_store_key"]
    assert identity["corpus"]["sha256"] and identity["model_weight_hash"]
    kept_all = make_source(drop_first_position=False, heldout_tokens=256)
    assert kept_all.load().heldout.shape[0] == len(kept_all.heldout_token_ids) * 32 == 256


def test_token_budget_smaller_than_one_batch_is_rejected(make_source):
    with pytest.raises(DataError, match="n_tokens=100 is smaller than one batch"):
        make_source(n_tokens=100, batch_size=256)


def test_seq_len_beyond_the_model_context_is_rejected_before_any_work(make_source, tmp_path):
    source = make_source(seq_len=512)
    with pytest.raises(
        DataError, match=r"seq_len=512 is longer than the context of .* \(128 tokens\)"
    ):
        source.load()
    assert source.model is None and not store_folders(tmp_path / "cache")


def test_hook_layer_out_of_range_is_rejected_before_loading(make_source, tmp_path):
    source = make_source(layer=9)
    with pytest.raises(DataError, match="valid layers are 0 to 1"):
        source.load()
    assert source.model is None and not store_folders(tmp_path / "cache")


def test_missing_corpus_file_is_rejected_before_loading(make_source, tmp_path):
    source = make_source(corpus=TextFilesCorpus([str(tmp_path / "nope.txt")]))
    with pytest.raises(DataError, match="nope.txt' does not exist"):
        source.load()
    assert source.model is None


def test_local_text_files_work_end_to_end(make_source, tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("\n\n".join(python_docs_texts(False)[:20]))
    splits = make_source(corpus=TextFilesCorpus([str(path)])).load()
    assert splits.provenance["corpus"]["kind"] == "text_files"
    assert len(splits.train) == 2048 and splits.d_in == 64
