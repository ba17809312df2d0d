"""SAE Lens 6 and sparsify folders written by hand in each library's documented layout, and each
library's inference maths as its source computes it (read from SAE Lens 6.54.12 and eai-sparsify
1.3.3), for tests that need neither library installed.

The contract's rule is re-implemented here too (:func:`contract_outputs`, from docs/contract.md),
so the tests compare the importer's weights against two independent readings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

D_IN, D_SAE, K = 12, 24, 3
SAELENS_VERSION = "6.54.12"


def _weights(seed: int, d_in: int = D_IN, d_sae: int = D_SAE) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(d_sae, d_in, generator=g)
    W_dec *= (0.3 + 2 * torch.rand(d_sae, 1, generator=g)) / W_dec.norm(dim=1, keepdim=True)
    return {
        "W_enc": torch.randn(d_in, d_sae, generator=g) / d_in**0.5,
        "b_enc": 0.1 * torch.randn(d_sae, generator=g),
        "W_dec": W_dec,  # rows of varied norms, so decoder-norm rescaling matters
        "b_dec": 0.5 * torch.randn(d_in, generator=g),
        "noise": torch.rand(d_sae, generator=g),
    }


def saelens_weights(architecture: str, seed: int) -> dict[str, Tensor]:
    """The tensors SAE Lens 6 saves for ``architecture`` (training form for batchtopk ones)."""
    w = _weights(seed)
    noise = w.pop("noise")
    if architecture == "jumprelu":
        w["threshold"] = 0.6 * noise - 0.1  # a few below zero: SAE Lens applies ReLU first
    if architecture == "gated":
        w["b_gate"] = w.pop("b_enc")
        w["b_mag"] = 0.1 * (noise - 0.5)
        w["r_mag"] = 0.3 * (noise - 0.5)
    if architecture in ("batchtopk", "matryoshka_batchtopk"):
        w["topk_threshold"] = torch.tensor(0.35, dtype=torch.float64)  # a scalar buffer
    return w


def write_saelens_folder(
    folder: Path,
    architecture: str,
    seed: int,
    *,
    weights_seed: int | None = None,
    runner_seed: int | None = None,
    rescale: bool = False,
    apply_b_dec_to_input: bool = True,
    scaling_factor: float | None = None,
    hook_name: str = "blocks.1.hook_resid_post",
    version: str = SAELENS_VERSION,
) -> Path:
    """A folder as ``save_inference_model`` (or, for batchtopk ones, a checkpoint's
    ``save_model``) writes it, with the runner's ``runner_cfg.json`` beside it."""
    folder.mkdir(parents=True)
    save_file(
        saelens_weights(architecture, seed if weights_seed is None else weights_seed),
        folder / "sae_weights.safetensors",
    )
    metadata = {
        "sae_lens_version": version,
        "sae_lens_training_version": version,
        "training_architecture": architecture,
        "model_name": "tiny-model",
        "hook_name": hook_name,
        "dataset_path": "local/tiny-corpus",
        "context_size": 32,
        "prepend_bos": True,
        "l0": 3.0 + seed,  # end-of-training statistics differ between seeds
        "num_dead_features": seed,
    }
    cfg: dict[str, Any] = {
        "architecture": architecture,
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "float32",
        "device": "cuda:0" if seed % 2 else "cpu",
        "apply_b_dec_to_input": apply_b_dec_to_input,
        "normalize_activations": "none" if scaling_factor is None else "expected_average_only_in",
        "reshape_activations": "none",
        "metadata": metadata,
    }
    if architecture in ("topk", "batchtopk", "matryoshka_batchtopk"):
        cfg.update(k=K, rescale_acts_by_decoder_norm=rescale)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    runner = {
        "model_name": "tiny-model",
        "hook_name": hook_name,
        "dataset_path": "local/tiny-corpus",
        "is_dataset_tokenized": True,
        "context_size": 32,
        "training_tokens": 4096,
        "lr": 3e-4,
        "seed": seed if runner_seed is None else runner_seed,
        "output_path": f"output/run-{seed}",
        "logger": {"run_name": f"run-{seed}", "log_to_wandb": False},
        "device": cfg["device"],
        "sae": {**cfg, "metadata": {}},
    }
    (folder / "runner_cfg.json").write_text(json.dumps(runner))
    if scaling_factor is not None:
        scaler = {"scaling_factor": scaling_factor, "has_whitening": False}
        (folder / "activation_scaler.json").write_text(json.dumps(scaler))
    return folder


def saelens_outputs(folder: Path, x: Tensor) -> tuple[Tensor, Tensor]:
    """SAE Lens 6's latents and reconstruction of raw x, as its source computes them. A
    checkpoint is read as the SAE that SAE Lens saves at the end of training: the SAE saw s·x
    (``ActivationScaler.scale``), its output is divided by s, and after
    ``fold_activation_norm_scaling_factor`` the latents of a decoder-norm-rescaling SAE are
    divided by s too (the folded decoder's norms are the trained ones over s); a batchtopk
    checkpoint is the JumpReLU SAE ``save_inference_model`` makes of it."""
    cfg = json.loads((folder / "cfg.json").read_text())
    w = {name: t.double() for name, t in load_file(folder / "sae_weights.safetensors").items()}
    scale = 1.0
    if cfg["normalize_activations"] == "expected_average_only_in":
        scale = json.loads((folder / "activation_scaler.json").read_text())["scaling_factor"]
    x = x.double() * scale
    sae_in = x - w["b_dec"] * cfg["apply_b_dec_to_input"]
    norms = w["W_dec"].norm(dim=-1)
    rescale = cfg.get("rescale_acts_by_decoder_norm", False)
    architecture = cfg["architecture"]
    if architecture == "gated":
        gate = sae_in @ w["W_enc"] + w["b_gate"]
        magnitude = sae_in @ (w["W_enc"] * w["r_mag"].exp()) + w["b_mag"]
        z = (gate > 0) * magnitude.relu()
    else:
        hidden = sae_in @ w["W_enc"] + w["b_enc"]
        if rescale:
            hidden = hidden * norms
        if architecture == "standard":
            z = hidden.relu()
        elif architecture == "topk":
            values, indices = hidden.topk(cfg["k"], dim=-1)
            z = torch.zeros_like(hidden).scatter(-1, indices, values.relu())
        else:
            threshold = w.get("threshold", w.get("topk_threshold"))
            z = hidden.relu() * (hidden > threshold)
    decoded = (z / norms if rescale else z) @ w["W_dec"] + w["b_dec"]
    return (z / scale if rescale else z).float(), (decoded / scale).float()


