"""Schemas of the ``data`` group: where the activations an SAE trains on come from.

Text options (pydocs, pysource, text_files, hf_dataset) read a model's activations on a corpus
through the activation store; synthetic data has a known ground truth; ``activations`` is a user's
own matrix or a store folder. Each is a ``_target_`` that Hydra instantiates into an
:class:`saeseeds.activations.base.ActivationSource`. Nothing here reads files or loads models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class DataConfig:
    """Fields every data option has."""

    control: str = "none"
    """``none``, or ``gaussian``: Gaussian samples with the training activations' mean and
    covariance instead of the activations (the geometry control; CE-loss is then skipped)."""
    control_seed: int = 0
    """Seed of the control's samples; independent of the SAE seed."""
    heldout_tokens: int = 8192
    """Held-out tokens, never trained on; a fixed number, independent of n_tokens (text: whole
    sequences, at least eval_sequences of them)."""
    shard_tokens: int = 65_536
    """Rows per shard of the training data (a store's file, a block of a user's file, a generated
    shard). Part of the store key and of the batch order."""
    window_shards: int = 4
    """Shards whose rows are shuffled together while training (memory: two windows, about
    2 x window_shards x shard_tokens rows); the shard order is shuffled every epoch."""


@dataclass
class PythonDocsCorpusConfig:
    """The embedded corpus: Python's own documentation, installed with Python."""

    _target_: str = "saeseeds.activations.corpora.PythonDocsCorpus"
    docstrings: bool = True
    """After the pydoc topics (~465k characters), add standard-library docstrings (~690k)."""


@dataclass
class PythonSourceCorpusConfig:
    """A second embedded corpus: the .py files of the running Python's standard library."""

    _target_: str = "saeseeds.activations.corpora.PythonSourceCorpus"
    site_packages: bool = False
    """Also read the .py files of the installed packages (site-packages), after the library."""


@dataclass
class TextFilesCorpusConfig:
    """Local text: .txt files (one document each) and .jsonl files (one document per line)."""

    _target_: str = "saeseeds.activations.corpora.TextFilesCorpus"
    paths: list[str] = MISSING
    """Files or folders (searched for .txt/.jsonl), read in the given order."""
    text_field: str = "text"
    """The field of each .jsonl record that holds the text."""


@dataclass
class HFDatasetCorpusConfig:
    """A Hugging Face dataset, streamed (needs the Hub)."""

    _target_: str = "saeseeds.activations.corpora.HFDatasetCorpus"
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
class TextDataConfig(DataConfig):
    """Activations of ``model`` at ``hook`` on a text corpus (the shared knobs)."""

    _target_: str = "saeseeds.activations.text.TextActivationSource"
    model: Any = "${model}"
    """The model group (interpolated; no ``_target_``)."""
    hook: Any = "${hook}"
    """The hook group (interpolated; no ``_target_``)."""
    corpus: Any = MISSING
    """Where the text comes from; each data option sets it."""
    seq_len: int = 128
    """Tokens per sequence fed to the model (BOS included)."""
    n_tokens: int = 131_072
    """Training token budget: the first n_tokens rows of the store (a larger budget extends it)."""
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
    store_dtype: str = "float16"
    """Dtype of the activations in the store (float16, bfloat16 or float32); part of its key."""
    store: bool = True
    """Write the activations to a store and train from it; false: compute each shard in memory
    when training reads it (the same batches and SAEs, no disk, forward passes every epoch)."""
    cache_dir: str = "${paths.cache_dir}"
    """Root of the shared activation stores."""
    model_cache_dir: str = "${paths.model_cache_dir}"
    """Root of converted model weights (the de-quantised embedded model)."""


@dataclass
class PythonDocsDataConfig(TextDataConfig):
    """Text of the embedded Python documentation (no download)."""

    corpus: PythonDocsCorpusConfig = field(default_factory=PythonDocsCorpusConfig)


@dataclass
class PythonSourceDataConfig(TextDataConfig):
    """Text of the Python standard library's source files (no download; ~9M SmolLM2 tokens)."""

    corpus: PythonSourceCorpusConfig = field(default_factory=PythonSourceCorpusConfig)


