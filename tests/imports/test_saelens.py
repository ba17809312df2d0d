"""SAE Lens 6 folders (written by hand in its layout) imported as run folders: the contract's
rule on the written weights gives SAE Lens's latents and reconstructions, the directions are the
source's, and the run config is the same for every seed of one recipe."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from saeseeds.errors import DataError
from saeseeds.export import export_saelens
from saeseeds.imports.saelens import find_folders, read_saelens
from saeseeds.imports.writer import write_run
from tests.imports.foreign_folders import (
    D_IN,
    assert_contract_outputs,
    saelens_outputs,
    write_saelens_folder,
)
from tests.test_export import make_run

# (architecture, folder options, the contract rule it becomes)
CASES = [
    ("standard", {}, "relu_l1"),
    ("standard", {"apply_b_dec_to_input": False}, "relu_l1"),
    ("gated", {}, "gated"),
    ("gated", {"apply_b_dec_to_input": False}, "gated"),
    ("jumprelu", {}, "jumprelu"),
    ("topk", {}, "topk"),
    ("topk", {"rescale": True, "apply_b_dec_to_input": False}, "topk"),
    ("batchtopk", {"rescale": True, "scaling_factor": 2.5}, "jumprelu"),
    ("matryoshka_batchtopk", {}, "jumprelu"),
]
FOLDED = {"apply_b_dec_to_input", "rescale", "scaling_factor"}


def unit_rows(matrix: torch.Tensor) -> torch.Tensor:
    return matrix / matrix.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("architecture, options, rule", CASES)
def test_contract_rule_reproduces_saelens(tmp_path, architecture, options, rule):
    source = write_saelens_folder(tmp_path / "source", architecture, seed=3, **options)
    run = write_run(tmp_path / "run", read_saelens(source))

    cfg = json.loads((run / "cfg.json").read_text())
    assert (cfg["architecture"], cfg["source_architecture"]) == (rule, architecture)
    assert (cfg["seed"], cfg["data"], cfg["hook_name"]) == (
        3,
        "import:saelens",
        "blocks.1.hook_resid_post",
    )
    x = 1.5 * torch.randn(256, D_IN, generator=torch.Generator().manual_seed(0))
    assert_contract_outputs(run, x, *saelens_outputs(source, x))

    written, original = (
        load_file(run / "sae_weights.safetensors"),
        load_file(source / "sae_weights.safetensors"),
    )
    if FOLDED.isdisjoint(options):  # nothing to fold: the source's tensors, bit for bit
        assert torch.equal(written["W_dec"], original["W_dec"])
        assert torch.equal(written["W_enc"], original["W_enc"])
    torch.testing.assert_close(unit_rows(written["W_dec"]), unit_rows(original["W_dec"]))
    torch.testing.assert_close(unit_rows(written["W_enc"].T), unit_rows(original["W_enc"].T))
    assert not (run / "feature_stats.safetensors").exists()
    assert not (run / "metrics.json").exists()
    assert (run / "COMPLETE").is_file()


def test_seeds_of_one_recipe_share_their_config_and_data_identity(tmp_path):
    runs = []
    for seed in (1, 2):
        source = write_saelens_folder(tmp_path / f"source{seed}", "topk", seed=seed)
        runs.append(write_run(tmp_path / f"run{seed}", read_saelens(source)))
    env = [json.loads((run / "environment.json").read_text()) for run in runs]
    cfgs = [json.loads((run / "cfg.json").read_text()) for run in runs]
    assert [e["config"]["seed"] for e in env] == [1, 2]
    assert {**env[0]["config"], "seed": 0} == {**env[1]["config"], "seed": 0}
    assert env[0]["condition_sha256"] == env[1]["condition_sha256"]
    assert {**cfgs[0], "seed": 0} == {**cfgs[1], "seed": 0}
    identity = env[0]["data_provenance"]["data_identity"]
    assert identity == env[1]["data_provenance"]["data_identity"]
    assert (
        identity["model_name"] == "tiny-model" and identity["dataset_path"] == "local/tiny-corpus"
    )
    assert identity["hook_name"] == "blocks.1.hook_resid_post" and identity["context_size"] == 32
    assert env[0]["config"]["hook"] == {"name": "blocks.1.hook_resid_post"}
    assert env[0]["config"]["sae"] == {"architecture": "topk", "n_features": 24, "k": 3}
    # The digested source config leaves out per-run values: statistics, devices, output paths,
    # W&B names; a training detail such as the learning rate stays.
    provenance = env[0]["import"]
    condition_text = json.dumps(provenance["source_condition"])
    for per_run in ('"l0"', "num_dead_features", "output_path", "run_name", '"device"', '"seed"'):
        assert per_run not in condition_text
    assert provenance["source_condition"]["training"]["lr"] == 3e-4
    other_lr = write_saelens_folder(tmp_path / "source3", "topk", seed=1)
    runner = json.loads((other_lr / "runner_cfg.json").read_text())
    (other_lr / "runner_cfg.json").write_text(json.dumps({**runner, "lr": 1e-3}))
    other = json.loads(
        (write_run(tmp_path / "run3", read_saelens(other_lr)) / "environment.json").read_text()
    )
    assert other["config"]["source_config_digest"] != env[0]["config"]["source_config_digest"]
    assert provenance["library"] == "saelens" and provenance["library_version"] == "6.54.12"
    assert provenance["source_dir"] == str((tmp_path / "source1").resolve())
    assert provenance["source_cfg"]["metadata"]["l0"] == 4.0
    assert provenance["weights_sha256"] != env[1]["import"]["weights_sha256"]
    assert "runner_cfg.json seed" in provenance["seed_origin"]
    for reserved in ("file_sha256", "activation_cache_key", "activation_store_key"):
        assert reserved not in json.dumps(env[0]["data_provenance"])
    assert env[0]["data_provenance"] == env[1]["data_provenance"]  # nothing per-run in it


def test_a_seed_given_on_the_command_line_overrides_the_recorded_one(tmp_path):
    source = write_saelens_folder(tmp_path / "source", "standard", seed=42)
    sae = read_saelens(source, seed=7)
    assert (sae.seed, sae.run_name) == (7, "blocks.1.hook_resid_post/standard-24/seed=7")
    assert "--seed" in sae.seed_origin


def _without_runner(folder):
    (folder / "runner_cfg.json").unlink()
    return folder


def _edit_cfg(folder, **changes):
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg.update(changes)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize(
    "case, change, message",
    [
        ("no seed", _without_runner, "no seed recorded"),
        ("pre-6", lambda f: f, "SAE Lens 5.9.0; this importer reads SAE Lens 6 folders"),
        ("architecture", lambda f: _edit_cfg(f, architecture="abstopk"), "'abstopk' cannot"),
        (
            "layer norm",
            lambda f: _edit_cfg(f, normalize_activations="layer_norm"),
            "normalize_activations='layer_norm' cannot be imported",
        ),
        (
            "unfolded scale",
            lambda f: _edit_cfg(f, normalize_activations="expected_average_only_in"),
            "no activation_scaler.json with a positive scaling_factor",
        ),
    ],
)
def test_unimportable_folders_are_refused_with_the_reason(tmp_path, case, change, message):
    version = "5.9.0" if case == "pre-6" else "6.54.12"
    source = change(write_saelens_folder(tmp_path / "source", "standard", seed=1, version=version))
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_saelens(source)


def test_a_saeseeds_export_imports_back_to_the_same_run(tmp_path):
    run = make_run(tmp_path / "runs/trained", "batchtopk", seed=5)
    export_saelens(run, tmp_path / "runs/exported")
    assert find_folders(tmp_path / "runs") == [tmp_path / "runs/exported"]  # not the run folder
    with pytest.raises(DataError, match="is a saeseeds run folder"):
        find_folders(run)
    sae = read_saelens(tmp_path / "runs/exported")
    assert (sae.seed, sae.architecture) == (5, "jumprelu")
    assert "saeseeds export" in sae.seed_origin
    original = load_file(run / "sae_weights.safetensors")
    assert all(torch.equal(sae.tensors[name], original[name]) for name in original)
