"""The model, hook and text data options compose from conf/ and instantiate into a source (without
loading anything); the HF dataset option streams where the Hub is reachable and fails clearly
where it is not."""

from __future__ import annotations

import pytest

from saeseeds.activations.corpora import HFDatasetCorpus, PythonDocsCorpus, TextFilesCorpus
from saeseeds.activations.models import hub_offline
from saeseeds.activations.text import TextActivationSource
from saeseeds.errors import DataError
from saeseeds.training.run import build_source
from tests.helpers import compose_train


def source_for(*overrides: str) -> TextActivationSource:
    cfg = compose_train(list(overrides))
    source = build_source(cfg)  # as the app builds it (data.control handled there)
    assert isinstance(source, TextActivationSource)
    return source


def test_defaults_are_smollm2_layer_6_resid_pre_on_python_docs():
    source = source_for()
    assert source.model_config.name == "smollm2-135m" and source.model_config.init == "pretrained"
    assert source.hook.name == "blocks.6.hook_resid_pre" and source.hook.layer == 6
    assert isinstance(source.corpus, PythonDocsCorpus)
    assert source.n_tokens >= 100_000 and source.batch_size > 0  # the trainer reads both
    assert source.cache_dir == "outputs/cache"


@pytest.mark.parametrize("point", ["resid_pre", "resid_post", "mlp_out", "attn_out"])
def test_hook_options_take_a_layer(point):
    assert source_for(f"hook={point}", "hook.layer=3").hook.name == f"blocks.3.hook_{point}"


def test_model_options():
    random = source_for("model=random", "model.seed=7").model_config
    assert (random.name, random.init, random.seed) == ("smollm2-135m", "random", 7)
    assert source_for("model=gpt2").model_config.name == "gpt2"
    local = source_for("model=local", "model.path=/some/folder").model_config
    assert local.path == "/some/folder"


def test_text_files_and_hf_dataset_options(tmp_path):
    files = source_for("data=text_files", f"data.corpus.paths=[{tmp_path / 'a.txt'}]").corpus
    assert isinstance(files, TextFilesCorpus) and files.paths == [str(tmp_path / "a.txt")]
    hf = source_for("data=hf_dataset", "data.corpus.name=NeelNanda/pile-10k").corpus
    assert isinstance(hf, HFDatasetCorpus) and hf.split == "train"


def test_an_unpinned_dataset_is_warned_about_once(caplog):
    corpus = HFDatasetCorpus("someone/unpinned-corpus")
    with caplog.at_level("WARNING", logger="saeseeds.activations.corpora"):
        first, second = corpus.identity(), corpus.identity()
    assert first == second and first["revision"] is None
    warnings = [r.getMessage() for r in caplog.records if "unpinned-corpus" in r.getMessage()]
    assert len(warnings) == 1 and "data.corpus.revision=<commit or tag>" in warnings[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="saeseeds.activations.corpora"):
        HFDatasetCorpus("someone/pinned-corpus", revision="abc123").identity()
    assert not caplog.records


def test_streamed_dataset_offline_is_a_clear_error():
    corpus = HFDatasetCorpus("NeelNanda/pile-10k")
    with pytest.raises(DataError, match="not reachable.*data=pydocs"):
        next(corpus.documents())


@pytest.mark.skipif(hub_offline(), reason="the Hugging Face Hub is not reachable here")
def test_streamed_dataset_yields_text_where_the_hub_is_reachable(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    documents = HFDatasetCorpus("NeelNanda/pile-10k").documents()
    first = next(documents)
    assert isinstance(first, str) and first.strip()
