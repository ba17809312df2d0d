"""SAE Lens 6 folders: ``cfg.json`` + ``sae_weights.safetensors`` (+ ``runner_cfg.json``).

SAE Lens 6 writes this layout for a trained SAE (``TrainingSAE.save_inference_model``, called by
its training runner with ``runner_cfg.json`` beside it), for an SAE saved by hand
(``SAE.save_model``) and for its training checkpoints (``save_model`` of the training SAE, with
``activation_scaler.json``). Inference folders hold the architectures ``standard``, ``gated``,
``jumprelu`` and ``topk`` (BatchTopK and Matryoshka BatchTopK are saved as ``jumprelu``);
checkpoints also ``batchtopk`` and ``matryoshka_batchtopk``, with the threshold as the scalar
buffer ``topk_threshold``. Owns reading those files into an :class:`ImportedSAE`; the maths of
each architecture is from SAE Lens 6.54's ``saes/*.py`` (see ``docs/contract.md``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from saeseeds.errors import DataError
from saeseeds.imports.source import (
    ImportedSAE,
    check_shapes,
    fold_into_contract,
    positive_int,
    read_json_object,
    read_tensors,
    without,
)

CFG_FILE = "cfg.json"  # sae_lens.constants.SAE_CFG_FILENAME
WEIGHTS_FILE = "sae_weights.safetensors"  # sae_lens.constants.SAE_WEIGHTS_FILENAME
RUNNER_CFG_FILE = "runner_cfg.json"  # sae_lens.constants.RUNNER_CFG_FILENAME
SCALER_FILE = "activation_scaler.json"  # sae_lens.constants.ACTIVATION_SCALER_CFG_FILENAME

# SAE Lens architecture -> (contract latent rule, the weights file's tensors).
ARCHITECTURES: dict[str, tuple[str, tuple[str, ...]]] = {
    "standard": ("relu_l1", ("W_enc", "b_enc", "W_dec", "b_dec")),
    "topk": ("topk", ("W_enc", "b_enc", "W_dec", "b_dec")),
    "jumprelu": ("jumprelu", ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")),
    "gated": ("gated", ("W_enc", "b_gate", "b_mag", "r_mag", "W_dec", "b_dec")),
    "batchtopk": ("jumprelu", ("W_enc", "b_enc", "W_dec", "b_dec", "topk_threshold")),
    "matryoshka_batchtopk": ("jumprelu", ("W_enc", "b_enc", "W_dec", "b_dec", "topk_threshold")),
}
# Architectures whose latents SAE Lens may multiply by the decoder-row norms.
RESCALING = ("topk", "batchtopk", "matryoshka_batchtopk")
# cfg.json values that differ between seeds of one training recipe, or say where it ran.
PER_RUN_CFG_KEYS = ("device",)
PER_RUN_METADATA_KEYS = (
    "l0",  # end-of-training statistics (SAETrainer.set_final_sae_metadata)
    "num_dead_features",
    "sae_lens_version",  # kept in the provenance instead
    "sae_lens_training_version",
    "neuronpedia_id",
)
# runner_cfg.json values that do not change what is trained, or differ between seeds.
PER_RUN_RUNNER_KEYS = (
    "seed",
    "logger",
    "output_path",
    "checkpoint_path",
    "resume_from_checkpoint",
    "cached_activations_path",
    "device",
    "llm_device",
    "act_store_device",
    "prefetch_llm_batches",
    "compile_llm",
    "llm_compilation_mode",
    "compile_sae",
    "sae_compilation_mode",
    "store_batch_size_prompts",
    "eval_batch_size_prompts",
    "n_eval_batches",
    "n_checkpoints",
    "save_final_checkpoint",
    "verbose",
    "sae_lens_version",
    "sae_lens_training_version",
)
# Recorded in the run config itself (model.name, hook.name).
IN_RUN_CONFIG_KEYS = ("model_name", "hook_name")
# Facts about the training data, from cfg.json's metadata (or runner_cfg.json where it lacks them).
DATA_IDENTITY_KEYS = (
    "model_name",
    "model_class_name",
    "model_from_pretrained_kwargs",
    "hook_name",
    "hook_head_index",
    "dataset_path",
    "is_dataset_tokenized",
    "use_chat_formatting",
    "context_size",
    "prepend_bos",
    "seqpos_slice",
    "exclude_special_tokens",
    "sequence_separator_token",
    "disable_concat_sequences",
    "use_cached_activations",
)


def is_saelens_folder(folder: Path) -> bool:
    """A folder with SAE Lens's two files that is not a saeseeds run folder (same file names)."""
    return (
        (folder / CFG_FILE).is_file()
        and (folder / WEIGHTS_FILE).is_file()
        and not _is_run_folder(folder)
    )


