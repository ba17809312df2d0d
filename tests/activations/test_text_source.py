"""The text activation source: shapes and provenance, early errors, the CE-loss score bounds and
top activating examples that are real corpus text."""

from __future__ import annotations

import pytest
import torch

from saeseeds.corpus import TextFilesCorpus, python_docs_texts
from saeseeds.data.base import DataError
from saeseeds.data.text import MARKER, TOP_EXAMPLES_FORMAT
from tests.activations.conftest import cache_folders
from tests.tiny_lm import EOS

REQUIRED_PROVENANCE = (
    "model_name",
    "hook_name",
    "dtype",
    "model_weight_hash",
    "activation_cache_key",
)


def test_splits_have_the_budget_and_drop_the_first_position(make_source):
    source = make_source()
    splits = source.load()
    assert splits.train.shape == (2048, 64) and splits.train.dtype == torch.float32
    n_heldout_sequences = len(source.cached.tensors["heldout_tokens"])
    assert splits.heldout.shape == (n_heldout_sequences * 31, 64)  # 32 positions, BOS dropped
    assert all(splits.provenance[key] for key in REQUIRED_PROVENANCE)
    assert splits.provenance["n_train_tokens"] == 2048
    kept_all = make_source(drop_first_position=False)
    assert kept_all.load().heldout.shape[0] == len(kept_all.cached.tensors["heldout_tokens"]) * 32


def test_token_budget_smaller_than_one_batch_is_rejected(make_source):
    with pytest.raises(DataError, match="n_tokens=100 is smaller than one batch"):
        make_source(n_tokens=100, batch_size=256)


def test_seq_len_beyond_the_model_context_is_rejected_before_any_work(make_source, tmp_path):
    source = make_source(seq_len=512)
    with pytest.raises(
        DataError, match=r"seq_len=512 is longer than the context of .* \(128 tokens\)"
    ):
        source.load()
    assert source.model is None and not cache_folders(tmp_path / "cache")


def test_hook_layer_out_of_range_is_rejected_before_loading(make_source, tmp_path):
    source = make_source(layer=9)
    with pytest.raises(DataError, match="valid layers are 0 to 1"):
        source.load()
    assert source.model is None and not cache_folders(tmp_path / "cache")


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
    assert splits.train.shape == (2048, 64)


def test_ce_loss_score_is_one_for_identity_and_zero_for_zeros(make_source):
    source = make_source()
    source.load()
    perfect = source.evaluate(lambda x: x)
    zero = source.evaluate(torch.zeros_like)
    assert perfect["ce_loss_score"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["kl_div"] == pytest.approx(0.0, abs=1e-6)
    assert zero["ce_loss_score"] == pytest.approx(0.0, abs=1e-6)
    assert zero["ce_sae"] == pytest.approx(zero["ce_zero_ablation"])
    assert zero["ce_zero_ablation"] > zero["ce_clean"] and zero["kl_div"] > 0
    noisy = source.evaluate(lambda x: x + 0.3 * x.std() * torch.randn_like(x))
    assert noisy["kl_div"] > 0 and noisy["ce_clean"] == perfect["ce_clean"]


def test_top_examples_are_marked_contexts_from_the_corpus(make_source):
    source = make_source()
    splits = source.load()
    directions = torch.randn(64, 48, generator=torch.Generator().manual_seed(0))
    top = source.top_examples(lambda x: torch.relu(x @ directions), n_examples=3)
    assert top["format"] == TOP_EXAMPLES_FORMAT and top["marker"] == list(MARKER)
    assert top["features"] and all(key.isdigit() for key in top["features"])
    corpus = "".join(python_docs_texts(True))
    heldout_latents = torch.relu(splits.heldout @ directions)
    for feature, examples in top["features"].items():
        values = [example["activation"] for example in examples]
        assert values == sorted(values, reverse=True) and len(examples) <= 3 and values[0] > 0
        assert values[0] == pytest.approx(float(heldout_latents[:, int(feature)].max()), rel=1e-3)
        for example in examples:
            marked = MARKER[0] + example["token"] + MARKER[1]
            assert marked in example["text"]
            plain = example["text"].replace(marked, example["token"], 1)
            for piece in plain.split(EOS):  # contexts may cross a document boundary
                assert piece in corpus
    never_fires = source.top_examples(lambda x: torch.zeros(len(x), 8), n_examples=3)
    assert never_fires["features"] == {}


def test_evaluate_needs_load_first(make_source):
    with pytest.raises(RuntimeError, match="Call load"):
        make_source().evaluate(lambda x: x)
