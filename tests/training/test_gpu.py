"""The GPU path: device placement and bf16-mixed precision. Skipped cleanly without CUDA."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from saeseeds.config.validation import validate_train_config
from saeseeds.training import lm_eval
from saeseeds.training.run import train
from saeseeds.training.step_precision import step_precision

# The default suite hides CUDA (tests/conftest.py); `make test-gpu` runs these on a GPU.
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device: make test-gpu"
)


def test_default_precision_follows_the_device(train_config, tmp_path):
    cfg = train_config(f"paths.model_cache_dir={tmp_path / 'models'}")
    sae_config = validate_train_config(cfg)
    # An explicit choice always wins.
    explicit = train_config("trainer.precision=16-mixed")
    assert step_precision(explicit, sae_config, 16, 256)["precision"] == "16-mixed"
    # The tiny SAE is too small for bf16 to pay: 32-true on a CPU, bf16-mixed on a bf16 GPU.
    bf16_gpu = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    assert step_precision(cfg, sae_config, 16, 256)["precision"] == (
        "bf16-mixed" if bf16_gpu else "32-true"
    )


@pytest.mark.gpu
@needs_cuda
def test_the_default_precision_on_a_gpu_is_bf16_mixed_at_any_size(train_config, tmp_path):
    """The GPU branch of the test above, which the default suite (CUDA hidden) never takes."""
    cfg = train_config(f"paths.model_cache_dir={tmp_path / 'models'}")
    expected = "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    assert step_precision(cfg, validate_train_config(cfg), 16, 256)["precision"] == expected


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


@pytest.mark.gpu
@needs_cuda
def test_the_ce_loss_forward_runs_on_the_gpu_in_bf16_with_the_sae_on_the_cpu_in_float32(
    make_source,
):
    source = make_source(model={"device": "cuda"})
    source.load()
    context = source.text_context()
    seen = []

    def reconstruct(x):
        seen.append((x.device.type, x.dtype, torch.is_autocast_enabled("cpu")))
        return x

    metrics = lm_eval.ce_loss_metrics(context, reconstruct)
    # auto on a CUDA device with bf16: bf16 autocast at any size, untimed.
    expected = "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    assert lm_eval.eval_precision(context).chosen == expected
    assert set(seen) == {("cpu", torch.float32, False)}
    assert metrics["ce_loss_score"] == pytest.approx(1.0, abs=1e-3)


@pytest.mark.gpu
@needs_cuda
def test_under_bf16_autocast_on_the_gpu_the_default_path_is_plain_autograd_and_agrees_with_fused():
    """Under bf16 autocast on a CUDA GPU a 4,096-latent Top-K SAE trains through plain autograd
    (``fused_pays``); the fused function does the same maths: the same latents and losses, and
    gradients within bf16 rounding of each other."""
    from saeseeds.sae.fused_topk import fused_pays
    from tests.helpers import topk_sae

    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(1024, 64, generator=generator) + 1.0).cuda()
    dead_mask = torch.zeros(4096, dtype=torch.bool, device="cuda")
    dead_mask[::3] = True
    results = {}
    for fused in (None, True):
        sae = topk_sae(64, 4096, 16, sparse_decoder=None, fused_encoder=fused)
        sae.initialize(x.cpu(), torch.Generator().manual_seed(1))
        sae.cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            assert not fused_pays(len(x), sae.n_features, "cuda")
            output = sae(x, dead_mask)
            loss = output.losses["mse"] + output.losses["auxk"]
        loss.backward()
        results[fused] = (output, {n: p.grad.float() for n, p in sae.named_parameters()})
    (plain, plain_grads), (fused, fused_grads) = results[None], results[True]
    assert torch.equal(plain.latent_indices.sort(-1).values, fused.latent_indices.sort(-1).values)
    torch.testing.assert_close(plain.losses["mse"], fused.losses["mse"], rtol=1e-2, atol=0)
    for name, grad in fused_grads.items():
        assert (plain_grads[name] - grad).norm() < 2e-2 * grad.norm(), name
