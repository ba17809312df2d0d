"""Every option of every config group composes; typed schemas reject bad values early."""

from __future__ import annotations

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from saeseeds.activations.base import ActivationSource
from saeseeds.config.validation import sae_config_of, validate_train_config
from saeseeds.errors import ConfigError
from saeseeds.sae import build_sae
from saeseeds.sae.topk import TopKSAE
from saeseeds.training.run import build_source
from tests.helpers import CONF_DIR, compose_train

GROUPS = ("model", "hook", "sae", "data", "trainer", "logger", "paths")
NEEDS_A_FILE = {
    "activations": ["data.path=/nonexistent.npy"],
    "text_files": ["data.corpus.paths=[/nonexistent.txt]"],
}


def group_options() -> list[tuple[str, str]]:
    return [
        (group, path.stem) for group in GROUPS for path in sorted((CONF_DIR / group).glob("*.yaml"))
    ]


@pytest.mark.parametrize(("group", "option"), group_options())
def test_every_group_option_composes_and_validates(group, option, tmp_path):
    extra = NEEDS_A_FILE.get(option, []) if group == "data" else []
    cfg = compose_train([f"{group}={option}", *extra], tmp_path)
    if (group, option) == ("trainer", "gpu") and not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="sees no CUDA GPU"):
            validate_train_config(cfg)
        return
    validate_train_config(cfg)
    assert cfg[group] is not None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: make test-gpu")
def test_the_gpu_trainer_validates_where_there_is_a_gpu(tmp_path):
    """The branch of the test above that the default suite (CUDA hidden) never takes: on a GPU,
    trainer=gpu is accepted and trains the same SAE recipe as the default trainer."""
    on_gpu = validate_train_config(compose_train(["trainer=gpu"], tmp_path))
    assert on_gpu == validate_train_config(compose_train([], tmp_path))


def test_sae_trainer_and_synthetic_data_instantiate(tmp_path):
    cfg = compose_train(["data=synthetic", "data.n_tokens=2048", "sae.n_features=64"], tmp_path)
    source = build_source(cfg)  # as the app builds it (data.control handled there)
    assert isinstance(source, ActivationSource)
    splits = source.load()
    assert len(splits.train) == 2048 and splits.d_in == cfg.data.d_in
    sae = build_sae(splits.d_in, sae_config_of(cfg.sae))
    assert isinstance(sae, TopKSAE)
    assert sae.W_dec.shape == (64, cfg.data.d_in)


def test_hydra_help_lists_every_group():
    from tests.helpers import run_app

    result = run_app("train.py", "--help", cwd=CONF_DIR.parent)
    assert result.returncode == 0
    for group in GROUPS:
        assert f"{group}:" in result.stdout


@pytest.mark.parametrize(
    ("override", "error", "message"),
    [
        ("sae.n_features=abc", ValidationError, "Value 'abc' of type 'str' could not be converted"),
        ("sae.k=1.5", ValidationError, "sae.k"),
        ("sae.nonsense=1", ConfigCompositionException, "nonsense"),
        ("sae=nonexistent", ConfigCompositionException, "Could not find 'sae/nonexistent'"),
        ("data=nonexistent", ConfigCompositionException, "Available options in 'data'"),
        ("trainer.max_epochs=many", ValidationError, "max_epochs"),
    ],
)
def test_schema_rejects_bad_overrides_at_composition(tmp_path, override, error, message):
    with pytest.raises((error, ConfigCompositionException, ConfigKeyError)) as raised:
        compose_train([override], tmp_path)
    assert message in str(raised.value) + str(raised.value.__cause__)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["sae.k=0"], "sae.k=0 must be in 1..4095"),
        (["sae.k=-3"], "sae.k=-3 must be in 1..4095"),
        (["sae.n_features=0"], "sae.n_features=0 must be a positive integer"),
        (["sae.n_features=64", "sae.k=64"], "sae.k=64 must be in 1..63"),
        (["sae.n_features=64", "sae.k=100"], "sae.k=100 must be in 1..63"),
        (["sae.lr=0"], "sae.lr=0.0 must be > 0"),
        (["sae.lr=-1e-3"], "sae.lr=-0.001 must be > 0"),
        (["seed=abc"], "seed='abc' is not valid"),
        (["seed=1.5"], "seed=1.5 is not valid"),
        (["trainer.precision=fp8"], "trainer.precision='fp8' is not valid"),
        (["logger.mode=sometimes"], "logger.mode='sometimes' is not valid"),
        (["sae.normalize=zscore"], "sae.normalize='zscore' is not valid"),
    ],
)
def test_validation_names_the_bad_value_and_the_valid_range(tmp_path, overrides, message):
    cfg = compose_train(overrides, tmp_path)
    with pytest.raises(ConfigError) as raised:
        validate_train_config(cfg)
    assert message in str(raised.value)


def test_long_job_folder_names_stay_unique_and_stable_across_sweeps():
    """Two passes of one study share a sweep folder and both number their jobs from 0: a long
    name is cut to fit the file system with a hash of the whole name, never the job number."""
    from saeseeds.config import MAX_FOLDER_NAME, job_subdir

    first = "sae=topk,data.n_tokens=4096," + "x" * 300 + ",seed=1"
    second = first.replace("seed=1", "seed=2")
    assert job_subdir(first, 0) == job_subdir(first, 7)
    assert job_subdir(first, 0) != job_subdir(second, 0)
    assert len(job_subdir("é" * 300, 0).encode()) <= MAX_FOLDER_NAME
    assert job_subdir("model.name=org/model", 3) == "model.name=org%2Fmodel"
    assert job_subdir("", 3) == "3"
