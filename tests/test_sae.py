"""The Top-K SAE maths: sparse decoder, AuxK, decoder constraint, init, weight folding."""

from __future__ import annotations

import pytest
import torch

from saeseeds.sae import TopKSAE, default_learning_rate, geometric_median


def make_sae(d_in=24, n_features=96, k=6, seed=0, sparse=True) -> TopKSAE:
    generator = torch.Generator().manual_seed(seed)
    sae = TopKSAE(d_in, n_features, k, sparse_decoder=sparse)
    sae.initialize(torch.randn(512, d_in, generator=generator) + 3.0, generator)
    with torch.no_grad():  # move off the tied init so encoder and decoder differ
        sae.W_enc.add_(0.1 * torch.randn(sae.W_enc.shape, generator=generator))
        sae.b_enc.add_(0.1 * torch.randn(sae.b_enc.shape, generator=generator))
    return sae


def test_sparse_decoder_equals_dense_outputs_and_gradients():
    x = torch.randn(128, 24, generator=torch.Generator().manual_seed(1)) + 3.0
    dead_mask = torch.zeros(96, dtype=torch.bool)
    dead_mask[::3] = True  # exercise the AuxK decode too
    results = {}
    for sparse in (True, False):
        sae = make_sae(sparse=sparse)
        output = sae(x, dead_mask)
        (output.mse + output.aux_loss).backward()
        results[sparse] = (output, {n: p.grad.clone() for n, p in sae.named_parameters()})
    (sparse_out, sparse_grads), (dense_out, dense_grads) = results[True], results[False]
    torch.testing.assert_close(sparse_out.reconstruction, dense_out.reconstruction)
    torch.testing.assert_close(sparse_out.aux_loss, dense_out.aux_loss)
    assert sparse_out.aux_loss > 0
    for name in sparse_grads:
        torch.testing.assert_close(sparse_grads[name], dense_grads[name], rtol=1e-4, atol=1e-6)


def test_topk_keeps_exactly_k_latents_and_encode_decode_matches_forward():
    sae = make_sae()
    x = torch.randn(64, 24) + 3.0
    z = sae.encode(x)
    assert ((z > 0).sum(1) <= sae.k).all()
    torch.testing.assert_close(sae.decode(z), sae(x).reconstruction, rtol=1e-5, atol=1e-5)


def test_initialisation_follows_gao_et_al():
    sae = make_sae(seed=3)
    fresh = TopKSAE(24, 96, 6)
    generator = torch.Generator().manual_seed(3)
    sample = torch.randn(512, 24, generator=generator) + 3.0
    fresh.initialize(sample, generator)
    torch.testing.assert_close(fresh.W_dec.norm(dim=1), torch.ones(96))
    torch.testing.assert_close(fresh.W_enc, fresh.W_dec.T)
    assert torch.all(fresh.b_enc == 0)
    torch.testing.assert_close(fresh.b_dec, geometric_median(sample))
    assert sae.W_dec.shape == (96, 24)


def test_geometric_median_is_robust_to_outliers():
    points = torch.zeros(101, 2)
    points[:51, 0] = 1.0  # 51 points at (1, 0), 50 at (0, 0) ...
    points[100] = torch.tensor([1000.0, 1000.0])  # ... and one far outlier
    median = geometric_median(points)
    assert median.norm() < 1.5  # the mean would be near (10.5, 9.9)
    assert points.mean(0).norm() > 10


def test_auxk_loss_is_zero_without_dead_latents_and_ignores_b_dec():
    sae = make_sae()
    x = torch.randn(32, 24) + 3.0
    assert sae(x, torch.zeros(96, dtype=torch.bool)).aux_loss == 0
    dead = torch.ones(96, dtype=torch.bool)
    loss_before = sae(x, dead).aux_loss
    with torch.no_grad():
        # Shifting b_dec and the input together leaves pre-activations and the residual
        # unchanged, so an AuxK decode without b_dec gives the same loss.
        shift = torch.randn(24)
        sae.b_dec.add_(shift)
    assert torch.allclose(sae(x + shift, dead).aux_loss, loss_before, rtol=1e-4)


def test_auxk_residual_is_detached():
    sae = make_sae()
    x = torch.randn(32, 24) + 3.0
    dead = torch.zeros(96, dtype=torch.bool)
    dead[:48] = True
    sae(x, dead).aux_loss.backward()
    # Live latents' decoder rows reach AuxK only through the residual e = x - x̂. With e
    # detached they get no gradient; the dead latents' rows (the auxiliary decode) do.
    assert torch.all(sae.W_dec.grad[48:] == 0)
    assert sae.W_dec.grad[:48].abs().sum() > 0


def test_decoder_gradient_projection_and_renormalisation():
    sae = make_sae()
    sae.W_dec.grad = torch.randn_like(sae.W_dec)
    sae.remove_parallel_decoder_grad()
    parallel = (sae.W_dec.grad * sae.W_dec).sum(1)
    torch.testing.assert_close(parallel, torch.zeros(96), atol=1e-5, rtol=0)
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    sae.normalize_decoder_rows()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(96))


@pytest.mark.parametrize("input_scale", [0.05, 1.0, 7.0])
def test_folded_weights_reconstruct_raw_activations(input_scale):
    sae = make_sae()
    raw = (torch.randn(64, 24) + 3.0) / input_scale
    scaled_reconstruction = sae(raw * input_scale).reconstruction
    folded = TopKSAE(24, 96, 6)
    folded.load_state_dict(sae.folded_state(input_scale))
    torch.testing.assert_close(
        folded(raw).reconstruction, scaled_reconstruction / input_scale, rtol=1e-4, atol=1e-5
    )
    torch.testing.assert_close(folded.encode(raw), sae.encode(raw * input_scale))


def test_default_learning_rate_scaling():
    assert default_learning_rate(2**14) == pytest.approx(2e-4)
    assert default_learning_rate(2**12) == pytest.approx(4e-4)