@dataclass
class TextFilesDataConfig(TextDataConfig):
    """Text of local .txt/.jsonl files."""

    corpus: TextFilesCorpusConfig = field(default_factory=TextFilesCorpusConfig)


@dataclass
class HFDatasetDataConfig(TextDataConfig):
    """Text of a streamed Hugging Face dataset."""

    corpus: HFDatasetCorpusConfig = field(default_factory=HFDatasetCorpusConfig)


@dataclass
class HierarchyConfig:
    """A feature hierarchy in synthetic data: parents whose children fire only with them."""

    n_parents: int = 0
    """Parent features: the first n_parents of the dictionary; 0: no hierarchy (the default;
    the block is then left out of the run's recorded config)."""
    children_per_parent: int = 2
    """Children of each parent: the next n_parents x children_per_parent features."""
    child_probability: float = 0.5
    """Probability that a firing parent brings one of its children (chosen uniformly; the
    children of a parent never fire together, and never without it)."""


@dataclass
class SyntheticDataConfig(DataConfig):
    """Activations drawn from a known ground-truth dictionary (docs/synthetic.md)."""

    _target_: str = "saeseeds.activations.synthetic.SyntheticSource"
    d_in: int = 64
    """Activation dimension."""
    n_true_features: int = 128
    """Size of the ground-truth dictionary."""
    k_true: int = 4
    """Ground-truth features active per sample."""
    noise_std: float = 0.01
    """Std of isotropic Gaussian noise added to each sample."""
    spectrum_decay: float = 0.0
    """Anisotropy of the true directions: coordinate i is scaled by exp(-spectrum_decay·i/d_in)
    before normalising, so larger values pack the features into fewer dominant dimensions, as in
    real activations (0: isotropic)."""
    min_magnitude: float = 0.5
    """Active magnitudes are uniform in [min_magnitude, max_magnitude]."""
    max_magnitude: float = 1.5
    n_tokens: int = 65_536
    """Training token budget."""
    batch_size: int = 1024
    """Tokens per optimisation step."""
    data_seed: int = 0
    """Seed of the ground truth and the samples; independent of the SAE seed, so runs of a sweep
    share data."""
    sampler: str | None = None
    """How samples are drawn. ``null``: a uniform score per feature per row, the top k_true,
    and the dense codes times the dictionary, the samples of every synthetic run so far; its
    time and memory grow with rows x n_true_features. ``sparse``: k_true distinct ids per row
    summed from the dictionary's rows, the same law at a cost independent of n_true_features
    (for k_true up to about sqrt(2 x n_true_features)), with other samples (so it is part of the
    data identity). Left out of the run's recorded config when null (docs/synthetic.md)."""
    hierarchy: HierarchyConfig = field(default_factory=HierarchyConfig)
    """Off by default (n_parents=0: every feature is drawn alike). ``data.hierarchy.n_parents=8``
    makes parents whose children fire only with them; the k_true features are then drawn
    among the parents and free features, and children come on top."""


@dataclass
class ActivationFileConfig(DataConfig):
    """A user's own [N, d_in] activations (.safetensors or .npy), or an activation store folder."""

    _target_: str = "saeseeds.activations.file.ActivationFileSource"
    path: str = MISSING
    """The activations file (read in its own dtype, a block at a time), or a store folder."""
    key: str | None = None
    """Tensor name inside a .safetensors file; ``null`` takes the only tensor."""
    n_tokens: int | None = None
    """Training token budget; ``null`` uses every row not held out."""
    batch_size: int = 1024
    """Tokens per optimisation step."""
    split_seed: int = 0
    """Seed of which rows are held out (heldout_tokens of them); independent of the SAE seed."""
    cache_dir: str = "${paths.cache_dir}"
    """Where the file's sha256 is remembered (by path, size, modification time and inode)."""


def register(store: ConfigStore) -> None:
    store.store(group="schema/data", name="pydocs", node=PythonDocsDataConfig)
    store.store(group="schema/data", name="pysource", node=PythonSourceDataConfig)
    store.store(group="schema/data", name="text_files", node=TextFilesDataConfig)
    store.store(group="schema/data", name="hf_dataset", node=HFDatasetDataConfig)
    store.store(group="schema/data", name="synthetic", node=SyntheticDataConfig)
    store.store(group="schema/data", name="activations", node=ActivationFileConfig)
