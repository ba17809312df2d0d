"""Corpora: the embedded Python docs and Python source, local .txt/.jsonl files with clear errors
for bad ones, and the cut into BOS-prefixed sequences with a held-out split that no budget moves."""

from __future__ import annotations

import ast
import json
import os
import sysconfig
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from saeseeds.activations import corpora
from saeseeds.activations import sequences as sequence_module
from saeseeds.activations.corpora import (
    PythonDocsCorpus,
    PythonSourceCorpus,
    TextFilesCorpus,
    python_docs_texts,
    python_source_files,
)
from saeseeds.activations.sequences import SequenceStream
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


class CountingCorpus(corpora.Corpus):
    """A corpus made from files taken as installed ones; the class counts the computations of
    its identity (its options are its attributes: the record is keyed by them)."""

    computed = 0

    def __init__(self, files: list[Path], doubled: bool = False):
        self.files, self.doubled = files, doubled

    def identity(self) -> dict:
        CountingCorpus.computed += 1
        texts = [path.read_text() for path in self.files]
        return {"kind": "counting", "text": [text * 2 if self.doubled else text for text in texts]}

    def installed_files(self) -> tuple[Path, ...]:
        return tuple(self.files)


def _remember(corpus: corpora.Corpus, record_dir: Path) -> dict:
    corpora._REMEMBERED.clear()  # as a new process would
    return corpora.remembered_identity(corpus, record_dir)


def _rewrite_same_size(path: Path, text: str) -> None:
    """New content of the same size, with the old modification time put back (as ``cp -p`` or
    an installer unpacking an archive's timestamps would): only the inode or change time moves."""
    before = path.stat()
    assert len(text) == before.st_size
    replacement = path.with_name(path.name + ".new")
    replacement.write_text(text)
    os.utime(replacement, ns=(before.st_atime_ns, before.st_mtime_ns))
    replacement.replace(path)


class KeptCorpus(corpora.Corpus):
    """A corpus whose identity is kept for the process while its files are unchanged, as the
    embedded corpora's is (their text takes a second to extract)."""

    def __init__(self, files: list[Path]):
        self.files = files

    def identity(self) -> dict:
        files = tuple(self.files)
        return corpora.kept_while_unchanged(("kept", files), files, self._read)

    def _read(self) -> dict:
        return {"kind": "kept", "text": [path.read_text() for path in self.files]}

    def installed_files(self) -> tuple[Path, ...]:
        return tuple(self.files)


def test_files_changed_while_a_process_runs_are_remembered_with_their_new_identity(tmp_path):
    # A long sweep keeps a corpus's identity in memory; a package upgraded meanwhile must not
    # leave a record of the old identity under its new files, for every later process to trust.
    files = [tmp_path / "module.py"]
    files[0].write_text("old text")
    records = tmp_path / "model_cache"
    corpus = KeptCorpus(files)
    assert _remember(corpus, records)["text"] == ["old text"]
    _rewrite_same_size(files[0], "new text")
    assert corpus.identity()["text"] == ["new text"]  # not the value kept in memory
    assert _remember(corpus, records)["text"] == ["new text"]
    corpora._KEPT.clear()  # a later process reads the record
    assert _remember(corpus, records)["text"] == ["new text"]


def test_no_record_is_kept_when_a_file_changes_while_the_identity_is_computed(tmp_path):
    files = [tmp_path / "module.py"]
    files[0].write_text("text")

    class ChangingCorpus(CountingCorpus):
        def identity(self) -> dict:
            identity = super().identity()
            files[0].write_text("text changed by an install running beside us")
            return identity

    assert _remember(ChangingCorpus(files), tmp_path)["text"] == ["text"]
    assert not (tmp_path / corpora.IDENTITY_FOLDER).exists()


