"""The Top-K SAE maths: sparse decoder, fused sparse-backward encoder, AuxK, decoder constraint,
init, weight folding."""

from __future__ import annotations

import contextlib

import pytest
import torch

from saeseeds.sae import fused_topk
from saeseeds.sae.fused_topk import TopKAutoencoder, fused_pays, use_dense
from saeseeds.sae.kernels import (
    Workspace,
    encoder_pre_activations,
    geometric_median,
    sampled_dots,
    sort_by_latent,
    sum_rows_by_latent,
    transposed,
    with_encoder_bias,
)
from saeseeds.sae.topk import TopKConfig, TopKSAE
from tests.helpers import topk_sae


def make_sae(d_in=24, n_features=96, k=6, seed=0, sparse=True) -> TopKSAE:
    generator = torch.Generator().manual_seed(seed)
    sae = topk_sae(d_in, n_features, k, sparse_decoder=sparse)
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
        (output.losses["mse"] + output.losses["auxk"]).backward()
        results[sparse] = (output, {n: p.grad.clone() for n, p in sae.named_parameters()})
    (sparse_out, sparse_grads), (dense_out, dense_grads) = results[True], results[False]
    torch.testing.assert_close(sparse_out.reconstruction, dense_out.reconstruction)
    torch.testing.assert_close(sparse_out.losses["auxk"], dense_out.losses["auxk"])
    assert sparse_out.losses["auxk"] > 0
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
    fresh = topk_sae(24, 96, 6)
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
    assert sae(x, torch.zeros(96, dtype=torch.bool)).losses["auxk"] == 0
    dead = torch.ones(96, dtype=torch.bool)
    loss_before = sae(x, dead).losses["auxk"]
    with torch.no_grad():
        # Shifting b_dec and the input together leaves pre-activations and the residual
        # unchanged, so an AuxK decode without b_dec gives the same loss.
        shift = torch.randn(24)
        sae.b_dec.add_(shift)
    assert torch.allclose(sae(x + shift, dead).losses["auxk"], loss_before, rtol=1e-4)


def test_auxk_residual_is_detached():
    sae = make_sae()
    x = torch.randn(32, 24) + 3.0
    dead = torch.zeros(96, dtype=torch.bool)
    dead[:48] = True
    sae(x, dead).losses["auxk"].backward()
    # Live latents' decoder rows reach AuxK only through the residual e = x - x̂. With e
    # detached they get no gradient; the dead latents' rows (the auxiliary decode) do.
    assert torch.all(sae.W_dec.grad[48:] == 0)
    assert sae.W_dec.grad[:48].abs().sum() > 0


def test_decoder_gradient_projection_and_renormalisation():
    sae = make_sae()
    sae.W_dec.grad = torch.randn_like(sae.W_dec)
    sae.before_optimizer_step()
    parallel = (sae.W_dec.grad * sae.W_dec).sum(1)
    torch.testing.assert_close(parallel, torch.zeros(96), atol=1e-5, rtol=0)
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    sae.after_optimizer_step()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(96))


@pytest.mark.parametrize("input_scale", [0.05, 1.0, 7.0])
def test_folded_weights_reconstruct_raw_activations(input_scale):
    sae = make_sae()
    raw = (torch.randn(64, 24) + 3.0) / input_scale
    scaled_reconstruction = sae(raw * input_scale).reconstruction
    folded = topk_sae(24, 96, 6)
    folded.load_state_dict(sae.folded_state(input_scale))
    torch.testing.assert_close(
        folded(raw).reconstruction, scaled_reconstruction / input_scale, rtol=1e-4, atol=1e-5
    )
    torch.testing.assert_close(folded.encode(raw), sae.encode(raw * input_scale))


def test_default_learning_rate_scaling():
    assert topk_sae(8, 2**14, 4).default_lr() == pytest.approx(2e-4)
    assert topk_sae(8, 2**12, 4).default_lr() == pytest.approx(4e-4)


# ---- fused forward (TopKAutoencoder): its backward must equal plain autograd ----
def make_sae_with_negative_top_latents(fused: bool, dtype=torch.float32) -> TopKSAE:
    """Half the chosen pre-activations negative, so ReLU zeros take part in the comparison."""
    sae = make_sae()
    sae.fused_encoder = fused
    with torch.no_grad():
        sample = torch.randn(256, 24, generator=torch.Generator().manual_seed(5)) + 3.0
        chosen = sae.pre_activations(sample).topk(sae.k).values
        sae.b_enc.sub_(chosen.median())
    return sae.to(dtype)


