"""Text corpora: where the text comes from, and what identifies it.

Owns the embedded corpora (Python's documentation; the standard library's source files), local
.txt/.jsonl files, a streamed Hugging Face dataset, each corpus's identity for store keys (content
hashes where the text is local) and the checks of bad corpus files. Cutting text into sequences is
:mod:`.sequences`'s. It must not run models or know about hooks and activations.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import logging
import os
import platform
import sys
import sysconfig
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from saeseeds.errors import DataError
from saeseeds.io import atomic_write_json, file_identity, read_json

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".jsonl")
IDENTITY_FOLDER = "corpus_identity"  # under paths.model_cache_dir: see remembered_identity
_MIN_DOCSTRING_CHARS = 200  # shorter docstrings are mostly one-line signatures, not prose


class Corpus:
    """A sequence of text documents with a cheap, content-based identity."""

    def check(self) -> None:
        """Raise :class:`DataError` for bad input, before any model work."""

    def identity(self) -> dict[str, Any]:
        """JSON-able description that changes whenever the text would."""
        raise NotImplementedError

    def installed_files(self) -> tuple[Path, ...] | None:
        """The files of the Python installation the text is made from, where ``identity()``
        reads them all (it is then remembered by :func:`remembered_identity`); None where
        ``identity()`` is cheap."""
        return None

    def documents(self) -> Iterator[str]:
        raise NotImplementedError


# ---- the embedded corpus ----


def python_docs_texts(docstrings: bool) -> tuple[str, ...]:
    """The pydoc topics (the language reference), then standard-library docstrings.

    Docstrings are read from the source files with ``ast``; nothing is imported, so no module's
    import side effects run. Files are taken in name order, so the text is the same on every run of
    the same Python. Kept for the process while those files are unchanged.
    """
    files = _python_docs_files(docstrings)
    return kept_while_unchanged(("python_docs", docstrings), files, lambda: _docs_texts(files))


def _python_docs_files(docstrings: bool) -> tuple[Path, ...]:
    """The topics module, then (with ``docstrings``) the standard library's modules by name."""
    from pydoc_data import topics

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    modules = tuple(sorted(stdlib.glob("*.py"))) if docstrings else ()
    return (Path(topics.__file__), *modules)


def _docs_texts(files: tuple[Path, ...]) -> tuple[str, ...]:
    from pydoc_data import topics

    texts = [text for _, text in sorted(topics.topics.items())]
    for source in files[1:]:
        texts.extend(_module_docstrings(source))
    return tuple(texts)


_DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
# Where a definition can sit: in a statement's body, or in a clause (except, case) of one.
_HOLDERS = (ast.stmt, ast.excepthandler, ast.match_case)