def test_an_installed_corpus_identity_is_computed_once_per_version_of_its_files(tmp_path, caplog):
    files = [tmp_path / "a.py", tmp_path / "b.py"]
    for path in files:
        path.write_text(f"text of {path.name}")
    records = tmp_path / "model_cache"
    corpus, CountingCorpus.computed = CountingCorpus(files), 0
    first = _remember(corpus, records)
    assert first == {"kind": "counting", "text": ["text of a.py", "text of b.py"]}
    assert corpus.computed == 1
    (record,) = (records / corpora.IDENTITY_FOLDER).iterdir()
    assert _remember(corpus, records) == first and corpus.computed == 1  # read from the record

    files[1].write_text("new text of b.py")  # another size and modification time
    assert _remember(corpus, records)["text"][1] == "new text of b.py"
    assert corpus.computed == 2
    assert _remember(CountingCorpus([files[0]]), records)["text"] == ["text of a.py"]  # files
    CountingCorpus.computed = 0
    _rewrite_same_size(files[1], "NEW TEXT OF B.PY")
    assert _remember(corpus, records)["text"][1] == "NEW TEXT OF B.PY"
    other_options = CountingCorpus(files, doubled=True)  # the same files, other options
    assert _remember(other_options, records)["text"][1] == "NEW TEXT OF B.PY" * 2
    assert CountingCorpus.computed == 2

    (record,) = [  # this version of the files' record
        path
        for path in (records / corpora.IDENTITY_FOLDER).iterdir()
        if json.loads(path.read_text())["identity"]["text"] == ["text of a.py", "NEW TEXT OF B.PY"]
    ]
    digest = json.loads(record.read_text())["facts_sha256"]
    damaged_records = [
        "not json",
        json.dumps({"facts_sha256": "x", "identity": {"kind": "counting"}}),
        json.dumps({"facts_sha256": digest, "identity": {}}),  # the right key, no identity
        "[]",
    ]
    for damaged in damaged_records:
        record.write_text(damaged)
        CountingCorpus.computed = 0
        assert _remember(corpus, records)["text"][1] == "NEW TEXT OF B.PY"
        assert corpus.computed == 1

    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the record folder would be")
    assert _remember(corpus, blocked)["text"][1] == "NEW TEXT OF B.PY"
    assert "Could not remember the corpus identity" in caplog.text


def test_the_embedded_corpora_are_remembered_with_their_own_identity(tmp_path, monkeypatch):
    for corpus in (PythonDocsCorpus(), PythonDocsCorpus(docstrings=False), PythonSourceCorpus()):
        assert _remember(corpus, tmp_path) == corpus.identity()
    assert len(list((tmp_path / corpora.IDENTITY_FOLDER).iterdir())) == 3

    def not_again(self):
        raise AssertionError("the identity was computed again")

    monkeypatch.setattr(PythonDocsCorpus, "identity", not_again)
    remembered = _remember(PythonDocsCorpus(), tmp_path)
    assert remembered["kind"] == "python_docs" and remembered["docstrings"] is True


LONG = "A docstring long enough to be kept as prose. " * 6


def test_docstrings_come_in_ast_walk_order(tmp_path):
    """The docstring walk skips expressions but keeps ``ast.walk``'s order, on which the embedded
    corpus's text, and so every store key built from it, depends: the standard library and a
    file with definitions nested in every kind of statement give what ``ast.walk`` gives."""
    nested = tmp_path / "nested.py"
    nested.write_text(
        f'''"""{LONG}module"""
def outer():
    """{LONG}outer"""
    try:
        def in_try():
            """{LONG}in try"""
    except ValueError:
        class InHandler:
            """{LONG}in handler"""
            async def method(self):
                """{LONG}async method"""
    finally:
        pass
    match 1:
        case 1:
            def in_case():
                """{LONG}in case"""
    if True:
        with open(__file__):
            def in_with():
                """{LONG}in with"""
    else:
        for _ in ():
            def in_for():
                """{LONG}in for"""
    return [lambda: 0 for _ in ()]
class Top:
    """{LONG}top"""
'''
    )

    def walked(path: Path) -> list[str]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
        docs = (ast.get_docstring(node) for node in ast.walk(tree) if isinstance(node, kinds))
        return [doc for doc in docs if doc and len(doc) >= corpora._MIN_DOCSTRING_CHARS]

    assert len(walked(nested)) == 9
    stdlib = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    for path in [nested, *stdlib]:
        try:
            expected = walked(path)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        assert corpora._module_docstrings(path) == expected, path


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


def stream(
    tokenizer, corpus=None, seq_len=16, n_heldout=8, split_seed=0, cache_dir=None
) -> SequenceStream:
    return SequenceStream(
        corpus or PythonDocsCorpus(), tokenizer, seq_len, True, split_seed, n_heldout, "", cache_dir
    )


