"""Shared fixtures: an offline, quiet W&B, no Hub, composed tiny training configs, and a tiny
real transformer (built locally) with text sources on it."""

from __future__ import annotations

import os

# The default suite runs on the CPU everywhere, as CI does: on a GPU machine Lightning's and the
# model's `auto` would otherwise pick the GPU and bf16-mixed, and the tests that expect CPU bytes,
# float32 defaults or a CPU in environment.json would fail. Set before anything initialises
# CUDA, so that in-process runs and the subprocesses the tests start see no GPU alike. The GPU
# tests (marked gpu) run on their own: `make test-gpu` (SAESEEDS_TEST_GPU=1 pytest -m gpu).
if os.environ.get("SAESEEDS_TEST_GPU") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path

import pytest
from omegaconf import DictConfig

from saeseeds.activations import hooks
from saeseeds.activations import text as text_source
from saeseeds.activations.corpora import PythonDocsCorpus
from saeseeds.activations.text import TextActivationSource
from saeseeds.training import lm_eval
from tests.helpers import TINY_SAE, TINY_SYNTHETIC, compose_train
from tests.tiny_lm import build_tiny_lm


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path_factory.mktemp("wandb_config")))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


@pytest.fixture
def train_config(tmp_path) -> Callable[..., DictConfig]:
    def make(*overrides: str, output_dir: Path | None = None) -> DictConfig:
        data = [] if "data=activations" in overrides else TINY_SYNTHETIC
        return compose_train([*TINY_SAE, *data, *overrides], output_dir or tmp_path / "run")

    return make


# Small enough that a store builds in about a second on the tiny model; shards of 512 tokens.
TINY_DATA = dict(
    seq_len=32,
    n_tokens=2048,
    batch_size=256,
    heldout_tokens=200,
    eval_sequences=4,
    shard_tokens=512,
)


@pytest.fixture(autouse=True)
def no_hub(monkeypatch):
    """Nothing in these tests may touch the Hugging Face Hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def fresh_memory() -> Iterator[None]:
    """Each test starts without statistics, baselines, contexts or precision choices kept in
    memory by an earlier one."""
    memories = (
        text_source._STREAMED_STATS,
        lm_eval._BASELINE_MEMORY,
        lm_eval._WINDOW_MEMORY,
        lm_eval._EVAL_CHOICES,
        lm_eval._SCRATCH,
        hooks._RESUMES_EXACTLY,
    )
    for memory in memories:
        memory.clear()
    yield
    for memory in memories:
        memory.clear()


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("tiny_llama"), architecture="llama")


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("tiny_gpt2"), architecture="gpt2", train_steps=0)


@pytest.fixture
def make_source(tiny_llama, tmp_path) -> Callable[..., TextActivationSource]:
    """A text source on the tiny Llama at blocks.1.hook_resid_pre, with its store under
    tmp_path."""

    def make(
        model_path: Path | None = None,
        hook_point: str = "resid_pre",
        layer: int = 1,
        corpus=None,
        model: dict | None = None,
        **overrides,
    ) -> TextActivationSource:
        model_config = {
            "name": "local",
            "path": str(model_path or tiny_llama),
            "forward_batch_size": 32,
            **(model or {}),
        }
        hook = {"point": hook_point, "layer": layer, "name": f"blocks.{layer}.hook_{hook_point}"}
        knobs = {
            **TINY_DATA,
            "cache_dir": str(tmp_path / "cache"),
            "model_cache_dir": str(tmp_path / "model_cache"),
            **overrides,
        }
        return TextActivationSource(
            model=model_config, hook=hook, corpus=corpus or PythonDocsCorpus(), **knobs
        )

    return make
