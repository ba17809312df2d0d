"""The reconstruction's squared error: one autograd node with autograd's own values and bits,
in the MSE and in AuxK."""

from __future__ import annotations

import pytest
import torch

from saeseeds.sae.kernels import auxk_loss, squared_error, total_variance


def autograd_reference(x: torch.Tensor, reconstruction: torch.Tensor):
    """What the architectures computed before: autograd through the squared difference."""
    squared = (x - reconstruction).pow(2)
    return squared.mean(), squared.sum()


@pytest.mark.parametrize("shape", [(1024, 576), (37, 19)])
@pytest.mark.parametrize("upstream", [1.0, 0.37, 65536.0])  # a loss weight; a loss scaler's
def test_squared_error_has_autograd_values_and_gradient_bits(shape, upstream):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=generator) * 3 + 1
    base = torch.randn(*shape, generator=generator)
    results = []
    for fused in (True, False):
        inputs = x.clone().requires_grad_(), base.clone().requires_grad_()
        reconstruction = inputs[1] * 1.5  # x̂ is the output of a graph, as in an SAE
        if fused:
            error = squared_error(inputs[0], reconstruction)
            mean, total = error.mean, error.total
            assert torch.equal(error.difference, (x - base * 1.5))
            assert not error.difference.requires_grad
        else:
            mean, total = autograd_reference(inputs[0], reconstruction)
        (mean * upstream).backward()
        results.append((mean, total, inputs[0].grad, inputs[1].grad))
    for fused_value, reference in zip(*results, strict=True):
        assert torch.equal(fused_value, reference)  # bit for bit


def test_squared_error_total_is_differentiable_too():
    generator = torch.Generator().manual_seed(1)
    x, reconstruction = torch.randn(64, 8, generator=generator), torch.randn(64, 8)
    reconstruction.requires_grad_()
    error = squared_error(x, reconstruction)
    (error.total + error.mean).backward()
    expected = -2 * (x - reconstruction.detach()) * (1 + 1 / x.numel())
    torch.testing.assert_close(reconstruction.grad, expected)


def test_total_variance_is_the_fvu_denominator():
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    assert total_variance(x).item() == pytest.approx(1 + 1 + 4 + 4)
    assert total_variance(torch.ones(3, 2)).item() == pytest.approx(1e-12)


@pytest.mark.parametrize("n_dead", [5, 400])  # scaled down (fewer dead than k_aux), and not
def test_auxk_loss_has_the_autograd_formula_values_and_gradient_bits(n_dead):
    generator = torch.Generator().manual_seed(2)
    residual = torch.randn(256, 64, generator=generator)
    base = torch.randn(256, 64, generator=generator)
    results = []
    for fused in (True, False):
        leaf = base.clone().requires_grad_()
        aux_reconstruction = leaf * 0.5
        if fused:
            loss = auxk_loss(aux_reconstruction, residual, n_dead, d_in=64)
        else:  # the formula as autograd computed it before
            scale = min(n_dead / 32, 1.0)
            variance = (residual - residual.mean(0)).pow(2).sum().clamp_min(1e-12)
            loss = scale * (residual - aux_reconstruction).pow(2).sum() / variance
        (0.03125 * loss).backward()  # sae.auxk_alpha's default
        results.append((loss, leaf.grad))
    for fused_value, reference in zip(*results, strict=True):
        assert torch.equal(fused_value, reference)
