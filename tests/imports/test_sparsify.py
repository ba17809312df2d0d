"""sparsify checkpoints (written by hand in its layout) imported as run folders: seeds from the
``seed<N>`` folders or ``init_seeds``, sparsify's latents from the contract's rule, and the held-out
statistics that ``--activations`` adds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from saeseeds.errors import DataError
from saeseeds.imports.heldout import ActivationRows, heldout_statistics
from saeseeds.imports.saelens import read_saelens
from saeseeds.imports.sparsify import find_folders, read_sparsify
from saeseeds.imports.writer import write_run
from tests.imports.foreign_folders import (
    D_IN,
    assert_contract_outputs,
    contract_outputs,
    sparsify_outputs,
    write_saelens_folder,
    write_sparsify_run,
)


@pytest.mark.parametrize("activation", ["topk", "groupmax"])
def test_contract_rule_reproduces_sparsify(tmp_path, activation):
    run = write_sparsify_run(tmp_path / "ckpt/run", ("layers.3",), (1, 2), activation=activation)
    source = run / "layers.3/seed2"
    imported = write_run(tmp_path / "out", read_sparsify(source))
    x = torch.randn(256, D_IN, generator=torch.Generator().manual_seed(0))
    assert_contract_outputs(imported, x, *sparsify_outputs(source, x))
    written, original = (
        load_file(imported / "sae_weights.safetensors"),
        load_file(source / "sae.safetensors"),
    )
    assert torch.equal(written["W_dec"], original["W_dec"])
    assert torch.equal(written["W_enc"], original["encoder.weight"].T)
    cfg = json.loads((imported / "cfg.json").read_text())
    assert (cfg["architecture"], cfg["k"], cfg["seed"]) == (activation, 3, 2)


def test_seeds_and_hookpoints_come_from_the_layout(tmp_path):
    run = write_sparsify_run(tmp_path / "ckpt/run", ("layers.0", "layers.1"), (4, 9))
    (run / "best/layers.0/seed4").mkdir(parents=True)  # save_best's copy is not imported
    (run / "best/layers.0/seed4/sae.safetensors").write_bytes(b"")
    (run / "best/layers.0/seed4/cfg.json").write_text("{}")
    saes = [read_sparsify(folder) for folder in find_folders(run)]
    assert [(sae.hook_name, sae.seed) for sae in saes] == [
        ("layers.0", 4), ("layers.0", 9), ("layers.1", 4), ("layers.1", 9)
    ]  # fmt: skip
    assert all(sae.seeds_trained_together == [4, 9] for sae in saes)
    assert saes[0].source_condition == saes[1].source_condition == saes[2].source_condition
    assert saes[0].data_identity == saes[1].data_identity != saes[2].data_identity
    assert "init_seeds" not in saes[0].source_condition["training"]
    assert saes[0].source_condition["training"]["dataset"] == "local/tiny-corpus"

    single = write_sparsify_run(tmp_path / "ckpt/single", ("layers.0",), (7,))
    (sae,) = [read_sparsify(folder) for folder in find_folders(single)]
    assert (sae.seed, sae.hook_name, sae.seeds_trained_together) == (7, "layers.0", None)


def test_refused_sparsify_folders(tmp_path):
    bare = write_sparsify_run(tmp_path / "bare", ("layers.0",), (7,), run_config=False)
    with pytest.raises(DataError, match="no seed recorded"):
        read_sparsify(bare / "layers.0")
    assert read_sparsify(bare / "layers.0", seed=3).seed == 3
    cfg_path = bare / "layers.0/cfg.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "transcode": True}))
    with pytest.raises(DataError, match="transcode=True"):
        read_sparsify(bare / "layers.0", seed=3)


@pytest.mark.parametrize(
    "library, architecture",
    [("sparsify", "groupmax"), ("saelens", "gated"), ("saelens", "jumprelu")],
)
def test_activations_give_the_contract_rules_statistics(tmp_path, library, architecture):
    if library == "sparsify":
        run = write_sparsify_run(tmp_path / "ckpt/run", ("h",), (1,), activation=architecture)
        sae = read_sparsify(run / "h")
    else:
        sae = read_saelens(write_saelens_folder(tmp_path / "source", architecture, seed=1))
    x = np.random.default_rng(0).standard_normal((300, D_IN)).astype(np.float32)
    np.save(tmp_path / "acts.npy", x)
    rows = ActivationRows(tmp_path / "acts.npy")
    rows_per_batch = list(rows.batches(64))
    assert [len(batch) for batch in rows_per_batch] == [64, 64, 64, 64, 44]
    imported = write_run(
        tmp_path / "out", sae, heldout_statistics(sae, rows, progress=False), rows.provenance()
    )
    z, x_hat = contract_outputs(imported, torch.from_numpy(x))
    with safe_open(str(imported / "feature_stats.safetensors"), "pt") as handle:
        assert handle.metadata()["n_tokens"] == "300"
        assert torch.equal(handle.get_tensor("fire_count"), (z > 0).sum(0).long())
        torch.testing.assert_close(handle.get_tensor("activation_sum"), z.sum(0))
    metrics = json.loads((imported / "metrics.json").read_text())
    residual = ((torch.from_numpy(x) - x_hat) ** 2).sum()
    total = ((torch.from_numpy(x) - torch.from_numpy(x).mean(0)) ** 2).sum()
    assert metrics["fvu"] == pytest.approx(float(residual / total), rel=1e-4)
    assert metrics["l0"] == pytest.approx(float((z > 0).sum(1).float().mean()), rel=1e-6)
    assert metrics["heldout_tokens"] == 300
    heldout = json.loads((imported / "environment.json").read_text())["import"]["heldout"]
    assert heldout["n_rows"] == 300 and len(heldout["sha256"]) == 64
