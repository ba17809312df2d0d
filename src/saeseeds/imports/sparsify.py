"""sparsify (EleutherAI, ``eai-sparsify`` 1.3) checkpoints: one folder per hookpoint.

sparsify's trainer saves into ``<save_dir>/<run_name>/``: ``config.json`` (the training config,
with ``init_seeds`` and, from its command line, ``model``, ``dataset``, ``ctx_len``, ...), pickled
optimiser state (never read here) and one folder per SAE with ``cfg.json`` (``SparseCoderConfig``
plus ``d_in``) and ``sae.safetensors`` (``encoder.weight`` [n, d_in], ``encoder.bias`` [n],
``W_dec`` [n, d_in], ``b_dec`` [d_in]). With several ``init_seeds`` it trains one SAE per seed on
the same batches and names their folders ``<hookpoint>/seed<N>``; with one, ``<hookpoint>``.
``best/`` holds a second copy of the run (``save_best``) and is read only when named as SRC.
Owns reading those files into an :class:`ImportedSAE`. sparsify encodes
``relu((x − b_dec)·encoder.weightᵀ + encoder.bias)`` and keeps the top ``k`` (or, with
``activation=groupmax``, the largest of each of ``k`` equal groups), then decodes
``z·W_dec + b_dec``: the contract's form after transposing the encoder.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from saeseeds.errors import DataError
from saeseeds.imports.source import (
    ImportedSAE,
    check_shapes,
    positive_int,
    read_json_object,
    read_tensors,
    without,
)

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"
RUN_CONFIG_FILE = "config.json"
BEST_FOLDER = "best"
TENSORS = ("encoder.weight", "encoder.bias", "W_dec", "b_dec")
ACTIVATIONS = ("topk", "groupmax")  # SparseCoderConfig.activation; both are contract rules
SEED_FOLDER = re.compile(r"seed(\d+)")
# config.json values that do not change what an SAE is trained on or how, or name the seeds.
PER_RUN_CONFIG_KEYS = (
    "sae",  # the SAE's config again: cfg.json holds it
    "init_seeds",  # how the seeds were started, like saeseeds's seeds=[...]
    "hookpoints",  # every hookpoint of the run: the run config names its own
    "layers",
    "layer_stride",
    "run_name",
    "save_dir",
    "save_every",
    "save_best",
    "log_to_wandb",
    "wandb_log_frequency",
    "distribute_modules",
    "micro_acc_steps",
    "resume",
    "hf_token",
    "data_preprocessing_num_proc",
)
# config.json facts about the training data (its command line's RunConfig fields).
DATA_IDENTITY_KEYS = (
    "model",
    "revision",
    "load_in_8bit",
    "dataset",
    "split",
    "data_args",
    "text_column",
    "ctx_len",
    "max_examples",
    "shuffle_seed",
    "exclude_tokens",
)


def is_sparsify_folder(folder: Path) -> bool:
    return (folder / CFG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


def find_folders(source: Path) -> list[Path]:
    """``source`` if it is one SAE's folder, else the SAE folders below it (sorted), outside
    ``best/`` copies and hidden folders."""
    if is_sparsify_folder(source):
        return [source]
    found = []
    for path in sorted(source.rglob(WEIGHTS_FILE)):
        parts = path.parent.relative_to(source).parts
        if is_sparsify_folder(path.parent) and not any(
            part == BEST_FOLDER or part.startswith(".") for part in parts
        ):
            found.append(path.parent)
    if not found:
        raise DataError(
            f"{source} holds no sparsify SAE (a folder with {CFG_FILE} and {WEIGHTS_FILE})"
        )
    return found


def layout(folder: Path) -> tuple[str, int | None, Path]:
    """(hookpoint, seed named by the folder or None, the run folder holding config.json)."""
    match = SEED_FOLDER.fullmatch(folder.name)
    if match is not None and not is_sparsify_folder(folder.parent):
        return folder.parent.name, int(match.group(1)), folder.parent.parent
    return folder.name, None, folder.parent


def _seed(
    folder: Path, named: int | None, config: dict[str, Any] | None, given: int | None
) -> tuple[int, str]:
    seeds = (config or {}).get("init_seeds")
    seeds = seeds if isinstance(seeds, list) and seeds else None
    if named is not None and seeds is not None and named not in seeds:
        raise DataError(
            f"{folder}: the folder name says seed {named} but {RUN_CONFIG_FILE} has "
            f"init_seeds={seeds}; the folder was moved from another run"
        )
    if given is not None:
        return given, "given on the command line (--seed)"
    if named is not None:
        return named, f"folder name {folder.name} (sparsify's init_seeds)"
    if seeds is not None and len(seeds) == 1 and isinstance(seeds[0], int):
        return seeds[0], f"{RUN_CONFIG_FILE} init_seeds={seeds}"
    if seeds is not None:
        raise DataError(
            f"{folder}: {RUN_CONFIG_FILE} lists init_seeds={seeds} but the folder is not one of "
            "its seed<N> folders; import the seed folders, or give the seed with --seed N"
        )
    raise DataError(
        f"{folder}: no seed recorded (no {RUN_CONFIG_FILE} with init_seeds above it and no "
        "seed<N> folder name); give each source's seed with --seed N"
    )


def _sae_config(folder: Path) -> tuple[dict[str, Any], int, int, int]:
    """cfg.json checked: (cfg, d_in, n_features, k)."""
    path = folder / CFG_FILE
    cfg = read_json_object(path, "the sparse coder's config")
    d_in = positive_int(cfg.get("d_in"), "d_in", path)
    n_features = cfg.get("num_latents") or d_in * positive_int(
        cfg.get("expansion_factor", 32), "expansion_factor", path
    )
    n_features = positive_int(n_features, "num_latents", path)
    k = positive_int(cfg.get("k", 32), "k", path)
    activation = cfg.get("activation", "topk")
    if activation not in ACTIVATIONS:
        raise DataError(f"{path}: activation={activation!r}; importable: {', '.join(ACTIVATIONS)}")
    if cfg.get("transcode") or cfg.get("skip_connection"):
        raise DataError(
            f"{path}: transcode={cfg.get('transcode')}, skip_connection="
            f"{cfg.get('skip_connection')}: a transcoder or skip connection maps an input to "
            "another output, so its latents are not an SAE's; only plain SAEs can be imported"
        )
    if k > n_features or (activation == "groupmax" and n_features % k):
        raise DataError(f"{path}: k={k} does not fit num_latents={n_features} ({activation})")
    return cfg, d_in, n_features, k


def read_sparsify(folder: Path, seed: int | None = None) -> ImportedSAE:
    """The sparsify SAE in ``folder``; ``seed`` overrides the recorded seed."""
    cfg, d_in, n_features, k = _sae_config(folder)
    path = folder / WEIGHTS_FILE
    raw = read_tensors(path, TENSORS)
    unknown = sorted(set(raw) - set(TENSORS))
    if unknown:
        raise DataError(
            f"{path} holds tensor(s) {', '.join(unknown)} besides {', '.join(TENSORS)}; "
            "only a plain sparse autoencoder can be imported"
        )
    tensors = {
        "W_enc": raw["encoder.weight"].T.contiguous(),  # [n, d_in] -> the contract's [d_in, n]
        "b_enc": raw["encoder.bias"],
        "W_dec": raw["W_dec"],
        "b_dec": raw["b_dec"],
    }
    check_shapes(path, tensors, d_in, n_features)
    hookpoint, named_seed, run_dir = layout(folder)
    config_path = run_dir / RUN_CONFIG_FILE
    config = read_json_object(config_path, "the training config") if config_path.is_file() else None
    seed_value, seed_origin = _seed(folder, named_seed, config, seed)
    model_name = str((config or {}).get("model") or "unknown")
    condition: dict[str, Any] = {"sae": cfg}
    identity: dict[str, Any] = {"library": "sparsify", "hookpoint": hookpoint}
    if config is not None:  # its model is the run config's model.name
        condition["training"] = without(config, PER_RUN_CONFIG_KEYS + ("model",))
        identity.update({key: config[key] for key in DATA_IDENTITY_KEYS if key in config})
    seeds = (config or {}).get("init_seeds")
    return ImportedSAE(
        library="sparsify",
        library_version=None,  # sparsify's files do not record its version
        source_dir=folder,
        weights_file=path,
        seed=seed_value,
        seed_origin=seed_origin,
        architecture=cfg.get("activation", "topk"),
        source_architecture=cfg.get("activation", "topk"),
        tensors=tensors,
        k=k,
        model_name=model_name,
        hook_name=hookpoint,
        activation_dtype="unknown",
        input_scale=1.0,
        source_condition=condition,
        data_identity=identity,
        source_cfg=cfg,
        source_training_cfg=config,
        conversions=["encoder.weight transposed into W_enc"],
        seeds_trained_together=seeds if isinstance(seeds, list) and len(seeds) > 1 else None,
    )
