"""The synthetic world: the default sampler's samples are its documented formula, bit for bit; the
sparse sampler draws the same law from k_true distinct features per row; the feature hierarchy's
children fire only with their parent, one at a time, at the configured rate (with either
sampler); shards stay a function of (data_seed, index); bad settings are refused."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open

from saeseeds import contract
from saeseeds.activations.shards import seeded_generator
from saeseeds.activations.synthetic import SyntheticSource
from saeseeds.errors import DataError
from saeseeds.ground_truth import GroundTruth
from tests.helpers import compose_train

# 24 features in 32 dimensions, no noise: a sample's codes are recovered exactly by least squares.
WORLD = dict(
    d_in=32, n_true_features=24, k_true=3, noise_std=0.0, min_magnitude=0.5, max_magnitude=1.5,
    n_tokens=1024, heldout_tokens=64, batch_size=256, data_seed=7, shard_tokens=512,
)  # fmt: skip
HIERARCHY = {"n_parents": 4, "children_per_parent": 3, "child_probability": 0.6}


def codes_of(source: SyntheticSource, samples: torch.Tensor) -> torch.Tensor:
    """The magnitudes behind noise-free samples: [n, n_true_features], zero where inactive."""
    solution = torch.linalg.lstsq(source.true_directions.T.double(), samples.T.double()).solution
    codes = solution.T
    return torch.where(codes.abs() > 1e-6, codes, torch.zeros_like(codes))


def test_the_default_sampler_is_its_documented_formula_bit_for_bit():
    """A uniform score per feature, the top k_true, magnitudes, the dense codes times the
    dictionary, then the noise: the samples of every synthetic run before the sparse sampler."""
    source = SyntheticSource(**{**WORLD, "noise_std": 0.01})
    generator = seeded_generator(7, "train", 2)
    active = torch.rand(300, 24, generator=generator).topk(3, dim=1).indices
    magnitudes = 0.5 + 1.0 * torch.rand(300, 3, generator=generator)
    codes = torch.zeros(300, 24).scatter_(1, active, magnitudes)
    noise = 0.01 * torch.randn(300, 32, generator=generator)
    assert torch.equal(source.train_shard(2, 300), codes @ source.true_directions + noise)


@pytest.mark.parametrize("k_true", [3, 8])  # 8: 8·7 > 2·24 features, the dense draw's branch
def test_the_sparse_sampler_draws_k_true_distinct_features_uniformly(k_true):
    source = SyntheticSource(**{**WORLD, "k_true": k_true}, sampler="sparse")
    dense = SyntheticSource(**{**WORLD, "k_true": k_true})
    assert torch.equal(source.true_directions, dense.true_directions)  # the same dictionary
    samples = source.train_shard(0, 6000)
    assert torch.equal(samples, source.train_shard(0, 6000))  # a function of (seed, index)
    if k_true == 3:  # another stream (the dense draw's branch differs by rounding only)
        assert not torch.equal(samples, dense.train_shard(0, 6000))
    codes = codes_of(source, samples)
    assert bool(((codes > 0).sum(1) == k_true).all())  # k_true distinct features, every row
    assert bool(((codes == 0) | (codes >= 0.5 - 1e-5)).all())  # magnitudes in [0.5, 1.5]
    assert float(codes.max()) <= 1.5 + 1e-5
    frequency = (codes > 0).float().mean(0)  # each feature k_true/24 of the time
    assert float((frequency - k_true / 24).abs().max()) < 0.02, frequency


def test_the_sparse_sampler_is_part_of_the_data_identity_and_refuses_unknown_names(tmp_path):
    def run_config(*overrides: str) -> dict:
        cfg = compose_train(["data=synthetic", *overrides], tmp_path)
        return contract.run_config(OmegaConf.to_container(cfg, resolve=True))

    default, sparse = run_config(), run_config("data.sampler=sparse")
    assert "sampler" not in default["data"]  # null is left out: older folders still match
    assert sparse["data"]["sampler"] == "sparse"
    assert contract.condition_config(sparse) != contract.condition_config(default)
    assert "sampler" not in SyntheticSource(**WORLD).provenance()["data_identity"]
    identity = SyntheticSource(**WORLD, sampler="sparse").provenance()["data_identity"]
    assert identity["sampler"] == "sparse"
    with pytest.raises(DataError, match="data.sampler='dense' is not valid; use null"):
        SyntheticSource(**WORLD, sampler="dense")


@pytest.mark.parametrize("sampler", [None, "sparse"])
def test_children_fire_only_with_their_parent_one_at_a_time_at_the_set_rate(sampler):
    source = SyntheticSource(**WORLD, hierarchy=HIERARCHY, sampler=sampler)
    codes = codes_of(source, source.train_shard(0, 4000))  # [4000, 24]
    active = codes > 0
    parents, children, free = active[:, :4], active[:, 4:16], active[:, 16:]
    assert bool((codes >= 0).all()) and bool((codes <= 1.5 + 1e-5).all())
    # k_true features drawn among parents and free features; children come on top.
    assert bool(((parents.sum(1) + free.sum(1)) == 3).all())
    by_parent = children.reshape(-1, 4, 3)  # [n, parent, child]
    assert bool((by_parent.sum(2) <= 1).all())  # at most one child per parent
    assert not bool((by_parent.any(2) & ~parents).any())  # never without the parent
    rate = float(by_parent.any(2)[parents].float().mean())
    assert abs(rate - 0.6) < 0.05, rate
    # Parents are drawn like free features: 3 of 12 drawable ones per sample.
    assert abs(float(parents.float().mean()) - 3 / 12) < 0.02


def test_shards_depend_on_seed_and_index_only_and_the_ground_truth_records_parents(tmp_path):
    source = SyntheticSource(**WORLD, hierarchy=HIERARCHY)
    again = SyntheticSource(**{**WORLD, "n_tokens": 4096}, hierarchy=HIERARCHY)
    assert torch.equal(source.train_shard(3, 512), again.train_shard(3, 512))
    assert not torch.equal(source.train_shard(3, 512), source.train_shard(4, 512))
    flat = SyntheticSource(**WORLD, hierarchy={**HIERARCHY, "n_parents": 0})
    assert flat.hierarchy is None and "hierarchy" not in flat.provenance()["data_identity"]
    assert source.provenance()["data_identity"]["hierarchy"] == HIERARCHY
    assert torch.equal(flat.train_shard(0, 64), SyntheticSource(**WORLD).train_shard(0, 64))

    source.write_artifacts(tmp_path)
    with safe_open(tmp_path / "ground_truth.safetensors", "pt") as file:
        truth = GroundTruth.from_tensors({name: file.get_tensor(name) for name in file.keys()})
        assert file.metadata()["n_parents"] == "4"
    assert truth.parents.tolist() == [-1] * 4 + [p for p in range(4) for _ in range(3)] + [-1] * 8
    assert torch.equal(truth.directions, source.ground_truth().directions)


@pytest.mark.parametrize(
    "hierarchy, message",
    [
        ({"n_parents": 8, "children_per_parent": 3}, "need 32 features, more than"),
        ({"n_parents": 1, "children_per_parent": 22}, "data.k_true=3 must be at most the 2"),
        ({"n_parents": -1}, "data.hierarchy.n_parents=-1"),
        ({"child_probability": 1.5}, "data.hierarchy.child_probability=1.5 must be in [0, 1]"),
    ],
)
def test_impossible_hierarchies_are_refused_with_the_bad_value(hierarchy, message):
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]")):
        SyntheticSource(**WORLD, hierarchy={**HIERARCHY, **hierarchy})


def test_an_off_hierarchy_is_left_out_of_the_run_config_so_older_folders_still_match(tmp_path):
    def run_config(*overrides: str) -> dict:
        cfg = compose_train(["data=synthetic", *overrides], tmp_path)
        return contract.run_config(OmegaConf.to_container(cfg, resolve=True))

    default = run_config()
    assert "hierarchy" not in default["data"]
    assert run_config("data.hierarchy.child_probability=0.9") == default
    on = run_config("data.hierarchy.n_parents=8")
    assert on["data"]["hierarchy"] == {
        "n_parents": 8,
        "children_per_parent": 2,
        "child_probability": 0.5,
    }
    assert contract.condition_config(on) != contract.condition_config(default)
