"""The masking experiment's parts: which features are masked, the equal-mass frequency-matched
partner set, and what masking does to a real SAE's reconstruction."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from saeseeds.studies.masking import (
    RunFeatures,
    frequency_matched,
    heldout_metrics,
    keep_vector,
    masks_of,
    run_config,
)
from saeseeds.training.metrics import evaluate_heldout
from tests.helpers import topk_sae


def features(reappearance, fire_count, mass) -> RunFeatures:
    fire_count = np.asarray(fire_count)
    return RunFeatures(np.asarray(reappearance, float), fire_count, fire_count / 1000.0,
                       np.asarray(mass, float))  # fmt: skip


def test_stable_unstable_and_dead_features():
    run = features([1.0, 0.0, 0.5, 0.0, 1.0], [10, 20, 30, 0, 5], [5.0, 8.0, 9.0, 0.0, 2.0])
    masks, info = masks_of(run, epsilon=0.05)
    assert masks["stable"].tolist() == [0, 4]
    assert masks["unstable"].tolist() == [1]  # feature 3 is unstable but dead: neither
    assert (info["n_live"], info["n_stable"], info["n_unstable"]) == (4, 2, 1)
    assert info["mass_share_stable"] == pytest.approx(7.0 / 24.0)


def test_the_partner_set_matches_mass_and_frequency():
    rng = np.random.default_rng(0)
    n = 200
    fire_count = rng.integers(1, 1000, size=n)
    mass = fire_count * rng.uniform(0.5, 2.0, size=n)
    run = features(np.zeros(n), fire_count, mass)
    reference, candidates = np.arange(10), np.arange(10, n)
    partner = frequency_matched(reference, candidates, run)
    target = mass[reference].sum()
    assert len(set(partner.tolist())) == len(partner) and set(partner) <= set(candidates)
    assert target <= mass[partner].sum() < target + mass[partner].max()
    # Nearest in log frequency: the partners' frequencies track the reference's.
    reference_log = np.sort(np.log(fire_count[reference]))
    partner_log = np.sort(np.log(fire_count[partner]))[: len(reference_log)]
    assert np.abs(np.median(reference_log) - np.median(partner_log)) < 0.5


def test_the_smaller_mass_set_is_masked_whole():
    run = features([1, 1, 0, 0, 0, 0], [50, 40, 50, 45, 10, 5], [10.0, 8.0, 9.0, 9.0, 2.0, 1.0])
    masks, info = masks_of(run, epsilon=0.05)
    assert info["matched"]["masked_whole"] == "stable"
    assert masks["matched_stable"].tolist() == [0, 1]
    assert sorted(masks["matched_unstable"].tolist()) == [2, 3]  # nearest frequencies, mass 18


def test_masking_zeroes_codes_before_decoding():
    torch.manual_seed(0)
    sae = topk_sae(d_in=8, n_features=32, k=4)
    sae.initialize(torch.randn(512, 8), torch.Generator().manual_seed(0))
    heldout = torch.randn(300, 8) * torch.linspace(0.5, 2.0, 8) + 1.0
    nothing = heldout_metrics(sae, heldout, keep_vector(sae, np.array([], dtype=np.int64)))
    trained_app, _, _ = evaluate_heldout(sae, heldout, 64)
    assert nothing["fvu"] == pytest.approx(trained_app["fvu"], rel=1e-6)
    assert nothing["l0"] == pytest.approx(trained_app["l0"])
    everything = heldout_metrics(sae, heldout, keep_vector(sae, np.arange(32)))
    variance = (heldout.double() - heldout.double().mean(0)).pow(2).sum()

    def fvu_of(reconstruction: torch.Tensor) -> float:
        return float((heldout.double() - reconstruction.double()).pow(2).sum() / variance)

    with torch.no_grad():
        assert everything["l0"] == 0
        assert everything["fvu"] == pytest.approx(fvu_of(sae.b_dec.expand_as(heldout)), rel=1e-6)
        codes = sae.encode(heldout)
        codes[:, :16] = 0  # the first half masked, the rest kept as Top-K chose them
        half = heldout_metrics(sae, heldout, keep_vector(sae, np.arange(16)))
        assert half["fvu"] == pytest.approx(fvu_of(codes @ sae.W_dec + sae.b_dec), rel=1e-6)
        assert half["l0"] == pytest.approx(float((codes > 0).sum(1).double().mean()))


@pytest.mark.parametrize(
    ("recorded", "expected"),
    [
        (None, "float32"),  # a run from before model.eval_dtype: scored in float32
        ({"chosen": "float32"}, "float32"),
        ({"chosen": "bfloat16"}, "bfloat16"),
    ],
)
def test_masking_scores_in_the_precision_of_the_runs_own_score(tmp_path, recorded, expected):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(
        "model:\n  name: smollm2-135m\n  eval_dtype: auto\ndata:\n  model: ${model}\n"
        "paths:\n  output_dir: elsewhere\n"
    )
    environment = {"seed": 1} if recorded is None else {"eval_precision_choice": recorded}
    (run_dir / "environment.json").write_text(json.dumps(environment))
    cfg = run_config(run_dir)
    assert cfg.model.eval_dtype == expected and cfg.data.model.eval_dtype == expected
    assert cfg.paths.output_dir == str(run_dir)