def train_sequences(sequences: SequenceStream, start: int, count: int) -> torch.Tensor:
    iterator = sequences.train(start)
    return torch.stack([next(iterator) for _ in range(count)])


def test_sequences_start_with_bos_and_split_disjointly(tokenizer):
    sequences = stream(tokenizer)
    heldout, train = sequences.heldout(), train_sequences(sequences, 0, 200)
    assert heldout.shape == (8, 16) and train.shape == (200, 16)
    assert (train[:, 0] == tokenizer.bos_token_id).all()
    assert (heldout[:, 0] == tokenizer.bos_token_id).all()
    train_rows = {tuple(row) for row in train.tolist()}
    assert not train_rows & {tuple(row) for row in heldout.tolist()}
    assert torch.equal(train_sequences(sequences, 50, 150), train[50:])  # any start, same rows
    assert torch.equal(train_sequences(stream(tokenizer), 0, 200), train)  # fixed by split_seed
    assert not torch.equal(train_sequences(stream(tokenizer, split_seed=1), 0, 200), train)
    # Sequences are a shuffle of the whole text, not its beginning.
    first = {tuple(row) for row in train_sequences(stream(tokenizer, split_seed=1), 0, 20).tolist()}
    assert len(first & train_rows) < 20


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 128 chunks of 15 tokens, so that the pydoc topics span many of them."""
    monkeypatch.setattr(sequence_module, "BLOCK_TOKENS", 15 * 128)
    sequence_module._RECENT.clear()
    yield
    sequence_module._RECENT.clear()


def test_blocks_are_shuffled_one_at_a_time(tokenizer, small_blocks, monkeypatch):
    """The sequences of block k all come before those of block k + 1, and the held-out sequences
    come from block 0 only."""
    topics = PythonDocsCorpus(docstrings=False)
    sequences = stream(tokenizer, topics)
    assert sequences.block_chunks == 128
    heldout, train = sequences.heldout(), train_sequences(sequences, 0, 400)
    # The same stream cut into chunks, unshuffled, to locate them.
    monkeypatch.setattr(torch, "randperm", lambda n, generator: torch.arange(n))
    plain = stream(tokenizer, topics, split_seed=99)
    position = {tuple(r): i for i, r in enumerate(train_sequences(plain, -8, 512).tolist())}
    assert all(position[tuple(row)] < 128 for row in heldout.tolist())
    blocks = [position[tuple(row)] // 128 for row in train.tolist()]
    assert blocks == sorted(blocks) and blocks[-1] == 3


def test_token_blocks_are_kept_and_tokenising_resumes_where_it_stopped(
    tokenizer, small_blocks, tmp_path
):
    topics = PythonDocsCorpus(docstrings=False)
    expected = train_sequences(stream(tokenizer, topics), 900, 100)  # in block 7; kept nowhere
    kept = stream(tokenizer, topics, cache_dir=tmp_path)
    assert torch.equal(train_sequences(kept, 900, 100), expected)
    files = sorted((tmp_path / "token_blocks").rglob("block-*.safetensors"))
    assert [f.name for f in files] == [f"block-{i:06d}.safetensors" for i in range(8)]

    tokenised: list[int] = []
    real_pieces = SequenceStream._pieces

    def counting(self, document, skip):
        for index, piece in real_pieces(self, document, skip):
            tokenised.append(index)
            yield index, piece

    SequenceStream._pieces = counting
    try:
        sequence_module._RECENT.clear()
        again = stream(tokenizer, topics, cache_dir=tmp_path)
        assert torch.equal(train_sequences(again, 900, 100), expected)
        assert tokenised == []  # read from the kept blocks
        for file in files[5:]:
            file.unlink()  # as if a build was killed after block 4
        sequence_module._RECENT.clear()
        resumed = stream(tokenizer, topics, cache_dir=tmp_path)
        assert torch.equal(train_sequences(resumed, 900, 100), expected)
        assert tokenised and min(tokenised) > 0  # from block 5's first document, not the start
    finally:
        SequenceStream._pieces = real_pieces


def test_the_embedded_corpora_follow_their_files_within_a_process(tmp_path, monkeypatch):
    # Both embedded corpora keep their text and hash only while their files are unchanged: put
    # a module of our own in the place of the installed files, and rewrite it in place.
    from pydoc_data import topics

    module = tmp_path / "module.py"
    docstring = "x" * 300
    module.write_text(f'"""{docstring}"""\n')
    monkeypatch.setattr(corpora, "_python_docs_files", lambda _: (Path(topics.__file__), module))
    monkeypatch.setattr(corpora, "python_source_files", lambda _: (module,))
    docs, source = PythonDocsCorpus(), PythonSourceCorpus()
    before = docs.identity(), source.identity()
    assert list(docs.documents())[-1] == docstring
    _rewrite_same_size(module, f'"""{"y" * 300}"""\n')
    after = docs.identity(), source.identity()
    assert after[0]["sha256"] != before[0]["sha256"]
    assert after[1]["sha256"] != before[1]["sha256"]
    assert list(docs.documents())[-1] == "y" * 300
    assert list(source.documents()) == [module.read_text()]


class KeptDocuments(KeptCorpus):
    """A KeptCorpus whose documents are the text its identity was last computed from, as the
    Python documentation corpus's are."""

    def documents(self):
        return iter(self.identity()["text"])