def _module_docstrings(source: Path) -> list[str]:
    try:
        tree = ast.parse(source.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return []
    docstrings = (ast.get_docstring(node) for node in _definitions(tree))
    return [doc for doc in docstrings if doc and len(doc) >= _MIN_DOCSTRING_CHARS]


def _definitions(tree: ast.Module) -> Iterator[ast.AST]:
    """The module, class and function nodes of ``tree`` in ``ast.walk``'s breadth-first order,
    without walking expressions (no definition sits inside one; they are most of the nodes):
    the corpus's text, and so the store keys built on it, stay what ``ast.walk`` gave."""
    queue = deque([tree])
    while queue:
        node = queue.popleft()
        queue.extend(child for child in ast.iter_child_nodes(node) if isinstance(child, _HOLDERS))
        if isinstance(node, _DOCUMENTED):
            yield node


class PythonDocsCorpus(Corpus):
    """Python's own documentation: installed with Python, real English, no download."""

    def __init__(self, docstrings: bool = True):
        self.docstrings = docstrings

    def identity(self) -> dict[str, Any]:
        texts = python_docs_texts(self.docstrings)
        return {
            "kind": "python_docs",
            "python": platform.python_version(),
            "docstrings": self.docstrings,
            "n_documents": len(texts),
            "sha256": _texts_sha256(texts),
        }

    def installed_files(self) -> tuple[Path, ...]:
        return _python_docs_files(self.docstrings)

    def documents(self) -> Iterator[str]:
        return iter(python_docs_texts(self.docstrings))


@functools.cache
def python_source_files(site_packages: bool) -> tuple[Path, ...]:
    """The standard library's .py files in sorted path order (its own site-packages left out),
    then, with ``site_packages``, those of the installed packages."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    vendored = {"site-packages", "dist-packages"}
    files = sorted(
        p for p in stdlib.rglob("*.py") if not vendored & set(p.relative_to(stdlib).parts)
    )
    if site_packages:
        purelib = Path(sysconfig.get_paths()["purelib"])
        files += sorted(purelib.rglob("*.py"))
    return tuple(p for p in files if p.is_file())


def _source_text(path: Path) -> str | None:
    """A source file's text; None for the few that are not UTF-8 (test data of the library)."""
    try:
        return path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _python_source_identity(site_packages: bool) -> dict[str, Any]:
    files = python_source_files(site_packages)
    key = ("python_source", site_packages)
    return kept_while_unchanged(key, files, lambda: _source_identity(files, site_packages))


def _source_identity(files: tuple[Path, ...], site_packages: bool) -> dict[str, Any]:
    digest, n_documents, n_characters = hashlib.sha256(), 0, 0
    for path in files:
        text = _source_text(path)
        if text is None:
            continue
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
        n_documents += 1
        n_characters += len(text)
    return {
        "kind": "python_source",
        "python": platform.python_version(),
        "site_packages": site_packages,
        "n_documents": n_documents,
        "n_characters": n_characters,
        "sha256": digest.hexdigest(),
    }


class PythonSourceCorpus(Corpus):
    """The running interpreter's standard-library source (about 31 MB of Python here), one
    document per file, in sorted path order; ``site_packages`` adds the installed packages'.
    On every machine, deterministic for a given install, and text SmolLM2 models well."""

    def __init__(self, site_packages: bool = False):
        self.site_packages = site_packages

    def identity(self) -> dict[str, Any]:
        return _python_source_identity(self.site_packages)

    def installed_files(self) -> tuple[Path, ...]:
        return python_source_files(self.site_packages)

    def documents(self) -> Iterator[str]:
        for path in python_source_files(self.site_packages):
            text = _source_text(path)
            if text is not None:
                yield text


# ---- remembered identities ----

_REMEMBERED: dict[str, dict[str, Any]] = {}  # by record path, for this process
_KEPT: dict[Any, tuple[str, Any]] = {}  # by key: (the files' facts, the value computed from them)


def kept_while_unchanged(key: Any, files: tuple[Path, ...], compute: Callable[[], Any]) -> Any:
    """``compute()``, kept for this process under ``key`` while ``files`` are unchanged (each
    one's path, device, inode, size, modification and change times: :func:`file_facts`);
    computed again once any of them changes, so a package upgraded during a long sweep is read
    anew."""
    facts = json.dumps([(str(path), file_facts(path)) for path in files])
    held = _KEPT.get(key)
    if held is not None and held[0] == facts:
        return held[1]
    value = compute()
    _KEPT[key] = (facts, value)
    return value


def file_facts(path: Path) -> tuple[int, ...] | None:
    """The file's :func:`saeseeds.io.file_identity`; None if it is gone."""
    try:
        return file_identity(os.stat(path))
    except OSError:
        return None


def remembered_identity(corpus: Corpus, record_dir: str | Path) -> dict[str, Any]:
    """``corpus.identity()``, read from a record under ``record_dir/corpus_identity/`` where the
    corpus is made from installed files (:meth:`Corpus.installed_files`) and none of them, nor
    the corpus's class and options, nor the code that defines it, nor the interpreter, has
    changed since the record was written.

    The embedded corpora's identity is a hash of their whole text: the Python documentation's
    took 0.9 s to extract on a 2-core CPU, in every process that trains on it, even with its
    activation store built. A file's size, inode, modification and change times stand for its
    content (:func:`file_facts`). A missing, unreadable or stale record is computed again and
    rewritten (atomically), unless a file changed while it was computed; an unwritable folder
    only costs that computation next time.
    """
    files = corpus.installed_files()
    if files is None:
        return corpus.identity()
    try:
        facts = _installed_facts(corpus, files)
    except OSError:  # the code of the corpus's class cannot be read: nothing to key a record by
        return corpus.identity()
    digest = hashlib.sha256(facts.encode("utf-8")).hexdigest()
    path = Path(record_dir).expanduser() / IDENTITY_FOLDER / f"{digest[:32]}.json"
    remembered = _REMEMBERED.get(str(path))
    if remembered is not None:
        return remembered
    try:
        record = read_json(path)
        if record.get("facts_sha256") == digest and _is_identity(record.get("identity")):
            _REMEMBERED[str(path)] = record["identity"]
            return record["identity"]
    except (OSError, ValueError, AttributeError):
        pass
    identity = corpus.identity()
    if _installed_facts(corpus, files) != facts:  # a file changed meanwhile: keep no record
        return identity
    try:
        atomic_write_json(path, {"facts_sha256": digest, "identity": identity})
    except OSError as error:
        log.warning("Could not remember the corpus identity in %s: %s", path, error)
    _REMEMBERED[str(path)] = identity
    return identity


def _is_identity(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("kind"), str)


def _installed_facts(corpus: Corpus, files: tuple[Path, ...]) -> str:
    """What the identity of ``corpus`` is computed from: its class (module and name) and
    options, the interpreter, the code of every class it inherits from, and each file's facts
    (None for a file gone since it was listed)."""
    kind = type(corpus)
    code = sorted({_code_sha256(cls) for cls in kind.__mro__ if cls is not object})
    stats = [(str(path), file_facts(path)) for path in files]
    identity = [f"{kind.__module__}.{kind.__qualname__}", vars(corpus), sys.version, code, stats]
    return json.dumps(identity, sort_keys=True, default=str)


@functools.cache
def _code_sha256(cls: type) -> str:
    """sha256 of the file that defines ``cls``: for the embedded corpora, this module's as it
    was imported (the code that runs, even if the file is edited later); for a class defined
    elsewhere, its file's when first asked."""
    if cls.__module__ == __name__:
        return _OWN_SHA256
    module = sys.modules.get(cls.__module__)
    source = getattr(module, "__file__", None)
    if source is None:
        return f"{cls.__module__}:no source file"
    return hashlib.sha256(Path(source).read_bytes()).hexdigest()


# ---- local files ----


class TextFilesCorpus(Corpus):
    """Local .txt files (one document each) and .jsonl files (one document per line)."""

    def __init__(self, paths: list[str] | str, text_field: str = "text"):
        self.paths = [paths] if isinstance(paths, str) else list(paths)
        self.text_field = text_field
        self._documents: list[str] | None = None
        self._files: list[dict[str, Any]] = []

    def check(self) -> None:
        if self._documents is not None:
            return
        if not self.paths:
            raise DataError("data.corpus.paths is empty; give at least one .txt or .jsonl file.")
        documents: list[str] = []
        for file in self._expand(self.paths):
            raw = _read_bytes(file)
            text = _decode(raw, file)
            file_documents = self._parse(text, file)
            if not any(doc.strip() for doc in file_documents):
                raise DataError(f"Corpus file {str(file)!r} is empty (no text in it).")
            documents.extend(file_documents)
            self._files.append({"name": file.name, "sha256": hashlib.sha256(raw).hexdigest()})
        self._documents = documents

    @staticmethod
    def _expand(paths: list[str]) -> list[Path]:
        files: list[Path] = []
        for entry in paths:
            path = Path(entry).expanduser()
            if path.is_dir():
                found = sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES)
                if not found:
                    raise DataError(f"Corpus folder {entry!r} holds no .txt or .jsonl files.")
                files.extend(found)
            elif not path.exists():
                raise DataError(f"Corpus file {entry!r} does not exist.")
            elif path.suffix not in TEXT_SUFFIXES:
                raise DataError(
                    f"Corpus file {entry!r} is not a .txt or .jsonl file; use one of "
                    f"{', '.join(TEXT_SUFFIXES)}."
                )
            else:
                files.append(path)
        return files

    def _parse(self, text: str, file: Path) -> list[str]:
        if file.suffix == ".txt":
            return [text]
        documents = []
        for line_number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{file}:{line_number} is not valid JSON ({error.msg}).") from error
            except RecursionError:
                raise DataError(f"{file}:{line_number} is nested too deeply to read.") from None
            if not isinstance(record, dict) or not isinstance(record.get(self.text_field), str):
                keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise DataError(
                    f"{file}:{line_number} has no text field {self.text_field!r} (found: {keys}); "
                    "set data.corpus.text_field."
                )
            documents.append(record[self.text_field])
        return documents

    def identity(self) -> dict[str, Any]:
        self.check()
        return {"kind": "text_files", "text_field": self.text_field, "files": self._files}

    def documents(self) -> Iterator[str]:
        self.check()
        return iter(self._documents or [])