def loss_and_gradients(sae: TopKSAE, x, dead_mask):
    output = sae(x, dead_mask)
    (output.losses["mse"] + output.losses["auxk"]).backward()
    return output, {name: p.grad.clone() for name, p in sae.named_parameters()}


@pytest.mark.parametrize("n_dead", [0, 5, 40])  # none, fewer than k_aux = 12, more than k_aux
@pytest.mark.parametrize("sparse", [True, False, None])  # None: main sparse, AuxK dense
def test_fused_encoder_equals_plain_autograd(n_dead, sparse):
    x = torch.randn(128, 24, generator=torch.Generator().manual_seed(1)) + 3.0
    dead_mask = torch.zeros(96, dtype=torch.bool)
    dead_mask[torch.randperm(96, generator=torch.Generator().manual_seed(2))[:n_dead]] = True
    results = {}
    for fused in (True, False):
        sae = make_sae_with_negative_top_latents(fused)
        sae.config.sparse_decoder = sparse
        results[fused] = loss_and_gradients(sae, x, dead_mask)
    (fused_out, fused_grads), (plain_out, plain_grads) = results[True], results[False]
    zeroed = (fused_out.latent_values == 0).float().mean()
    assert 0.2 < zeroed < 0.8  # ReLU really cuts some chosen latents
    assert torch.equal(fused_out.latent_indices, plain_out.latent_indices)
    assert torch.equal(fused_out.latent_values, plain_out.latent_values)
    for field in ("reconstruction", "squared_error"):
        torch.testing.assert_close(getattr(fused_out, field), getattr(plain_out, field))
    for term in ("mse", "auxk"):
        torch.testing.assert_close(fused_out.losses[term], plain_out.losses[term])
    assert (fused_out.losses["auxk"] > 0) == (n_dead > 0)
    for name in plain_grads:
        torch.testing.assert_close(fused_grads[name], plain_grads[name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("sparse", [True, None])
def test_fused_forward_in_blocks_of_rows_equals_one_block(monkeypatch, sparse):
    """The pre-activations are searched a block of rows at a time; an uneven split of the batch
    must choose the same latents and give the same step as the whole batch at once."""
    x = torch.randn(128, 24, generator=torch.Generator().manual_seed(1)) + 3.0
    dead_mask = torch.zeros(96, dtype=torch.bool)
    dead_mask[::3] = True
    results = []
    for block_bytes in (4 * 96 * 7, 2**30):  # 19 blocks of 6 or 7 rows; one block
        monkeypatch.setattr(fused_topk, "PRE_ACTIVATION_BLOCK_BYTES", block_bytes)
        sae = make_sae_with_negative_top_latents(True)
        sae.config.sparse_decoder = sparse
        results.append(loss_and_gradients(sae, x, dead_mask))
    (blocks_out, blocks_grads), (whole_out, whole_grads) = results
    assert torch.equal(blocks_out.latent_indices, whole_out.latent_indices)
    torch.testing.assert_close(blocks_out.latent_values, whole_out.latent_values)
    torch.testing.assert_close(blocks_out.losses["auxk"], whole_out.losses["auxk"])
    assert whole_out.losses["auxk"] > 0
    for name, grad in whole_grads.items():
        torch.testing.assert_close(blocks_grads[name], grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_blocked_transpose_is_the_transpose(dtype):
    """The same values as ``.T.contiguous()``, whether the rows come in several blocks (the last
    shorter), one block, or as a non-contiguous view."""
    for rows in (
        torch.randn(2 * 256 + 37, 24).to(dtype),
        torch.randn(100, 24).to(dtype),
        torch.randn(24, 549).to(dtype).T,
    ):
        copied = transposed(rows)
        assert copied.is_contiguous() and copied.dtype == dtype
        assert torch.equal(copied, rows.T.contiguous())


def test_w_encs_gradient_is_copied_into_its_layout_only_when_needed(monkeypatch):
    """The backward hands W_enc's gradient rows to the blocked transpose once, and not at all
    when W_enc needs no gradient."""
    given = []

    def recorded(rows):
        given.append(tuple(rows.shape))
        return transposed(rows)

    monkeypatch.setattr(fused_topk, "transposed", recorded)
    sae = topk_sae(d_in=24, n_features=600, k=4)
    x = torch.randn(64, 24)
    sae(x).losses["mse"].backward()
    assert given == [(600, 24)]
    sae.W_enc.requires_grad_(False)
    sae(x).losses["mse"].backward()
    assert given == [(600, 24)]


@pytest.mark.parametrize("autocast", [False, True])
def test_the_workspace_matmul_gives_the_fresh_pre_activations_bit_for_bit(autocast):
    """Large pre-activations are written into a buffer kept between steps; the values must be
    those of the plain (autocast) matmul, in fp32 and under bf16 autocast alike."""
    generator = torch.Generator().manual_seed(2)
    x, b_dec = torch.randn(300, 40, generator=generator), torch.randn(40, generator=generator)
    W_enc, b_enc = torch.randn(40, 200, generator=generator), torch.randn(200, generator=generator)
    workspace = Workspace()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        fresh = encoder_pre_activations(x, W_enc, b_enc, b_dec)
        product = workspace.matmul(x - b_dec, W_enc)
        assert product.dtype == (torch.bfloat16 if autocast else torch.float32)
        kept = with_encoder_bias(product, b_enc)
        assert kept.dtype == torch.float32 and torch.equal(kept, fresh)
        # The next step, and a smaller batch, reuse the buffer's memory.
        assert workspace.matmul(x[:100] - b_dec, W_enc).data_ptr() == product.data_ptr()
        workspace.release()  # the memory goes back; the next call allocates afresh
        assert workspace._buffers == {}
        assert torch.equal(with_encoder_bias(workspace.matmul(x - b_dec, W_enc), b_enc), fresh)


@pytest.mark.parametrize("sparse", [True, False])
def test_fused_encoder_passes_gradcheck_in_float64(sparse):
    generator = torch.Generator().manual_seed(4)
    d_in, n_features, k = 6, 20, 3
    x = torch.randn(5, d_in, generator=generator, dtype=torch.float64)
    weights = [
        torch.randn(d_in, n_features, generator=generator, dtype=torch.float64),  # W_enc
        torch.randn(n_features, generator=generator, dtype=torch.float64),  # b_enc
        torch.randn(n_features, d_in, generator=generator, dtype=torch.float64),  # W_dec
        torch.randn(d_in, generator=generator, dtype=torch.float64),  # b_dec
    ]
    weights[1] -= 1.0  # some chosen pre-activations negative: ReLU zeros take part
    inputs = [tensor.clone().requires_grad_() for tensor in (x, *weights)]
    dead_latents = torch.arange(0, n_features, 3)

    def outputs(x, W_enc, b_enc, W_dec, b_dec):
        values, indices, reconstruction, aux_reconstruction = TopKAutoencoder.apply(
            x, W_enc, b_enc, W_dec, b_dec, k, dead_latents, d_in // 2, sparse
        )
        # Unsorted Top-K may list the same latents in another order after a finite-difference
        # nudge; ordering by latent index makes the values comparable.
        return values.gather(1, indices.argsort(1)), reconstruction, aux_reconstruction

    assert torch.autograd.gradcheck(outputs, inputs, fast_mode=True)
    sae = topk_sae(d_in, n_features, k, sparse_decoder=sparse).double()
    sae.initialize(torch.randn(64, d_in, generator=generator, dtype=torch.float64), generator)
    with torch.no_grad():
        sae.W_enc.add_(0.3 * torch.randn(sae.W_enc.shape, generator=generator, dtype=x.dtype))
        sae.W_dec.add_(0.3 * torch.randn(sae.W_dec.shape, generator=generator, dtype=x.dtype))
        # Some chosen latents negative (ReLU zeros), none exactly at ReLU's kink.
        sae.b_enc.sub_(sae.pre_activations(x).topk(k).values.median() + 0.05)

    def reconstruction_loss(*params):
        # The MSE only: AuxK's detached residual makes its analytic gradient differ, by design,
        # from finite differences; the Function-level check above covers the AuxK outputs.
        names = ("W_enc", "b_enc", "W_dec", "b_dec")
        parameters = dict(zip(names, params, strict=True))
        return torch.func.functional_call(sae, parameters, (x.detach(),)).losses["mse"]

    params = [p.detach().clone().requires_grad_() for p in sae.parameters()]
    assert torch.autograd.gradcheck(reconstruction_loss, params, fast_mode=True)


@pytest.mark.parametrize("sparse", [True, False])
def test_fused_encoder_under_bf16_autocast_is_close_to_fp32_and_to_plain_bf16(sparse):
    x = torch.randn(128, 24, generator=torch.Generator().manual_seed(1)) + 3.0
    dead_mask = torch.zeros(96, dtype=torch.bool)
    dead_mask[::3] = True

    def run(fused: bool):
        sae = make_sae_with_negative_top_latents(fused)
        sae.config.sparse_decoder = sparse
        return loss_and_gradients(sae, x, dead_mask)

    fp32_out, fp32_grads = run(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = {fused: run(fused) for fused in (True, False)}
    (bf16_out, bf16_grads), (plain_out, plain_grads) = bf16[True], bf16[False]
    # Same bf16 matmul in the forward, so the same latents and losses as plain autocast.
    assert torch.equal(bf16_out.latent_indices, plain_out.latent_indices)
    torch.testing.assert_close(bf16_out.losses["mse"], plain_out.losses["mse"])
    torch.testing.assert_close(bf16_out.losses["auxk"], plain_out.losses["auxk"])
    torch.testing.assert_close(bf16_out.losses["mse"], fp32_out.losses["mse"], rtol=3e-2, atol=0)
    torch.testing.assert_close(bf16_out.losses["auxk"], fp32_out.losses["auxk"], rtol=3e-2, atol=0)
    for name, fp32_grad in fp32_grads.items():
        assert bf16_grads[name].dtype == torch.float32  # gradients stay in the parameters' dtype
        # The dense backward's matmuls round to bf16 as plain autocast's do; the sparse
        # backward stays in fp32.
        assert (bf16_grads[name] - plain_grads[name]).norm() < 1e-2 * fp32_grad.norm(), name
        assert (bf16_grads[name] - fp32_grad).norm() < 0.1 * fp32_grad.norm(), name


def test_fused_training_steps_are_bit_identical_under_deterministic_algorithms():
    x = torch.randn(128, 24, generator=torch.Generator().manual_seed(1)) + 3.0
    dead_mask = torch.zeros(96, dtype=torch.bool)
    dead_mask[::3] = True
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(2):
            sae = make_sae_with_negative_top_latents(True)
            optimizer = torch.optim.Adam(sae.parameters(), lr=1e-2)
            for _ in range(3):
                output = sae(x, dead_mask)
                optimizer.zero_grad()
                (output.losses["mse"] + output.losses["auxk"]).backward()
                optimizer.step()
            runs.append([p.detach().clone() for p in sae.parameters()])
    finally:
        torch.use_deterministic_algorithms(previous)
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


def test_size_rule_picks_dense_for_small_dictionaries_only():
    assert use_dense(128, 32, None) and use_dense(2048, 288, None)  # n=128; AuxK, 2048 dead
    assert not use_dense(16384, 32, None) and not use_dense(4915, 288, None)
    assert use_dense(16384, 32, False) and not use_dense(128, 32, True)  # forced


@contextlib.contextmanager
def cuda_autocast_state(dtype: torch.dtype):
    """The thread's CUDA autocast state set as ``torch.autocast("cuda", dtype)`` would set it;
    the rules read only that state and the device type, so no GPU is needed."""
    enabled, previous_dtype = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    torch.set_autocast_enabled("cuda", True)
    torch.set_autocast_dtype("cuda", dtype)
    try:
        yield
    finally:
        torch.set_autocast_dtype("cuda", previous_dtype)
        torch.set_autocast_enabled("cuda", enabled)


def test_size_rule_on_a_cuda_device_goes_dense_further_under_bf16_autocast():
    """The k latents dense up to 256 columns per entry in float32 and 1024 under bf16 autocast,
    AuxK up to 32, as an H200 measured, and never a dense code over 2^27 entries."""
    rows = 4096
    assert use_dense(4096, 32, None, rows, "cuda") and not use_dense(16384, 32, None, rows, "cuda")
    assert use_dense(4915, 288, None, rows, "cuda", auxk=True)  # 16384 latents, 30% dead
    assert not use_dense(19660, 288, None, rows, "cuda", auxk=True)  # 65536 latents, 30% dead
    assert not use_dense(4096, 32, None, rows, "cpu")  # the CPU's rule is unchanged
    assert not use_dense(4915, 288, None, rows, "cpu", auxk=True)
    with cuda_autocast_state(torch.bfloat16):
        assert use_dense(16384, 32, None, rows, "cuda")
        assert not use_dense(65536, 32, None, rows, "cuda")
        assert not use_dense(16384, 32, None, rows, "cpu")
        assert not use_dense(2**16, 288, None, rows, "cuda")  # 2^28 entries: too large
        assert use_dense(2**15, 288, None, rows, "cuda")  # 2^27 entries
        assert not use_dense(4096, 32, True, rows, "cuda")  # forced
    with cuda_autocast_state(torch.float16):  # not measured: the float32 rule
        assert not use_dense(16384, 32, None, rows, "cuda")


def test_plain_autograd_trains_only_under_bf16_autocast_on_a_cuda_device_up_to_16384_latents():
    assert fused_pays(4096, 4096, "cpu") and fused_pays(4096, 4096, "cuda")
    with cuda_autocast_state(torch.bfloat16):
        assert not fused_pays(4096, 4096, "cuda") and not fused_pays(4096, 16384, "cuda")
        assert fused_pays(4096, 16385, "cuda")
        assert not fused_pays(8192, 16384, "cuda")  # 2^27 dense entries: still plain
        assert fused_pays(8193, 16384, "cuda")  # past 2^27: the fused function
        assert fused_pays(4096, 4096, "cpu")
    with cuda_autocast_state(torch.float16):  # not measured: the fused function
        assert fused_pays(4096, 4096, "cuda")


def forward_and_gradients(fused_encoder, x, dead_mask):
    sae = make_sae_with_negative_top_latents(True)
    sae.fused_encoder = fused_encoder
    return loss_and_gradients(sae, x, dead_mask)


def test_the_encoder_is_picked_per_forward_by_the_rule_unless_forced(monkeypatch):
    """``fused_encoder=None`` (the default of TopKSAE and of the archetypal SAE built on it) asks
    ``fused_pays`` at each forward: on this CPU the fused function, bit for bit; where the rule
    says plain (as under bf16 autocast on a GPU), plain autograd, bit for bit; True and False
    force either whatever it says."""
    from saeseeds.sae.archetypal import ArchetypalConfig, ArchetypalSAE

    assert TopKSAE(24, TopKConfig(n_features=96, k=6)).fused_encoder is None
    archetypal = ArchetypalSAE(24, ArchetypalConfig(n_features=96, k=6, n_anchors=96))
    assert archetypal.fused_encoder is None
    x = torch.randn(128, 24, generator=torch.Generator().manual_seed(1)) + 3.0
    dead_mask = torch.zeros(96, dtype=torch.bool)
    dead_mask[::3] = True

    def same(a, b) -> bool:
        (out_a, grads_a), (out_b, grads_b) = a, b
        return torch.equal(out_a.reconstruction, out_b.reconstruction) and all(
            torch.equal(grads_a[name], grads_b[name]) for name in grads_a
        )

    fused, plain = (forward_and_gradients(choice, x, dead_mask) for choice in (True, False))
    assert same(forward_and_gradients(None, x, dead_mask), fused)
    monkeypatch.setattr("saeseeds.sae.topk.fused_pays", lambda rows, n_features, device: False)
    assert same(forward_and_gradients(None, x, dead_mask), plain)
    assert same(forward_and_gradients(True, x, dead_mask), fused)


def test_latent_order_sums_and_dot_products_match_explicit_loops():
    """The sparse backward's kernels: a stable sort by latent, each latent's weighted row sum,
    and one dot product per (row, column) entry."""
    generator = torch.Generator().manual_seed(6)
    n_features, n_entries = 7, 40
    latents = torch.randint(0, n_features - 1, (n_entries,), generator=generator)  # one unused
    rows = torch.randn(10, 5, generator=generator, dtype=torch.float64)
    row_ids = torch.randint(0, 10, (n_entries,), generator=generator)
    weights = torch.randn(n_entries, generator=generator, dtype=torch.float64)
    order = sort_by_latent(latents, n_features)
    expected_order = sorted(range(n_entries), key=lambda e: int(latents[e]))  # Python's is stable
    assert order.order.tolist() == expected_order
    assert order.crow.tolist() == [int((latents < j).sum()) for j in range(n_features + 1)]
    sums = sum_rows_by_latent(order, rows, row_ids[order.order], weights[order.order])
    for latent in range(n_features):
        chosen = (latents == latent).nonzero().squeeze(1)
        expected = (weights[chosen, None] * rows[row_ids[chosen]]).sum(0)
        torch.testing.assert_close(sums[latent], expected)
    left = torch.randn(n_features, 5, generator=generator, dtype=torch.float64)
    dots = sampled_dots(order.crow, row_ids[order.order], left, rows)
    expected_dots = (left[order.latents] * rows[row_ids[order.order]]).sum(1)
    torch.testing.assert_close(dots, expected_dots)