def _is_run_folder(folder: Path) -> bool:
    try:
        return "contract_version" in json.loads((folder / CFG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, TypeError):
        return False


def find_folders(source: Path) -> list[Path]:
    """``source`` if it is an SAE Lens folder, else the SAE Lens folders below it (sorted)."""
    if _is_run_folder(source):
        raise DataError(f"{source} is a saeseeds run folder, not an SAE Lens folder")
    if is_saelens_folder(source):
        return [source]
    found = sorted(
        path.parent
        for path in source.rglob(CFG_FILE)
        if is_saelens_folder(path.parent)
        and not any(part.startswith(".") for part in path.relative_to(source).parts)
    )
    if not found:
        raise DataError(
            f"{source} holds no SAE Lens folder (a folder with {CFG_FILE} and {WEIGHTS_FILE})"
        )
    return found


def _major_version(version: Any) -> int | None:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return None


def _input_scale(folder: Path, cfg: dict[str, Any]) -> float:
    """The scaling SAE Lens trained with and has not yet folded into the weights (1.0 if none)."""
    method = cfg.get("normalize_activations", "none")
    if method in ("none", None):
        return 1.0
    if method == "expected_average_only_in":
        scaler = (
            read_json_object(folder / SCALER_FILE, "the activation scaling factor")
            if (folder / SCALER_FILE).is_file()
            else {}
        )
        factor = scaler.get("scaling_factor")
        if isinstance(factor, int | float) and not isinstance(factor, bool) and factor > 0:
            return float(factor)
        raise DataError(
            f"{folder / CFG_FILE}: normalize_activations='expected_average_only_in' and no "
            f"{SCALER_FILE} with a positive scaling_factor beside it, so the weights' input scale "
            "is unknown. Import the SAE that SAE Lens saved at the end of training (the factor is "
            "folded in there) or the checkpoint folder with its activation_scaler.json."
        )
    raise DataError(
        f"{folder / CFG_FILE}: normalize_activations={method!r} cannot be imported: "
        "layer_norm and constant_norm_rescale normalise each token, which no fixed weights "
        "express, and an unfolded covariance_whitening belongs to a training checkpoint. "
        "Importable: 'none', or 'expected_average_only_in' with its scaling factor; SAE Lens "
        "folds 'covariance_whitening' into the SAE it saves at the end of training."
    )


def _contract_tensors(
    folder: Path, cfg: dict[str, Any], architecture: str, d_in: int, n: int
) -> tuple[dict[str, torch.Tensor], list[str]]:
    path = folder / WEIGHTS_FILE
    names = ARCHITECTURES[architecture][1]
    raw = read_tensors(path, tuple(name for name in names if name != "threshold"))
    if architecture == "jumprelu" and "threshold" not in raw:
        if "log_threshold" not in raw:  # older JumpReLU checkpoints trained log(threshold)
            raise DataError(
                f"{path} lacks tensor threshold (or log_threshold); it holds {list(raw)}"
            )
        raw["threshold"] = raw.pop("log_threshold").exp()
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise DataError(
            f"{path} holds tensor(s) {', '.join(unknown)} that a {architecture!r} SAE Lens SAE "
            f"does not have (expected {', '.join(names)}); the folder was not written by SAE Lens 6"
        )
    conversions = []
    if architecture == "gated":
        raw["b_enc"] = raw.pop("b_gate")
        conversions.append("gated: b_gate stored as b_enc (the gate's pre-activation bias)")
    if "topk_threshold" in raw:
        if raw["topk_threshold"].numel() != 1:
            raise DataError(f"{path}: topk_threshold must be a scalar")
        raw["threshold"] = raw.pop("topk_threshold").reshape(()).expand(n).clone()
        conversions.append("BatchTopK threshold stored per feature (SAE Lens saves it so)")
    check_shapes(path, raw, d_in, n)
    if "threshold" in raw and bool((raw["threshold"] < 0).any()):
        # SAE Lens computes ReLU(pre)·1[pre > θ]: with θ < 0 that is pre·1[pre > 0].
        raw["threshold"] = raw["threshold"].clamp_min(0.0)
        conversions.append("negative thresholds raised to 0 (SAE Lens applies ReLU first)")
    rescale = architecture in RESCALING and bool(cfg.get("rescale_acts_by_decoder_norm", False))
    tensors, folded = fold_into_contract(
        raw,
        input_scale=_input_scale(folder, cfg),
        b_dec_subtracted=bool(cfg.get("apply_b_dec_to_input", True)),
        rescale_by_decoder_norm=rescale,
    )
    return tensors, conversions + folded


def _seed(
    folder: Path, cfg: dict[str, Any], runner: dict[str, Any] | None, given: int | None
) -> tuple[int, str]:
    if given is not None:
        return given, "given on the command line (--seed)"
    for value, origin in (
        (cfg.get("seed"), f"{CFG_FILE} seed"),
        ((cfg.get("metadata") or {}).get("seed"), f"{CFG_FILE} metadata.seed"),
        (((cfg.get("metadata") or {}).get("saeseeds_cfg") or {}).get("seed"),
         f"{CFG_FILE} metadata.saeseeds_cfg.seed (a saeseeds export)"),
        ((runner or {}).get("seed"), f"{RUNNER_CFG_FILE} seed (SAE Lens does not seed the SAE's "
                                     "initialisation with it)"),
    ):  # fmt: skip
        if isinstance(value, int) and not isinstance(value, bool):
            return value, origin
    raise DataError(
        f"{folder}: no seed recorded ({CFG_FILE} has none and there is no {RUNNER_CFG_FILE} with "
        "one); give each source's seed with --seed N"
    )


def _data_identity(metadata: dict[str, Any], runner: dict[str, Any] | None) -> dict[str, Any]:
    identity: dict[str, Any] = {"library": "saelens"}
    for key in DATA_IDENTITY_KEYS:
        if key in metadata:
            identity[key] = metadata[key]
        elif runner is not None and key in runner:
            identity[key] = runner[key]
    return identity


def read_saelens(folder: Path, seed: int | None = None) -> ImportedSAE:
    """The SAE Lens 6 SAE in ``folder``; ``seed`` overrides any recorded seed."""
    cfg_path = folder / CFG_FILE
    cfg = read_json_object(cfg_path, "the SAE's config")
    metadata = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    version = metadata.get("sae_lens_version", cfg.get("sae_lens_version"))
    major = _major_version(version)
    if major is None or major < 6:
        raise DataError(
            f"{cfg_path} was written by SAE Lens {version or 'before 6.0'}; this importer reads "
            "SAE Lens 6 folders. Load it with SAE Lens 6 (SAE.load_from_disk) and save it again "
            "(sae.save_model(path)) to convert it."
        )
    architecture = cfg.get("architecture")
    if architecture not in ARCHITECTURES:
        raise DataError(
            f"{cfg_path}: architecture {architecture!r} cannot be imported; importable SAE Lens "
            f"architectures: {', '.join(ARCHITECTURES)}"
        )
    d_in = positive_int(cfg.get("d_in"), "d_in", cfg_path)
    n_features = positive_int(cfg.get("d_sae"), "d_sae", cfg_path)
    k = positive_int(cfg.get("k"), "k", cfg_path) if architecture == "topk" else None
    tensors, conversions = _contract_tensors(folder, cfg, architecture, d_in, n_features)
    runner_path = folder / RUNNER_CFG_FILE
    runner = read_json_object(runner_path, "the runner's config") if runner_path.is_file() else None
    seed_value, seed_origin = _seed(folder, cfg, runner, seed)
    model_name = str(metadata.get("model_name") or (runner or {}).get("model_name") or "unknown")
    hook_name = str(metadata.get("hook_name") or (runner or {}).get("hook_name") or "unknown")
    condition: dict[str, Any] = {
        "sae": {
            **without(cfg, PER_RUN_CFG_KEYS + ("metadata",)),
            "metadata": without(metadata, PER_RUN_METADATA_KEYS + IN_RUN_CONFIG_KEYS),
        },
    }
    if runner is not None:
        condition["training"] = without(runner, PER_RUN_RUNNER_KEYS + IN_RUN_CONFIG_KEYS)
        if isinstance(runner.get("sae"), dict):  # the training form: what it was trained with
            condition["training"]["sae"] = without(runner["sae"], ("device", "metadata"))
    return ImportedSAE(
        library="saelens",
        library_version=str(version),
        source_dir=folder,
        weights_file=folder / WEIGHTS_FILE,
        seed=seed_value,
        seed_origin=seed_origin,
        architecture=ARCHITECTURES[architecture][0],
        source_architecture=str(metadata.get("training_architecture") or architecture),
        tensors=tensors,
        k=k,
        model_name=model_name,
        hook_name=hook_name,
        activation_dtype=str((runner or {}).get("dtype") or cfg.get("dtype") or "float32"),
        input_scale=_input_scale(folder, cfg),
        source_condition=condition,
        data_identity=_data_identity(metadata, runner),
        source_cfg=cfg,
        source_training_cfg=runner,
        conversions=conversions,
    )
