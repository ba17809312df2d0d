"""The GPU path: device placement and bf16-mixed precision. Skipped cleanly without CUDA."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from saeseeds.training.run import choose_precision, train

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_default_precision_follows_the_device():
    assert choose_precision(None, "cpu") == "32-true"
    assert choose_precision("16-mixed", "auto") == "16-mixed"  # an explicit choice always wins
    bf16_gpu = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    assert choose_precision(None, "auto") == ("bf16-mixed" if bf16_gpu else "32-true")


@pytest.mark.gpu
@needs_cuda
def test_trains_on_gpu_with_bf16_mixed_and_saves_float32(train_config, tmp_path):
    metrics = train(train_config("trainer=gpu", "logger=none"))
    environment = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert environment["device"].startswith("cuda")
    assert environment["precision"] == "bf16-mixed"
    weights = load_file(tmp_path / "run" / "sae_weights.safetensors")
    assert all(tensor.dtype == torch.float32 for tensor in weights.values())
    assert metrics["fvu"] < 0.5
