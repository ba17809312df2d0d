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
    x, base = torch.randn(64, 8, generator=generator), torch.randn(64, 8, generator=generator)
    grads = []
    for fused in (True, False):
        reconstruction = base.clone().requires_grad_()
        if fused:
            error = squared_error(x, reconstruction)
            mean, total = error.mean, error.total
        else:
            mean, total = autograd_reference(x, reconstruction)
        (0.37 * total + mean).backward()
        grads.append(reconstruction.grad)
    assert torch.equal(*grads)


def test_total_variance_is_the_fvu_denominator():
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    assert total_variance(x).item() == pytest.approx(1 + 1 + 4 + 4)
    assert torch.equal(total_variance(torch.ones(3, 2)), torch.tensor(1e-12))  # the clamp


@pytest.mark.parametrize("n_dead", [7, 400])  # scaled down (fewer dead than k_aux), and not
@pytest.mark.parametrize("upstream", [0.03125, 0.37])  # sae.auxk_alpha's default; one that rounds
def test_auxk_loss_has_the_autograd_formula_values_and_gradient_bits(n_dead, upstream):
    generator = torch.Generator().manual_seed(2)
    residual = torch.randn(256, 60, generator=generator)
    base = torch.randn(256, 60, generator=generator)
    results = []
    for fused in (True, False):
        leaf = base.clone().requires_grad_()
        aux_reconstruction = leaf * 0.5
        if fused:
            loss = auxk_loss(aux_reconstruction, residual, n_dead, d_in=60)
        else:  # the formula as autograd computed it before (k_aux = 30)
            scale = min(n_dead / 30, 1.0)
            variance = (residual - residual.mean(0)).pow(2).sum().clamp_min(1e-12)
            loss = scale * (residual - aux_reconstruction).pow(2).sum() / variance
        (upstream * loss).backward()
        results.append((loss, leaf.grad))
    for fused_value, reference in zip(*results, strict=True):
        assert torch.equal(fused_value, reference)
