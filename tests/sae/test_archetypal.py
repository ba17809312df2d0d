"""The relaxed archetypal SAE: anchors from k-means, decoder rows kept in the relaxed convex hull
of the anchors, the effective decoder as W_dec."""

from __future__ import annotations

import pytest
import torch

from saeseeds.errors import ConfigError
from saeseeds.sae.archetypal import ArchetypalConfig, ArchetypalSAE, kmeans
from saeseeds.sae.kernels import geometric_median
from tests.sae.test_architectures import train_steps

D_IN, N_FEATURES = 8, 16


def clustered(
    n_clusters: int, per_cluster: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    centres = 10 * torch.randn(n_clusters, D_IN, generator=generator)
    points = centres.repeat_interleave(per_cluster, 0)
    return points + 0.1 * torch.randn(points.shape, generator=generator), centres


def test_kmeans_finds_well_separated_clusters():
    points, centres = clustered(6, 50)
    found = kmeans(points, 6, torch.Generator().manual_seed(3))
    distances = torch.cdist(centres, found)
    assert torch.equal(distances.argmin(1).sort().values, torch.arange(6))  # one each
    assert float(distances.min(1).values.max()) < 0.1


def make_sae(**fields) -> tuple[ArchetypalSAE, torch.Tensor]:
    points, _ = clustered(N_FEATURES, 16, seed=1)
    config = ArchetypalConfig(n_features=N_FEATURES, k=3, init_sample_size=256, **fields)
    sae = ArchetypalSAE(D_IN, config)
    sae.initialize(points, torch.Generator().manual_seed(2))
    return sae, points


def test_initial_rows_are_the_centred_anchors_at_unit_rms_norm():
    sae, points = make_sae()
    torch.testing.assert_close(sae.b_dec, geometric_median(points))
    rows = sae.W_dec
    torch.testing.assert_close(rows.pow(2).sum(1).mean(), torch.tensor(1.0))
    rms = sae.anchors.pow(2).sum(1).mean().sqrt()
    torch.testing.assert_close(rows, sae.anchors / rms)  # A = I, Λ = 0, s = 1/r
    # the anchors are the k-means centroids of the sample centred on b_dec
    nearest = torch.cdist(points - sae.b_dec, sae.anchors).argmin(1)
    for anchor in range(N_FEATURES):
        torch.testing.assert_close(
            sae.anchors[anchor], (points - sae.b_dec)[nearest == anchor].mean(0)
        )
    directions = rows / rows.norm(dim=1, keepdim=True)
    torch.testing.assert_close(sae.W_enc, directions.T)
    assert "W_dec" not in dict(sae.named_parameters()) and "W_dec" in sae.state_dict()


def test_rows_stay_in_the_relaxed_hull_of_the_anchors_while_training():
    sae, points = make_sae(relaxation=0.05)
    anchors = sae.anchors.clone()
    dead = torch.zeros(N_FEATURES, dtype=torch.bool)
    dead[::4] = True
    losses = train_steps(sae, points, 20, lr=0.05, dead_mask=dead)
    assert losses[-1] < 0.8 * losses[0]
    assert torch.equal(sae.anchors, anchors)  # fixed points of the data
    weights = sae.anchor_weights.detach()
    assert bool((weights >= 0).all())
    torch.testing.assert_close(weights.sum(1), torch.ones(N_FEATURES))
    assert not torch.allclose(weights, torch.eye(N_FEATURES))  # the mixture did train
    bound = 0.05 * anchors.pow(2).sum(1).mean().sqrt()
    assert float(sae.relaxation.detach().norm(dim=1).max()) <= float(bound) * (1 + 1e-5)
    scale = sae.log_scale.detach().exp()
    expected = scale * (weights @ anchors + sae.relaxation.detach())
    torch.testing.assert_close(sae.W_dec, expected)  # W_dec is the effective decoder
    assert sae.cfg_fields() == {"k": 3, "n_anchors": N_FEATURES}


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"n_anchors": 8}, r"sae.n_anchors=8 \(8 anchors\) must be between sae.n_features=16"),
        (
            {"init_sample_size": 10},
            r"must be between sae.n_features=16 and sae.init_sample_size=10",
        ),
        ({"unit_norm_decoder": True}, r"sae.unit_norm_decoder=true is not available"),
        ({"relaxation": -1.0}, r"sae.relaxation=-1.0 must be >= 0"),
    ],
)
def test_invalid_fields_name_the_value(fields, message):
    with pytest.raises(ConfigError, match=message):
        ArchetypalConfig(n_features=N_FEATURES, k=3, **fields)


def test_too_few_activations_for_the_anchors_is_a_clear_error():
    sae = ArchetypalSAE(D_IN, ArchetypalConfig(n_features=N_FEATURES, k=3))
    with pytest.raises(ConfigError, match=r"needs at least 16 activations .* gave 10"):
        sae.initialize(torch.randn(10, D_IN), torch.Generator().manual_seed(0))
