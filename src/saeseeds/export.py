"""Export a saeseeds run folder to the on-disk format of SAE Lens 6 (``SAE.load_from_disk``).

Owns the mapping from a run folder (contract v1) to a SAE Lens folder and nothing else: it reads
``cfg.json`` and ``sae_weights.safetensors`` of a complete run, checks them, and writes SAE Lens's
``cfg.json`` and ``sae_weights.safetensors`` into a new folder, atomically (a temporary sibling
folder renamed into place). SAE Lens uses the same two file names and the same tensor names and
shapes (W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_in], b_dec), but its cfg.json has other fields,
so a run folder does not load unexported. Architectures, saeseeds -> SAE Lens 6 inference class:

* ``topk``       -> ``topk`` (TopKSAE; TopK then ReLU, no decoder-norm rescaling)
* ``relu_l1``    -> ``standard`` (StandardSAE; ReLU, b_dec subtracted from the input)
* ``batchtopk``  -> ``jumprelu`` (JumpReLUSAE; ReLU(pre) * (pre > threshold), the same as
  saeseeds's pre * (pre > threshold) because the threshold is >= 0, which is checked). SAE Lens
  has only a training class for batchtopk and saves its inference form the same way.
* ``jumprelu``   -> ``jumprelu`` (its per-latent thresholds, also >= 0)
* ``matryoshka`` -> ``jumprelu`` (its BatchTopK threshold, as SAE Lens saves its own Matryoshka)
* ``archetypal`` -> ``topk`` (a Top-K encoder; its W_dec is already the effective decoder)

Usage: ``python -m saeseeds.export saelens RUN_DIR OUT_DIR``. Never reads pickles.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from saeseeds import contract
from saeseeds.io import damaged_file, json_text, read_json

SAELENS_WEIGHTS_FILE = "sae_weights.safetensors"  # sae_lens.constants.SAE_WEIGHTS_FILENAME
SAELENS_CFG_FILE = "cfg.json"  # sae_lens.constants.SAE_CFG_FILENAME
# SAE Lens converts any cfg.json whose metadata.sae_lens_version is missing or < 6.0.0 from its
# pre-6 format, so the export states the version whose loader it was verified against.
SAELENS_VERSION = "6.54.12"

# saeseeds architecture -> (SAE Lens inference architecture, tensors SAE Lens expects beyond
# contract.WEIGHT_TENSORS). SAE Lens loads state dicts strictly: no tensor more, none fewer.
ARCHITECTURES: dict[str, tuple[str, tuple[str, ...]]] = {
    "topk": ("topk", ()),
    "relu_l1": ("standard", ()),
    "batchtopk": ("jumprelu", (contract.THRESHOLD_TENSOR,)),
    "jumprelu": ("jumprelu", (contract.THRESHOLD_TENSOR,)),
    "matryoshka": ("jumprelu", (contract.THRESHOLD_TENSOR,)),
    "archetypal": ("topk", ()),
}


class ExportError(ValueError):
    """A run folder that cannot be exported, or an output folder that cannot be written."""


def export_saelens(run_dir: Path, out_dir: Path) -> Path:
    """Write the complete run ``run_dir`` as a SAE Lens 6 folder ``out_dir``; return ``out_dir``.

    ``out_dir`` must not exist or be an empty folder; it appears complete or not at all.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    cfg = read_run_cfg(run_dir)
    tensors = read_run_tensors(run_dir, cfg)
    saelens_cfg = saelens_config(cfg)
    _check_out_dir(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    try:
        _write_durably(tmp / SAELENS_WEIGHTS_FILE, save(tensors))
        cfg_text = json_text(saelens_cfg, sort_keys=True)
        _write_durably(tmp / SAELENS_CFG_FILE, cfg_text.encode())
        try:
            os.replace(tmp, out_dir)  # replaces a missing or empty folder, atomically
        except OSError as error:
            raise ExportError(f"cannot move the export into {out_dir}: {error.strerror}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir


def read_run_cfg(run_dir: Path) -> dict[str, Any]:
    """The checked cfg.json of a complete run folder of an exportable architecture."""
    if not run_dir.is_dir():
        raise ExportError(f"run folder {run_dir} does not exist or is not a folder")
    if not (run_dir / contract.COMPLETE_MARKER).is_file():
        raise ExportError(
            f"{run_dir} is not a complete run folder: no {contract.COMPLETE_MARKER} marker "
            "(training unfinished or crashed)"
        )
    damaged = damaged_file(run_dir, check_hashes=True)
    if damaged is not None:
        raise ExportError(f"{run_dir} is not as it was completed: {damaged}")
    cfg_path = run_dir / contract.CFG_FILE
    try:
        cfg = read_json(cfg_path)
    except (OSError, ValueError) as error:
        raise ExportError(f"cannot read {cfg_path}: {error}") from None
    if not isinstance(cfg, dict):
        raise ExportError(f"{cfg_path} is not a JSON object")
    version = cfg.get("contract_version")
    if version != contract.CONTRACT_VERSION:
        raise ExportError(
            f"{cfg_path}: contract_version {version!r}; this export reads version "
            f"{contract.CONTRACT_VERSION}"
        )
    architecture = cfg.get("architecture")
    if architecture not in ARCHITECTURES:
        raise ExportError(
            f"{cfg_path}: unknown architecture {architecture!r}; exportable architectures: "
            f"{', '.join(sorted(ARCHITECTURES))}"
        )
    uses_k = ARCHITECTURES[architecture][0] == "topk"
    for field in ("d_in", "n_features", "k") if uses_k else ("d_in", "n_features"):
        value = cfg.get(field)
        if type(value) is not int or value < 1:
            raise ExportError(f"{cfg_path}: {field}={value!r} must be a positive integer")
    if uses_k and cfg["k"] >= cfg["n_features"]:
        raise ExportError(
            f"{cfg_path}: k={cfg['k']} must be smaller than n_features={cfg['n_features']}"
        )
    if cfg.get("dtype", "float32") != "float32":
        raise ExportError(f"{cfg_path}: dtype {cfg['dtype']!r}; contract v1 saves float32")
    return cfg


def read_run_tensors(run_dir: Path, cfg: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors SAE Lens needs, checked for name, shape and dtype (others are left out)."""
    d_in, n = cfg["d_in"], cfg["n_features"]
    shapes = {"W_enc": (d_in, n), "b_enc": (n,), "W_dec": (n, d_in), "b_dec": (d_in,)}
    names = (*contract.WEIGHT_TENSORS, *ARCHITECTURES[cfg["architecture"]][1])
    path = run_dir / contract.WEIGHTS_FILE
    try:
        with safe_open(str(path), framework="pt") as file:
            present = set(file.keys())
            missing = [name for name in names if name not in present]
            if missing:
                raise ExportError(f"{path} lacks tensor(s) {', '.join(missing)}")
            tensors = {name: file.get_tensor(name).contiguous() for name in names}
    except (OSError, SafetensorError) as error:
        raise ExportError(f"cannot read {path}: {error}") from None
    for name, tensor in tensors.items():
        expected = shapes.get(name, (n,))
        if tuple(tensor.shape) != expected or tensor.dtype != torch.float32:
            raise ExportError(
                f"{path}: tensor {name} is {tensor.dtype} {list(tensor.shape)}; "
                f"expected torch.float32 {list(expected)}"
            )
    threshold = tensors.get(contract.THRESHOLD_TENSOR)
    if threshold is not None and not bool((threshold >= 0).all()):
        raise ExportError(
            f"{path}: threshold has entries < 0 or NaN (min {threshold.min().item()!r}); "
            "SAE Lens's JumpReLU applies a ReLU first, so only thresholds >= 0 export exactly"
        )
    return tensors


def saelens_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """SAE Lens 6's cfg.json for a checked run cfg (the fields of its SAEConfig subclass)."""
    architecture = ARCHITECTURES[cfg["architecture"]][0]
    result: dict[str, Any] = {
        "architecture": architecture,
        "d_in": cfg["d_in"],
        "d_sae": cfg["n_features"],
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,  # pre = (x - b_dec) @ W_enc + b_enc
        "normalize_activations": "none",  # normalisation is folded into the weights
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": SAELENS_VERSION,
            "sae_lens_training_version": None,
            "model_name": cfg.get("model_name"),
            "hook_name": cfg.get("hook_name"),
            "saeseeds_cfg": cfg,  # provenance: the run's own cfg.json, unchanged
        },
    }
    if architecture == "topk":
        result["k"] = cfg["k"]
        result["rescale_acts_by_decoder_norm"] = False
    return result


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.is_dir():
        if any(out_dir.iterdir()):
            raise ExportError(f"output folder {out_dir} exists and is not empty")
    elif out_dir.exists() or out_dir.is_symlink():
        raise ExportError(f"output path {out_dir} exists and is not a folder")


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m saeseeds.export", description="Export a saeseeds run folder."
    )
    formats = parser.add_subparsers(dest="format", required=True, metavar="FORMAT")
    saelens = formats.add_parser("saelens", help="a folder for SAE Lens 6's SAE.load_from_disk")
    saelens.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a complete run folder")
    saelens.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="new or empty folder")
    args = parser.parse_args(argv)
    try:
        out_dir = export_saelens(args.run_dir, args.out_dir)
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"exported {args.run_dir} -> {out_dir} (SAE Lens: SAE.load_from_disk({str(out_dir)!r}))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
