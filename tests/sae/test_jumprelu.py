"""The JumpReLU SAE: its straight-through estimators, the L0 penalty and its warm-up, the
threshold's constraint and what is saved."""

from __future__ import annotations

import pytest
import torch

from saeseeds.errors import ConfigError
from saeseeds.sae.jumprelu import JumpReLU, JumpReLUConfig, JumpReLUSAE, Step
from tests.sae.test_architectures import train_steps

D_IN, N_FEATURES = 8, 24


def make_sae(**fields) -> tuple[JumpReLUSAE, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    sae = JumpReLUSAE(D_IN, JumpReLUConfig(n_features=N_FEATURES, **fields))
    x = torch.randn(256, D_IN, generator=generator) * 2
    sae.initialize(x, generator)
    return sae, x


def test_straight_through_estimators_are_the_papers():
    """∂z/∂pre = 1[pre > θ]; ∂z/∂θ = −(θ/ε)·K((pre−θ)/ε); ∂H/∂θ = −(1/ε)·K; nothing to pre
    from the step (Rajamanoharan et al. 2024, §4)."""
    bandwidth = 0.5
    pre = torch.tensor([[0.1, 1.1, 0.9], [1.3, 0.6, 2.0]], requires_grad=True)
    threshold = torch.tensor([1.0, 1.0, 0.5], requires_grad=True)
    upstream = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    z = JumpReLU.apply(pre, threshold, bandwidth)
    assert torch.equal(z, torch.tensor([[0.0, 1.1, 0.9], [1.3, 0.0, 2.0]]))
    z.backward(upstream)
    assert torch.equal(pre.grad, upstream * torch.tensor([[0.0, 1, 1], [1, 0, 1]]))
    # |pre − θ| < ε/2 = 0.25: entries (0,1) 0.1 and (1,1) 0.4→no; (0,2) 0.4→no; (1,0) 0.3→no.
    torch.testing.assert_close(threshold.grad, torch.tensor([0.0, -(1.0 / 0.5) * 2.0, 0.0]))

    pre.grad = threshold.grad = None
    step = Step.apply(pre, threshold, bandwidth)
    assert torch.equal(step, torch.tensor([[0.0, 1, 1], [1, 0, 1]]))
    step.backward(upstream)
    assert pre.grad is None
    torch.testing.assert_close(threshold.grad, torch.tensor([0.0, -2.0 / 0.5, 0.0]))


def test_l0_penalty_counts_active_latents_and_warms_up():
    sae, x = make_sae(l0_coefficient=3.0, l0_warmup_fraction=0.5)
    sae.train()
    sae.set_progress(4, 100)  # 5 of the 50 warm-up steps
    output = sae(x)
    l0 = (output.latent_values > 0).sum(-1).float().mean()
    torch.testing.assert_close(output.losses["l0"], 3.0 * 0.1 * l0 / D_IN)
    sae.set_progress(60, 100)
    torch.testing.assert_close(sae(x).losses["l0"], 3.0 * l0 / D_IN)
    assert set(sae.eval()(x).losses) == {"mse"}  # held-out outputs carry no penalty


def test_thresholds_start_at_the_square_root_of_the_coefficient_unless_set():
    assert torch.all(make_sae(l0_coefficient=2.25)[0].threshold == 1.5)
    assert torch.all(make_sae(l0_coefficient=2.25, threshold_init=0.01)[0].threshold == 0.01)


def test_the_l0_coefficient_raises_thresholds_and_lowers_l0():
    results = {}
    for coefficient in (0.0, 20.0):
        sae, x = make_sae(l0_coefficient=coefficient, l0_warmup_fraction=0.0, threshold_init=0.01)
        train_steps(sae, x, 60, lr=0.02)
        with torch.no_grad():
            l0 = float((sae.encode(x) > 0).sum(-1).float().mean())
        results[coefficient] = (float(sae.threshold.detach().mean()), l0)
    (theta_free, l0_free), (theta_sparse, l0_sparse) = results[0.0], results[20.0]
    assert theta_sparse > theta_free and theta_sparse > 0.5
    assert l0_sparse < 0.5 * l0_free
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(N_FEATURES))  # unit rows


def test_threshold_never_goes_below_zero_and_is_saved_as_the_inference_rule():
    sae, x = make_sae(l0_coefficient=0.0, threshold_init=0.0)
    with torch.no_grad():
        sae.threshold.copy_(torch.linspace(0.0, 0.002, N_FEATURES))
    train_steps(sae, x, 5, lr=0.5)  # reconstruction alone pulls thresholds down
    assert float(sae.threshold.detach().min()) == 0.0  # projected back onto θ >= 0
    state = sae.folded_state(0.5)
    assert torch.equal(state["threshold"], sae.threshold.detach())  # latents need no folding
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    torch.testing.assert_close(sae.encode(x), pre * (pre > sae.threshold))
    assert sae.cfg_fields() == {"l0_coefficient": 0.0}


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("l0_coefficient", -1.0, r"sae.l0_coefficient=-1.0 must be >= 0"),
        ("bandwidth", 0.0, r"sae.bandwidth=0.0 must be > 0"),
        ("threshold_init", -0.1, r"sae.threshold_init=-0.1 must be >= 0 or null"),
        ("l0_warmup_fraction", 2.0, r"sae.l0_warmup_fraction=2.0 must be in \[0, 1\]"),
    ],
)
def test_invalid_fields_name_the_value(field, value, message):
    with pytest.raises(ConfigError, match=message):
        JumpReLUConfig(**{field: value})
