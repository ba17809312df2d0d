"""Every study's experiment config composes, through Hydra's compose API and the real CLI, into the
protocol its header describes."""

from __future__ import annotations

import itertools

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from saeseeds.config import register_configs
from saeseeds.studies.experiments import EXPERIMENTS
from tests.helpers import CONF_DIR, run_app


def composed(*overrides: str, hydra: bool = False):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=hydra)


def sweep_jobs(name: str) -> list[dict[str, str]]:
    """The jobs Hydra's basic sweeper makes of the experiment's hydra.sweeper.params (parsed by
    Hydra's own override grammar, so that a list value such as ``seeds: "[1,2,3]"`` is one)."""
    params = composed(f"+experiment={name}", hydra=True).hydra.sweeper.params
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    keys = [override.get_key_element() for override in parsed]
    values = [
        list(override.sweep_string_iterator())
        if override.is_sweep_override()
        else [override.get_value_element_as_str()]
        for override in parsed
    ]
    return [dict(zip(keys, combination, strict=True)) for combination in itertools.product(*values)]


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_every_experiment_composes_with_its_header(name):
    cfg = composed(f"+experiment={name}")
    # The token-scaling and methods studies see each token once; the others repeat theirs 8 times.
    once = name in ("token_scaling", "stability_methods")
    assert cfg.trainer.max_epochs == (1 if once else 8)
    assert cfg.hook.point == "resid_pre"
    header = (CONF_DIR / "experiment" / f"{name}.yaml").read_text().splitlines()
    assert header[0] == "# @package _global_"
    assert any("differs from the original" in line for line in header), name


def test_seed_study_pairs_k_with_the_size_and_trains_no_wasted_control():
    jobs = sweep_jobs("seed_study")
    assert len(jobs) == 2 * 3 * 2 * 5
    sizes = set()
    for job in jobs[:12]:  # one layer's conditions and dictionaries
        cfg = composed("+experiment=seed_study", *[f"{k}={v}" for k, v in job.items()])
        sizes.add((cfg.sae.n_features, cfg.sae.k))
        # the random-model control is never also the geometry control
        assert not (cfg.model.init == "random" and cfg.data.control == "gaussian")
        assert cfg.hook.layer in (0, 6) and cfg.seed in range(1, 6)
    assert sizes == {(128, 8), (512, 32)}
    controls = {job["experiment/control@_global_"] for job in jobs}
    assert controls == {"none", "gaussian", "random_model"}


def test_size_and_tokens_and_architectures_sweep_the_published_axes():
    jobs = sweep_jobs("size_and_tokens")
    assert {job["sae.n_features"] for job in jobs} == {"256", "1024", "4096"}
    assert {job["data.n_tokens"] for job in jobs} == {"32768", "131072"}
    assert len(jobs) == 3 * 2 * 2 * 3
    relu = composed("+experiment=architectures", "sae=relu_l1", "sae.l1_coefficient=3")
    assert (relu.sae.architecture, relu.sae.n_features) == ("relu_l1", 512)


def test_the_cli_prints_an_experiment_config():
    result = run_app(
        "train.py", "+experiment=seed_study", "experiment/dictionary@_global_=n512_k32",
        "--cfg", "job", cwd=CONF_DIR.parent,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "n_features: 512" in result.stdout and "k: 32" in result.stdout


def test_token_scaling_sweeps_nested_budgets_with_three_seeds_per_job():
    jobs = sweep_jobs("token_scaling")
    assert len(jobs) == 3 * 2 * 2  # budgets x sizes x {condition, geometry control}
    # Budgets first, growing: the store is extended once per budget, never rebuilt.
    assert [job["data.n_tokens"] for job in jobs[::4]] == ["131072", "1048576", "4194304"]
    assert {job["sae.n_features"] for job in jobs} == {"512", "4096"}
    assert {job["data.control"] for job in jobs} == {"none", "gaussian"}
    cfg = composed("+experiment=token_scaling", *[f"{k}={v}" for k, v in jobs[-1].items()])
    assert list(cfg.seeds) == [1, 2, 3] and cfg.order_seed == 0
    assert (cfg.sae.architecture, cfg.sae.k, cfg.hook.layer) == ("topk", 32, 6)
    assert cfg.data.corpus._target_.endswith("PythonSourceCorpus")


def test_stability_methods_passes_train_every_method_at_one_size_and_budget():
    """Each pass of the methods study composes with each of its sweep's jobs into the method
    it names: 512 features, 1M tokens seen once, three seeds per job, its geometry control."""
    from saeseeds.studies.experiments import command_overrides

    experiment = EXPERIMENTS["stability_methods"]
    jobs = sweep_jobs("stability_methods")
    assert len(jobs) == 4 * 2  # the architectures with a k x {condition, geometry control}
    methods = set()
    for study_pass in experiment.passes:
        overrides = command_overrides(experiment, study_pass, tiny=False, user=[])
        for job in jobs:
            # A pass's own value of a key replaces the sweep's, as on Hydra's command line.
            job = {**job, **dict(override.split("=", 1) for override in overrides[1:])}
            cfg = composed(overrides[0], *[f"{k}={v}" for k, v in job.items()])
            assert (cfg.sae.n_features, cfg.hook.layer, cfg.trainer.max_epochs) == (512, 6, 1)
            assert cfg.data.n_tokens == 1048576 and list(cfg.seeds) == [1, 2, 3]
            assert cfg.data.corpus._target_.endswith("PythonSourceCorpus")
            assert getattr(cfg.sae, "k", 32) == 32
            methods.add((cfg.sae.architecture, cfg.sae.weight_l2 > 0, cfg.data.control))
            if cfg.sae.weight_l2 > 0:
                assert not cfg.sae.unit_norm_decoder
    names = {"topk", "batchtopk", "matryoshka", "archetypal", "relu_l1", "jumprelu"}
    assert methods == {
        (name, False, control) for name in names for control in ("none", "gaussian")
    } | {("topk", True, "none"), ("topk", True, "gaussian")}
