"""Schemas for the ``model``, ``hook`` and text ``data`` groups, and their cheap checks.

Owns the typed shape of ``model=``, ``hook=`` and the text-corpus ``data=`` options (pydocs,
text_files, hf_dataset) and the checks a value can fail on its own (an unknown dtype or hook point).
It must not load models or read files: checks that need the model (hook layer in range, ``seq_len``
within the context) live in :mod:`saeseeds.hooks` and :mod:`saeseeds.data.text`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from saeseeds.data.base import DataError

HOOK_POINTS = ("resid_pre", "resid_mid", "resid_post", "mlp_out", "attn_out")
MODEL_DTYPES = ("float32", "bfloat16", "float16")
MODEL_INITS = ("pretrained", "random")


@dataclass
class ModelConfig:
    """The language model whose activations are read."""

    name: str = "smollm2-135m"
    """``smollm2-135m`` (embedded, no download), a Hugging Face Hub name (``gpt2``), or a label
    for the local folder given in ``path``."""
    path: str | None = None
    """A local Hugging Face model folder (config.json, weights, tokenizer); ``null``: ``name``."""
    init: str = "pretrained"
    """``pretrained`` weights, or ``random``: the same architecture with weights drawn from
    ``seed`` (the "dead salmon" control of Gerasimov et al.)."""
    seed: int = 0
    """Seed of the random weights (``init=random`` only)."""
    dtype: str = "float32"
    """Precision of the forward passes and of the cached activations: float32|bfloat16|float16."""
    device: str = "auto"
    """Where the model runs: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ..."""
    forward_batch_size: int = 8
    """Sequences per forward pass (speed and memory only; results do not depend on it)."""

    def __post_init__(self) -> None:
        if self.init not in MODEL_INITS:
            raise DataError(f"model.init={self.init!r} is not valid; use one of {MODEL_INITS}.")
        if self.dtype not in MODEL_DTYPES:
            raise DataError(f"model.dtype={self.dtype!r} is not valid; use one of {MODEL_DTYPES}.")
        if self.forward_batch_size <= 0:
            raise DataError(
                f"model.forward_batch_size must be positive, got {self.forward_batch_size}."
            )


@dataclass
class HookConfig:
    """Where in the model activations are read (a TransformerLens hook)."""

    point: str = "resid_pre"
    """resid_pre | resid_mid | resid_post | mlp_out | attn_out."""
    layer: int = 6
    """Block index, from 0."""
    name: str = "blocks.${.layer}.hook_${.point}"
    """The TransformerLens hook name; derived from point and layer, or set to any hook the model
    has (its activations must be [batch, pos, d])."""

    def __post_init__(self) -> None:
        derived = f"blocks.{self.layer}.hook_{self.point}"
        if self.name == derived and self.point not in HOOK_POINTS:
            raise DataError(
                f"hook.point={self.point!r} is not a hook point; use one of "
                f"{', '.join(HOOK_POINTS)} (or set hook.name to a full hook name)."
            )


@dataclass
class PythonDocsCorpusConfig:
    """The embedded corpus: Python's own documentation, installed with Python."""

    _target_: str = "saeseeds.corpus.PythonDocsCorpus"
    docstrings: bool = True
    """After the pydoc topics (~465k characters), add standard-library docstrings (~690k)."""


@dataclass
class TextFilesCorpusConfig:
    """Local text: .txt files (one document each) and .jsonl files (one document per line)."""

    _target_: str = "saeseeds.corpus.TextFilesCorpus"
    paths: list[str] = MISSING
    """Files or folders (searched for .txt/.jsonl), read in the given order."""
    text_field: str = "text"
    """The field of each .jsonl record that holds the text."""


@dataclass
class HFDatasetCorpusConfig:
    """A Hugging Face dataset, streamed (needs the Hub)."""

    _target_: str = "saeseeds.corpus.HFDatasetCorpus"
    name: str = "NeelNanda/pile-10k"
    """Dataset name on the Hub."""
    config_name: str | None = None
    """Dataset configuration (subset), if it has several."""
    split: str = "train"
    """Split to stream."""
    text_field: str = "text"
    """Column holding the text."""
    revision: str | None = None
    """Git revision of the dataset, for reproducibility."""


@dataclass
class TextDataConfig:
    """Activations of ``model`` at ``hook`` on a text corpus (the shared knobs)."""

    _target_: str = "saeseeds.data.text.TextActivationSource"
    model: Any = "${model}"
    """The model group (interpolated; no ``_target_``)."""
    hook: Any = "${hook}"
    """The hook group (interpolated; no ``_target_``)."""
    corpus: Any = MISSING
    """Where the text comes from; each data option sets it."""
    seq_len: int = 128
    """Tokens per sequence fed to the model (BOS included)."""
    n_tokens: int = 131_072
    """Training token budget: activations in the train split."""
    heldout_fraction: float = 0.05
    """Held-out tokens, as a fraction of n_tokens (whole sequences, never trained on)."""
    batch_size: int = 1024
    """SAE training tokens per optimisation step."""
    prepend_bos: bool = True
    """Start every sequence with the tokenizer's BOS token."""
    drop_first_position: bool = True
    """Drop the activations at position 0 (BOS or first token): they are large outliers."""
    split_seed: int = 0
    """Seed of which sequences are held out; independent of the SAE seed."""
    eval_sequences: int = 8
    """Held-out sequences used for the CE-loss score and KL (each a full model forward)."""
    context_before: int = 12
    """Tokens of context before the firing token in top_examples.json."""
    context_after: int = 4
    """Tokens of context after the firing token in top_examples.json."""
    cache_dir: str = "${paths.cache_dir}"
    """Root of the shared activation caches."""
    model_cache_dir: str = "${paths.model_cache_dir}"
    """Root of converted model weights (the de-quantised embedded model)."""


@dataclass
class PythonDocsDataConfig(TextDataConfig):
    """Text of the embedded Python documentation (no download)."""

    corpus: PythonDocsCorpusConfig = field(default_factory=PythonDocsCorpusConfig)


@dataclass
class TextFilesDataConfig(TextDataConfig):
    """Text of local .txt/.jsonl files."""

    corpus: TextFilesCorpusConfig = field(default_factory=TextFilesCorpusConfig)


@dataclass
class HFDatasetDataConfig(TextDataConfig):
    """Text of a streamed Hugging Face dataset."""

    corpus: HFDatasetCorpusConfig = field(default_factory=HFDatasetCorpusConfig)


def register(store: ConfigStore) -> None:
    store.store(group="model", name="model_schema", node=ModelConfig)
    store.store(group="hook", name="hook_schema", node=HookConfig)
    store.store(group="data", name="pydocs_schema", node=PythonDocsDataConfig)
    store.store(group="data", name="text_files_schema", node=TextFilesDataConfig)
    store.store(group="data", name="hf_dataset_schema", node=HFDatasetDataConfig)