def test_text_read_after_the_corpus_changed_is_never_kept(tmp_path, tokenizer):
    # The stream is keyed by the identity the corpus had when it was made; if its files change
    # before (or while) the text is tokenised, the new text must not be kept under the old key.
    files = [tmp_path / "module.py"]
    files[0].write_text("The quick brown fox jumps over the lazy dog. " * 40)
    cache = tmp_path / "cache"
    sequences = stream(tokenizer, KeptDocuments(files), n_heldout=2, cache_dir=cache)
    _rewrite_same_size(files[0], "A lazy dog sleeps under the quick brown fox. " * 40)
    with pytest.raises(DataError, match="The kept corpus changed while it was read"):
        sequences.heldout()
    assert not list(cache.rglob("*.safetensors"))
    # Made anew, the stream keys the new text by its own identity.
    fresh = stream(tokenizer, KeptDocuments(files), n_heldout=2, cache_dir=cache)
    assert fresh.key != sequences.key and fresh.heldout().shape == (2, 16)


def test_too_small_corpus_says_how_many_tokens_it_has(tmp_path, tokenizer):
    path = tmp_path / "short.txt"
    path.write_text("Only a few words here.")
    with pytest.raises(DataError, match="The corpus has .* tokens, too few for the 2 held-out"):
        stream(tokenizer, TextFilesCorpus([str(path)]), seq_len=32, n_heldout=2).heldout()
    assert stream(tokenizer, TextFilesCorpus([str(path)]), 32, 2).count_train(10) == 0


def test_python_source_is_a_large_deterministic_corpus():
    files = python_source_files(False)
    assert len(files) > 500 and list(files) == sorted(files)
    assert not any("site-packages" in str(path) for path in files)
    corpus = PythonSourceCorpus()
    identity = corpus.identity()
    assert identity["kind"] == "python_source" and identity["n_characters"] > 10_000_000
    assert identity == PythonSourceCorpus().identity() and len(identity["sha256"]) == 64
    first = next(corpus.documents())
    assert first == files[0].read_text(encoding="utf-8")


@pytest.mark.slow
def test_embedded_corpus_has_over_100k_smollm2_tokens(tmp_path):
    from saeseeds.activations import models

    embedded = models.EMBEDDED_MODELS["smollm2-135m"]
    folder = models._converted_folder("smollm2-135m", embedded, "~/.cache/saeseeds")
    smollm2 = AutoTokenizer.from_pretrained(folder)
    topics = python_docs_texts(False)
    n_topic_tokens = sum(len(ids) for ids in smollm2(list(topics))["input_ids"])
    assert n_topic_tokens > 100_000  # the pydoc topics alone; docstrings add about 180k


@pytest.mark.slow
def test_python_source_has_millions_of_smollm2_tokens():
    from saeseeds.activations import models

    embedded = models.EMBEDDED_MODELS["smollm2-135m"]
    folder = models._converted_folder("smollm2-135m", embedded, "~/.cache/saeseeds")
    smollm2 = AutoTokenizer.from_pretrained(folder)
    sequences = SequenceStream(PythonSourceCorpus(), smollm2, 128, True, 0, 64)
    assert sequences.count_train(8_000_000 // 127) == 8_000_000 // 127  # over 8M tokens
