"""``saeseeds.export``: run folders exported for SAE Lens 6.

The default tests check the exported files against what SAE Lens 6.54.12's loader reads
(``SAE.load_from_disk`` -> ``sae_lens_disk_loader``: ``cfg.json`` and ``sae_weights.safetensors``,
then ``load_state_dict(strict)`` into TopKSAE / StandardSAE / JumpReLUSAE) without needing it. The
slow test installs SAE Lens into its own virtualenv (it pins transformer-lens < 4, saeseeds needs
4.x, so they cannot share one), loads each export there and compares latents and reconstructions
with the run-folder maths.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from saeseeds.export import ExportError, export_saelens
from tests.library_venvs import library_python, run_in_library

ARCHS = ("topk", "relu_l1", "batchtopk", "jumprelu", "matryoshka", "archetypal")
SAELENS_ARCH = {
    "topk": "topk",
    "relu_l1": "standard",
    "batchtopk": "jumprelu",
    "jumprelu": "jumprelu",
    "matryoshka": "jumprelu",
    "archetypal": "topk",
}
SAELENS_CLASS = {
    "topk": "TopKSAE",
    "standard": "StandardSAE",
    "jumprelu": "JumpReLUSAE",
}
THRESHOLDED = ("batchtopk", "jumprelu", "matryoshka")  # saved with an inference threshold
D_IN, N_FEATURES, K, THRESHOLD = 16, 48, 5, 0.6
SAELENS_VERSION = "6.54.12"


def make_run(path: Path, architecture: str, seed: int = 0, complete: bool = True) -> Path:
    """A run folder as contract v1 writes it, with random weights (pre-activations ~ N(0, 1))."""
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(N_FEATURES, D_IN, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    if architecture in ("relu_l1", "archetypal"):  # decoder rows of varied norms, not unit
        W_dec *= 0.2 + 2 * torch.rand(N_FEATURES, 1, generator=g)
    tensors = {
        "W_enc": torch.randn(D_IN, N_FEATURES, generator=g) / D_IN**0.5,
        "b_enc": 0.1 * torch.randn(N_FEATURES, generator=g),
        "W_dec": W_dec,
        "b_dec": 0.5 * torch.randn(D_IN, generator=g),
    }
    if architecture in ("batchtopk", "matryoshka"):  # one threshold for every latent
        tensors["threshold"] = torch.full((N_FEATURES,), THRESHOLD)
    if architecture == "jumprelu":  # one threshold per latent, some 0
        tensors["threshold"] = (2 * THRESHOLD * torch.rand(N_FEATURES, generator=g) - 0.1).relu()
    path.mkdir(parents=True)
    save_file(tensors, path / "sae_weights.safetensors", {"saeseeds_contract_version": "1"})
    cfg = {
        "contract_version": 1,
        "architecture": architecture,
        "d_in": D_IN,
        "n_features": N_FEATURES,
        "k": K,
        "model_name": "SmolLM2-135M",
        "hook_name": "blocks.6.hook_resid_pre",
        "dtype": "float32",
        "activation_dtype": "float32",
        "normalization": {"method": "scalar", "input_scale": 1.0},
        "seed": seed,
        "data": "synthetic",
    }
    (path / "cfg.json").write_text(json.dumps(cfg))
    if complete:
        (path / "COMPLETE").write_text("2025-01-01T00:00:00+0000\n")
    return path


def reference(architecture: str, weights: dict[str, torch.Tensor], x: torch.Tensor):
    """saeseeds's inference maths on raw activations: latents z and reconstruction x_hat."""
    pre = (x - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"]
    if architecture in ("topk", "archetypal"):
        values, indices = pre.topk(K, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, indices, values).relu()
    elif architecture == "relu_l1":
        z = pre.relu()
    else:
        z = pre * (pre > weights["threshold"])
    return z, z @ weights["W_dec"] + weights["b_dec"]


def saelens_maths(out_dir: Path, x: torch.Tensor):
    """What SAE Lens 6 computes for an exported folder, as its source reads cfg.json fields."""
    cfg = json.loads((out_dir / "cfg.json").read_text())
    w = load_file(out_dir / "sae_weights.safetensors")
    pre = (x - w["b_dec"] * cfg["apply_b_dec_to_input"]) @ w["W_enc"] + w["b_enc"]
    if cfg["architecture"] == "topk":
        assert not cfg["rescale_acts_by_decoder_norm"]
        values, indices = pre.topk(cfg["k"], dim=-1)
        z = torch.zeros_like(pre).scatter(-1, indices, values.relu())
    elif cfg["architecture"] == "standard":
        z = pre.relu()
    else:  # jumprelu
        z = pre.relu() * (pre > w["threshold"])
    return z, z @ w["W_dec"] + w["b_dec"]


def export_cli(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "saeseeds.export", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("architecture", ARCHS)
def test_export_writes_saelens_files(tmp_path, architecture):
    run = make_run(tmp_path / "run", architecture)
    out = export_saelens(run, tmp_path / "export")
    assert out == tmp_path / "export"
    assert sorted(p.name for p in out.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left

    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["architecture"] == SAELENS_ARCH[architecture]
    assert (cfg["d_in"], cfg["d_sae"]) == (D_IN, N_FEATURES)
    assert cfg["dtype"] == "float32"
    assert cfg["apply_b_dec_to_input"] is True
    assert cfg["normalize_activations"] == "none"
    assert cfg["reshape_activations"] == "none"
    meta = cfg["metadata"]
    # SAE Lens rewrites configs whose metadata.sae_lens_version is missing or < 6 as pre-6 ones.
    assert int(meta["sae_lens_version"].split(".")[0]) >= 6
    assert meta["model_name"] == "SmolLM2-135M"
    assert meta["hook_name"] == "blocks.6.hook_resid_pre"
    assert meta["saeseeds_cfg"] == json.loads((run / "cfg.json").read_text())
    if SAELENS_ARCH[architecture] == "topk":
        assert cfg["k"] == K and cfg["rescale_acts_by_decoder_norm"] is False
    else:
        assert "k" not in cfg

    # SAE Lens loads the state dict strictly: exactly its parameter names, shapes as saved.
    exported = load_file(out / "sae_weights.safetensors")
    source = load_file(run / "sae_weights.safetensors")
    expected = {"W_enc", "b_enc", "W_dec", "b_dec"} | (
        {"threshold"} if architecture in THRESHOLDED else set()
    )
    assert set(exported) == expected
    for name in expected:
        assert exported[name].dtype == torch.float32
        assert torch.equal(exported[name], source[name])
    assert exported["W_enc"].shape == (D_IN, N_FEATURES)
    assert exported["W_dec"].shape == (N_FEATURES, D_IN)


@pytest.mark.parametrize("architecture", ARCHS)
def test_saelens_reading_of_export_matches_saeseeds_maths(tmp_path, architecture):
    run = make_run(tmp_path / "run", architecture)
    out = export_saelens(run, tmp_path / "export")
    x = torch.randn(64, D_IN, generator=torch.Generator().manual_seed(1))
    z, x_hat = reference(architecture, load_file(run / "sae_weights.safetensors"), x)
    assert (z != 0).any() and (z == 0).any()
    z_lens, x_hat_lens = saelens_maths(out, x)
    torch.testing.assert_close(z_lens, z, atol=1e-6, rtol=0)
    torch.testing.assert_close(x_hat_lens, x_hat, atol=1e-5, rtol=0)


def test_export_into_existing_empty_folder_and_extra_tensors_dropped(tmp_path):
    run = make_run(tmp_path / "run", "topk")
    tensors = load_file(run / "sae_weights.safetensors")
    save_file({**tensors, "extra": torch.zeros(3)}, run / "sae_weights.safetensors")
    (tmp_path / "export").mkdir()
    export_saelens(run, tmp_path / "export")
    assert set(load_file(tmp_path / "export/sae_weights.safetensors")) == set(tensors)


def test_negative_threshold_is_refused(tmp_path):
    run = make_run(tmp_path / "run", "batchtopk")
    tensors = load_file(run / "sae_weights.safetensors")
    tensors["threshold"] = torch.full((N_FEATURES,), -0.25)
    save_file(tensors, run / "sae_weights.safetensors")
    with pytest.raises(ExportError, match="threshold"):
        export_saelens(run, tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_cli_exports(tmp_path):
    run = make_run(tmp_path / "run", "relu_l1")
    result = export_cli("saelens", run, tmp_path / "export")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "export/cfg.json").is_file()


def _unknown_architecture(tmp_path: Path) -> Path:
    run = make_run(tmp_path / "run", "relu_l1")
    cfg = json.loads((run / "cfg.json").read_text())
    (run / "cfg.json").write_text(json.dumps({**cfg, "architecture": "gated_xyz"}))
    return run


@pytest.mark.parametrize(
    "case, make, bad_value",
    [
        ("incomplete", lambda p: make_run(p / "run", "topk", complete=False), "COMPLETE"),
        ("unknown architecture", _unknown_architecture, "'gated_xyz'"),
    ],
)
def test_cli_refuses_bad_run_folder(tmp_path, case, make, bad_value):
    run = make(tmp_path)
    result = export_cli("saelens", run, tmp_path / "export")
    assert result.returncode == 2, (case, result.stdout, result.stderr)
    assert result.stderr.startswith("error: ")
    assert bad_value in result.stderr and str(run) in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "export").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temp folder left


def test_cli_refuses_non_empty_out_dir(tmp_path):
    run = make_run(tmp_path / "run", "topk")
    out = tmp_path / "export"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = export_cli("saelens", run, out)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and str(out) in result.stderr
    assert "not empty" in result.stderr and "Traceback" not in result.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "mine"


# --- slow: the real SAE Lens, in its own virtualenv ----------------------------------------------

SAELENS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from safetensors.torch import load_file, save_file
    from sae_lens import SAE, __version__

    inputs, results = sys.argv[1], sys.argv[2]
    names = {}
    for name, export in json.loads(sys.argv[3]).items():
        x = load_file(inputs)[name]
        sae = SAE.load_from_disk(export, device="cpu")
        with torch.no_grad():
            z = sae.encode(x)
            x_hat = sae.decode(z)
            out = sae(x)
        save_file({"z": z.contiguous(), "x_hat": x_hat, "forward": out}, f"{results}/{name}.st")
        names[name] = [type(sae).__name__, sae.cfg.architecture(), sae.cfg.metadata.hook_name]
    names["version"] = __version__
    print(json.dumps(names))
    """
)


@pytest.mark.slow
def test_saelens_loads_exports_and_matches_saeseeds(tmp_path):
    python = library_python("saelens", "sae-lens", SAELENS_VERSION)
    exports, inputs, expected = {}, {}, {}
    for i, architecture in enumerate(ARCHS):
        run = make_run(tmp_path / "runs" / architecture, architecture, seed=10 + i)
        exports[architecture] = str(export_saelens(run, tmp_path / "exports" / architecture))
        weights = load_file(run / "sae_weights.safetensors")
        x = 1.5 * torch.randn(256, D_IN, generator=torch.Generator().manual_seed(i))
        x = x[_clear_of_ties(architecture, weights, x)]  # no top-k tie or threshold coin-flip
        assert len(x) >= 128
        inputs[architecture] = x
        expected[architecture] = reference(architecture, weights, x)
        assert (expected[architecture][0] != 0).any() and (expected[architecture][0] == 0).any()
    save_file(inputs, tmp_path / "inputs.safetensors")
    (tmp_path / "results").mkdir()
    (tmp_path / "load.py").write_text(SAELENS_SCRIPT)
    args = [str(tmp_path / "inputs.safetensors"), str(tmp_path / "results"), json.dumps(exports)]
    result = run_in_library(python, tmp_path / "load.py", *args, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded.pop("version") == SAELENS_VERSION
    for architecture in ARCHS:
        class_name, saelens_arch, hook = loaded[architecture]
        assert saelens_arch == SAELENS_ARCH[architecture]
        assert class_name == SAELENS_CLASS[saelens_arch]
        assert hook == "blocks.6.hook_resid_pre"
        got = load_file(tmp_path / "results" / f"{architecture}.st")
        z, x_hat = expected[architecture]
        torch.testing.assert_close(got["z"], z, atol=1e-5, rtol=0)
        torch.testing.assert_close(got["x_hat"], x_hat, atol=1e-5, rtol=0)
        torch.testing.assert_close(got["forward"], x_hat, atol=1e-5, rtol=0)


def _clear_of_ties(architecture: str, weights: dict[str, torch.Tensor], x: torch.Tensor):
    """Rows whose latents cannot flip under float rounding: margins of at least 1e-3."""
    pre = (x - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"]
    if SAELENS_ARCH[architecture] == "topk":
        top = pre.topk(K + 1, dim=-1).values
        return (top[:, K - 1] - top[:, K]) > 1e-3
    if architecture in THRESHOLDED:
        return ((pre - weights["threshold"]).abs() > 1e-3).all(dim=-1)
    return torch.ones(len(x), dtype=torch.bool)
