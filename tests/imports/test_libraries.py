"""The real libraries: SAE Lens 6 and eai-sparsify train tiny SAEs with two seeds in their own
virtualenvs (:mod:`tests.library_venvs`), ``python -m saeseeds.imports`` imports them and
``analyze.py`` analyses them. The decoder directions must be the source weights', and the
contract's rule on the imported weights must give each library's own latents and
reconstructions on held-out activations.

Slow (a few minutes, more the first time a venv is built):
``pytest -m slow tests/imports/test_libraries.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.imports.foreign_folders import assert_contract_outputs
from tests.imports.test_end_to_end import QUICK_ANALYSIS, run_cli, unit_rows
from tests.library_venvs import library_python, run_in_library

SCRIPTS = Path(__file__).parent / "library_scripts"
SAELENS_VERSION, SPARSIFY_VERSION = "6.54.12", "1.3.3"
SAELENS_ARCHITECTURES = ("standard", "gated", "jumprelu", "topk", "batchtopk",
                         "matryoshka_batchtopk")  # fmt: skip
UNFOLDED = ("standard", "gated", "jumprelu")  # saved by SAE Lens in the contract's form


def train(library: str, distribution: str, version: str, script: str, out: Path) -> None:
    python = library_python(library, distribution, version)
    result = run_in_library(python, SCRIPTS / script, str(out), timeout=3600)
    assert result.returncode == 0, result.stderr[-4000:]


def import_runs(*args: str | Path, cwd: Path) -> None:
    result = run_cli(*args, "--no-progress", module="saeseeds.imports", cwd=cwd)
    assert result.returncode == 0, result.stderr[-4000:]


def analyse(imports: Path, cwd: Path) -> dict:
    report = cwd / f"report-{imports.name}"
    result = run_cli(f"sweep_dir={imports}", f"hydra.run.dir={report}", *QUICK_ANALYSIS, cwd=cwd)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((report / "summary.json").read_text())


def imported_runs(imports: Path) -> dict[Path, Path]:
    """{source folder: imported run folder}, from each run's provenance."""
    runs = {}
    for marker in imports.rglob("COMPLETE"):
        environment = json.loads((marker.parent / "environment.json").read_text())
        runs[Path(environment["import"]["source_dir"])] = marker.parent
    return runs


@pytest.mark.slow
def test_saelens_seeds_of_every_architecture(tmp_path):
    out = tmp_path / "saelens"
    train("saelens", "sae-lens", SAELENS_VERSION, "saelens_train.py", out)
    imports, checkpoint_import = tmp_path / "imported", tmp_path / "imported-checkpoint"
    heldout = out / "heldout.safetensors"
    sources = [out / name for name in SAELENS_ARCHITECTURES]
    import_runs("saelens", *sources, imports, "--activations", heldout, cwd=tmp_path)
    import_runs("saelens", out / "checkpoints", checkpoint_import, cwd=tmp_path)

    x = load_file(heldout)["activations"]
    listing = json.loads((out / "outputs.json").read_text())
    runs = {**imported_runs(imports), **imported_runs(checkpoint_import)}
    assert len(runs) == 2 * len(SAELENS_ARCHITECTURES) + 1
    for source, entry in listing.items():
        source = Path(source).resolve()
        if source.name == "batchtopk_scaled":
            continue  # its one seed was trained only to write the checkpoint
        run = runs[source]
        expected = load_file(out / "outputs" / f"{entry['index']}.safetensors")
        assert_contract_outputs(run, x, expected["z"], expected["x_hat"])
        original = load_file(source / "sae_weights.safetensors")["W_dec"]
        written = load_file(run / "sae_weights.safetensors")["W_dec"]
        if source.parent.name in UNFOLDED:
            assert torch.equal(written, original)
        torch.testing.assert_close(unit_rows(written), unit_rows(original))

    summary = analyse(imports, tmp_path)
    assert summary["skipped_runs"] == [] and summary["groups_not_analysed"] == []
    groups = list(summary["groups"].values())
    assert len(groups) == len(SAELENS_ARCHITECTURES)
    assert all(group["seeds"] == [1, 2] for group in groups)
    assert all("live_decoder_median" in group["statistics"] for group in groups)
    architectures = sorted(
        json.loads((Path(group["runs"][0]) / "cfg.json").read_text())["source_architecture"]
        for group in groups
    )
    assert architectures == sorted(SAELENS_ARCHITECTURES)


@pytest.mark.slow
def test_sparsify_init_seeds(tmp_path):
    out = tmp_path / "sparsify"
    train("sparsify", "eai-sparsify", SPARSIFY_VERSION, "sparsify_train.py", out)
    run_dir, imports = out / "checkpoints" / "tiny", tmp_path / "imported"
    import_runs("sparsify", run_dir / "h.0", imports, "--activations", out / "heldout.npy",
                cwd=tmp_path)  # fmt: skip
    import_runs("sparsify", run_dir / "h.1", imports, cwd=tmp_path)

    x = torch.from_numpy(np.load(out / "heldout.npy"))
    runs = imported_runs(imports)
    assert len(runs) == 4
    for hook in ("h.0", "h.1"):
        for seed in (1, 2):
            source = (run_dir / hook / f"seed{seed}").resolve()
            run = runs[source]
            assert run.relative_to(imports) == Path(f"{hook}/topk-32/seed={seed}")
            expected = load_file(out / "outputs" / f"{hook}-{seed}.safetensors")
            assert_contract_outputs(run, x, expected["z"], expected["x_hat"])
            original = load_file(source / "sae.safetensors")
            written = load_file(run / "sae_weights.safetensors")
            assert torch.equal(written["W_dec"], original["W_dec"])
            assert torch.equal(written["W_enc"], original["encoder.weight"].T)

    summary = analyse(imports, tmp_path)
    by_hook = {group["hook_name"]: group for group in summary["groups"].values()}
    assert sorted(by_hook) == ["h.0", "h.1"]
    assert all(group["seeds"] == [1, 2] for group in by_hook.values())
    assert "live_decoder_median" in by_hook["h.0"]["statistics"]
    assert by_hook["h.1"]["heldout_statistics"]["seeds_without"] == [1, 2]