def _read_bytes(file: Path) -> bytes:
    try:
        return file.read_bytes()
    except OSError as error:
        raise DataError(f"Corpus file {str(file)!r} cannot be read: {error.strerror}.") from error


def _decode(raw: bytes, file: Path) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(
            f"Corpus file {str(file)!r} is not UTF-8 text (bad byte at offset {error.start})."
        ) from error


# ---- a streamed Hugging Face dataset ----


_UNPINNED_WARNED: set[str] = set()  # datasets already warned about in this process


class HFDatasetCorpus(Corpus):
    """A Hugging Face dataset, streamed: only as many documents as the token budget needs."""

    def __init__(
        self,
        name: str,
        config_name: str | None = None,
        split: str = "train",
        text_field: str = "text",
        revision: str | None = None,
    ):
        self.name, self.config_name, self.split = name, config_name, split
        self.text_field, self.revision = text_field, revision

    def identity(self) -> dict[str, Any]:
        if self.revision is None and self.name not in _UNPINNED_WARNED:
            _UNPINNED_WARNED.add(self.name)
            log.warning(
                "Dataset %r has no data.corpus.revision: its activation store is keyed by name, "
                "config, split and field only, so if the dataset changes on the Hub the old store "
                "is still used. Set data.corpus.revision=<commit or tag> to pin it.",
                self.name,
            )
        return {
            "kind": "hf_dataset",
            "name": self.name,
            "config_name": self.config_name,
            "split": self.split,
            "text_field": self.text_field,
            "revision": self.revision,
        }

    def documents(self) -> Iterator[str]:
        from saeseeds.activations.models import hub_offline

        if hub_offline():
            raise DataError(
                f"Dataset {self.name!r} is streamed from the Hugging Face Hub, which is not "
                "reachable. Use the embedded corpus (data=pydocs) or local files (data=text_files)."
            )
        import datasets

        stream = datasets.load_dataset(
            self.name, self.config_name, split=self.split, streaming=True, revision=self.revision
        )
        for record in stream:
            if self.text_field not in record:
                raise DataError(
                    f"Dataset {self.name!r} has no column {self.text_field!r} "
                    f"(columns: {sorted(record)}); set data.corpus.text_field."
                )
            yield record[self.text_field]


def _texts_sha256(texts: tuple[str, ...] | list[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


# The code of the embedded corpora, read as this module is imported.
_OWN_SHA256 = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
