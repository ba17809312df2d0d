"""Foreign folders imported with ``python -m saeseeds.imports`` and analysed with ``analyze.py``,
both as a user runs them: the groups, the decoder directions, and what the report says about
what imports lack."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from saeseeds.imports.__main__ import main
from tests.imports.foreign_folders import D_IN, write_saelens_folder, write_sparsify_run

REPO_ROOT = Path(__file__).resolve().parents[2]
QUICK_ANALYSIS = (
    "logger=none",
    "progress=false",
    "baseline.n_samples=9",
    "bootstrap.n_samples=100",
)


def run_cli(*args: str | Path, module: str | None = None, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, *(["-m", module] if module else [str(REPO_ROOT / "analyze.py")])]
    return subprocess.run(
        command + [str(arg) for arg in args],
        cwd=cwd,
        env={**os.environ, "WANDB_MODE": "disabled"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def unit_rows(matrix: torch.Tensor) -> torch.Tensor:
    return matrix / matrix.norm(dim=1, keepdim=True)


def test_imported_saelens_and_sparsify_seeds_are_analysed_in_their_groups(tmp_path):
    lens = [
        write_saelens_folder(tmp_path / f"saelens/out{seed}", "topk", seed, rescale=True)
        for seed in (1, 2)
    ]
    sparsify_run = write_sparsify_run(
        tmp_path / "checkpoints/run", ("layers.0", "layers.1"), (1, 2)
    )
    activations = np.random.default_rng(0).standard_normal((200, D_IN)).astype(np.float32)
    np.save(tmp_path / "heldout.npy", activations)
    imports = tmp_path / "imported"

    result = run_cli(
        "saelens", *lens, imports, "--activations", tmp_path / "heldout.npy", "--no-progress",
        module="saeseeds.imports", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert main(["sparsify", str(sparsify_run), str(imports)]) == 0  # the same CLI, in-process
    assert sorted(str(p.relative_to(imports)) for p in imports.glob("*/*/*")) == [
        "blocks.1.hook_resid_post/topk-24/seed=1", "blocks.1.hook_resid_post/topk-24/seed=2",
        "layers.0/topk-24/seed=1", "layers.0/topk-24/seed=2",
        "layers.1/topk-24/seed=1", "layers.1/topk-24/seed=2",
    ]  # fmt: skip
    for source, run in [
        (lens[0] / "sae_weights.safetensors", imports / "blocks.1.hook_resid_post/topk-24/seed=1"),
        (sparsify_run / "layers.1/seed2/sae.safetensors", imports / "layers.1/topk-24/seed=2"),
    ]:  # decoder directions are the source's (SAE Lens's rescaled rows renormalised)
        original, written = load_file(source), load_file(run / "sae_weights.safetensors")
        torch.testing.assert_close(unit_rows(written["W_dec"]), unit_rows(original["W_dec"]))

    report = tmp_path / "report"
    result = run_cli(
        f"sweep_dir={imports}", f"hydra.run.dir={report}", *QUICK_ANALYSIS, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((report / "summary.json").read_text())
    assert summary["n_runs_used"] == 6 and summary["skipped_runs"] == []
    groups = {label: group for label, group in summary["groups"].items()}
    by_hook = {group["hook_name"]: group for group in groups.values()}
    assert sorted(by_hook) == ["blocks.1.hook_resid_post", "layers.0", "layers.1"]
    assert all(group["seeds"] == [1, 2] for group in groups.values())
    lens_group, sparsify_group = by_hook["blocks.1.hook_resid_post"], by_hook["layers.0"]
    assert lens_group["model_name"] == "tiny-model" and lens_group["architecture"] == "topk"
    assert "live_decoder_median" in lens_group["statistics"]  # held-out data given at import
    assert "heldout_statistics" not in lens_group
    assert "live_decoder_median" not in sparsify_group["statistics"]
    assert sparsify_group["heldout_statistics"]["seeds_without"] == [1, 2]
    assert sparsify_group["examples"] == []
    assert set(sparsify_group["controls"]) == {"isotropic"}  # no trained control to import

    markdown = (report / "report.md").read_text()
    assert markdown.count("imported from sparsify, so it has no trained control") == 2
    assert markdown.count("imported from saelens, so it has no trained control") == 1
    assert markdown.count("No held-out statistics for seed(s) [1, 2]") == 2
    with open(report / "features.csv") as handle:
        rows = list(csv.DictReader(handle))
    firing = {row["group"]: (row["fire_count"], row["live"]) for row in rows}
    assert firing[sparsify_group["label"]] == ("", "")
    assert firing[lens_group["label"]] != ("", "")


def test_a_source_without_a_seed_is_refused_before_anything_is_written(tmp_path, capsys):
    source = write_saelens_folder(tmp_path / "out", "standard", seed=1)
    (source / "runner_cfg.json").unlink()
    assert main(["saelens", str(source), str(tmp_path / "imported")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1
    assert "no seed recorded" in error and "--seed N" in error
    assert not (tmp_path / "imported").exists()
    assert main(["saelens", str(source), str(tmp_path / "imported"), "--seed", "5"]) == 0
    assert (tmp_path / "imported/blocks.1.hook_resid_post/standard-24/seed=5/COMPLETE").is_file()


def test_two_sources_with_one_recorded_seed_are_refused(tmp_path, capsys):
    sources = [
        write_saelens_folder(tmp_path / f"out{index}", "standard", index, runner_seed=42)
        for index in (1, 2)
    ]
    assert main(["saelens", *map(str, sources), str(tmp_path / "imported")]) == 2
    error = capsys.readouterr().err
    assert "both give hook 'blocks.1.hook_resid_post' seed 42" in error and "--seed" in error
    assert not (tmp_path / "imported").exists()
    assert (
        main(["saelens", *map(str, sources), str(tmp_path / "imported"), "--seed", "1", "2"]) == 0
    )
    assert sorted(
        p.name for p in (tmp_path / "imported/blocks.1.hook_resid_post/standard-24").iterdir()
    ) == [
        "seed=1",
        "seed=2",
    ]