def write_sparsify_run(
    run: Path,
    hookpoints: tuple[str, ...],
    init_seeds: tuple[int, ...],
    *,
    activation: str = "topk",
    run_config: bool = True,
) -> Path:
    """``<save_dir>/<run_name>/`` as sparsify's trainer saves it: ``config.json`` and one
    ``cfg.json`` + ``sae.safetensors`` per hookpoint (and per seed when there are several)."""
    run.mkdir(parents=True)
    for hook_index, hook in enumerate(hookpoints):
        for seed in init_seeds:
            folder = run / hook / f"seed{seed}" if len(init_seeds) > 1 else run / hook
            folder.mkdir(parents=True)
            w = _weights(1000 + 100 * hook_index + seed)  # not the SAE Lens fixtures' weights
            tensors = {
                "encoder.weight": w["W_enc"].T.contiguous(),
                "encoder.bias": w["b_enc"],
                "W_dec": w["W_dec"] / w["W_dec"].norm(dim=1, keepdim=True),
                "b_dec": w["b_dec"],
            }
            save_file(tensors, folder / "sae.safetensors")
            cfg = {"activation": activation, "expansion_factor": 2, "normalize_decoder": True,
                   "num_latents": D_SAE, "k": K, "multi_topk": False, "skip_connection": False,
                   "transcode": False, "d_in": D_IN}  # fmt: skip
            (folder / "cfg.json").write_text(json.dumps(cfg))
    if run_config:
        config = {"sae": {"activation": activation, "num_latents": D_SAE, "k": K},
                  "batch_size": 8, "loss_fn": "fvu", "optimizer": "signum", "lr": None,
                  "hookpoints": list(hookpoints), "init_seeds": list(init_seeds),
                  "run_name": run.name, "save_dir": str(run.parent), "log_to_wandb": False,
                  "model": "tiny-model", "dataset": "local/tiny-corpus", "split": "train",
                  "ctx_len": 32, "shuffle_seed": 42, "exclude_tokens": []}  # fmt: skip
        (run / "config.json").write_text(json.dumps(config))
    return run


def sparsify_outputs(folder: Path, x: Tensor) -> tuple[Tensor, Tensor]:
    """sparsify's dense latents and reconstruction (``SparseCoder.encode``/``decode``)."""
    cfg = json.loads((folder / "cfg.json").read_text())
    w = load_file(folder / "sae.safetensors")
    pre = torch.nn.functional.linear(x - w["b_dec"], w["encoder.weight"], w["encoder.bias"]).relu()
    if cfg["activation"] == "topk":
        values, indices = pre.topk(cfg["k"], dim=-1)
    else:  # groupmax: the largest of each of k consecutive groups
        values, indices = pre.unflatten(-1, (cfg["k"], -1)).max(dim=-1)
        indices = indices + torch.arange(0, pre.shape[-1], pre.shape[-1] // cfg["k"])
    z = torch.zeros_like(pre).scatter(-1, indices, values)
    return z, z @ w["W_dec"] + w["b_dec"]


def contract_outputs(run: Path, x: Tensor) -> tuple[Tensor, Tensor]:
    """Latents and reconstruction of raw x by docs/contract.md's rules, from a run folder."""
    cfg = json.loads((run / "cfg.json").read_text())
    w = {name: t.double() for name, t in load_file(run / "sae_weights.safetensors").items()}
    pre = (x.double() - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    rule, k = cfg["architecture"], cfg.get("k")
    if rule == "relu_l1":
        z = pre.relu()
    elif rule in ("jumprelu", "batchtopk"):
        z = pre * (pre > w["threshold"])
    elif rule == "gated":
        magnitude = (x.double() - w["b_dec"]) @ (w["W_enc"] * w["r_mag"].exp()) + w["b_mag"]
        z = (pre > 0) * magnitude.relu()
    elif rule == "topk":
        values, indices = pre.topk(k, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, indices, values.relu())
    else:  # groupmax
        groups = pre.relu().unflatten(-1, (k, -1))
        mask = groups == groups.max(dim=-1, keepdim=True).values
        z = (groups * mask).flatten(-2)
    return z.float(), (z @ w["W_dec"] + w["b_dec"]).float()


def assert_contract_outputs(run: Path, x: Tensor, z_expected: Tensor, x_hat_expected: Tensor):
    """The contract's rule on the run folder's weights gives the expected latents (some zero,
    some not) and reconstruction."""
    assert (z_expected > 0).any() and (z_expected == 0).any()
    z, x_hat = contract_outputs(run, x)
    torch.testing.assert_close(z, z_expected, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(x_hat, x_hat_expected, atol=2e-5, rtol=1e-4)
