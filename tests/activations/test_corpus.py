"""Corpora: the embedded Python docs, local .txt/.jsonl files with clear errors for bad ones, and
packing into BOS-prefixed sequences with a fixed held-out split."""

from __future__ import annotations

import json
import os

import pytest
import torch
from transformers import AutoTokenizer

from saeseeds.activations.corpora import (
    PythonDocsCorpus,
    TextFilesCorpus,
    pack_sequences,
    python_docs_texts,
)
from saeseeds.errors import DataError


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    return AutoTokenizer.from_pretrained(tiny_llama)


def test_embedded_corpus_is_real_text_with_a_stable_identity():
    texts = python_docs_texts(True)
    assert sum(map(len, texts)) > 1_000_000  # topics (~465k chars) + stdlib docstrings
    assert any("assert" in text and "AssertionError" in text for text in texts)
    first, again = PythonDocsCorpus().identity(), PythonDocsCorpus().identity()
    assert first == again and first["kind"] == "python_docs"
    assert PythonDocsCorpus(docstrings=False).identity()["sha256"] != first["sha256"]


def test_text_and_jsonl_files_give_their_documents(tmp_path):
    (tmp_path / "a.txt").write_text("First document.\n")
    records = [{"text": "Second."}, {"text": "Third.", "id": 3}]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    corpus = TextFilesCorpus([str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")])
    assert list(corpus.documents()) == ["First document.\n", "Second.", "Third."]
    assert list(TextFilesCorpus([str(tmp_path)]).documents()) == list(corpus.documents())
    before = corpus.identity()
    (tmp_path / "a.txt").write_text("Changed.\n")
    assert (
        TextFilesCorpus([str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")]).identity() != before
    )


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.txt", None, "does not exist"),
        ("empty.txt", b"", "is empty"),
        ("blank.txt", b" \n\n\t", "is empty"),
        ("latin1.txt", "caf\u00e9".encode("latin-1"), "is not UTF-8"),
        ("bad.jsonl", b'{"text": "ok"}\n{not json\n', "bad.jsonl:2 is not valid JSON"),
        ("field.jsonl", b'{"body": "no text field"}\n', "no text field 'text'"),
        ("notes.md", b"# markdown", "not a .txt or .jsonl"),
    ],
)
def test_bad_corpus_files_are_named_in_the_error(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message) as error:
        TextFilesCorpus([str(path)]).check()
    assert name in str(error.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file_is_reported(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text("hidden")
    path.chmod(0)
    with pytest.raises(DataError, match="secret.txt.*cannot be read"):
        TextFilesCorpus([str(path)]).check()


def test_sequences_start_with_bos_and_split_disjointly(tokenizer):
    sequences = pack_sequences(
        PythonDocsCorpus(),
        tokenizer,
        seq_len=16,
        n_train=40,
        n_heldout=8,
        prepend_bos=True,
        split_seed=0,
    )
    assert sequences.train.shape == (40, 16) and sequences.heldout.shape == (8, 16)
    assert (sequences.train[:, 0] == tokenizer.bos_token_id).all()
    assert (sequences.heldout[:, 0] == tokenizer.bos_token_id).all()
    train_rows = {tuple(row) for row in sequences.train.tolist()}
    assert not train_rows & {tuple(row) for row in sequences.heldout.tolist()}
    again = pack_sequences(PythonDocsCorpus(), tokenizer, 16, 40, 8, True, 0)
    assert torch.equal(again.train, sequences.train)  # fixed by split_seed
    other = pack_sequences(PythonDocsCorpus(), tokenizer, 16, 40, 8, True, 1)
    assert not torch.equal(other.train, sequences.train)


def test_too_small_corpus_says_how_many_tokens_it_has(tmp_path, tokenizer):
    path = tmp_path / "short.txt"
    path.write_text("Only a few words here.")
    with pytest.raises(DataError, match="The corpus has .* tokens, fewer than"):
        pack_sequences(TextFilesCorpus([str(path)]), tokenizer, 32, 10, 2, True, 0)


@pytest.mark.slow
def test_embedded_corpus_has_over_100k_smollm2_tokens(tmp_path):
    from saeseeds.activations import models

    embedded = models.EMBEDDED_MODELS["smollm2-135m"]
    folder = models._converted_folder("smollm2-135m", embedded, "~/.cache/saeseeds")
    smollm2 = AutoTokenizer.from_pretrained(folder)
    topics = python_docs_texts(False)
    n_topic_tokens = sum(len(ids) for ids in smollm2(list(topics))["input_ids"])
    assert n_topic_tokens > 100_000  # the pydoc topics alone; docstrings add about 180k
