"""The run-folder contract (version 1): file names, tensor names, cfg.json fields, which config
keys define an experimental condition, which provenance identifies the training data, and what
``COMPLETE`` records about the files it vouches for.

The trainer writes run folders with these names and the analysis reads them with the same
names; ``docs/contract.md`` documents them for users. This module imports no torch and nothing of
the project, and touches no file, so both apps (and other tools) can use it cheaply; reading and
checking the files COMPLETE records is :func:`saeseeds.io.damaged_file`'s.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

CONTRACT_VERSION = 1

WEIGHTS_FILE = "sae_weights.safetensors"
CFG_FILE = "cfg.json"
FEATURE_STATS_FILE = "feature_stats.safetensors"
TOP_EXAMPLES_FILE = "top_examples.json"
METRICS_FILE = "metrics.json"
ENVIRONMENT_FILE = "environment.json"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
COMPLETE_MARKER = "COMPLETE"
# COMPLETE is a JSON manifest of this format: the size and sha256 of every contract file present
# at completion. Folders written before it hold a timestamp line instead (no manifest).
COMPLETE_FORMAT = "saeseeds.complete/1"
GROUND_TRUTH_FILE = "ground_truth.safetensors"
# Folded weights at fixed fractions of training (snapshots/fraction=0.25.safetensors, ...) and
# their index; the final weights are WEIGHTS_FILE. Optional: older folders have none.
SNAPSHOTS_DIR = "snapshots"
SNAPSHOT_INDEX = "index.json"
SNAPSHOTS_FORMAT = "saeseeds.snapshots/1"
# The SAE's latents on the first held-out rows, sparse (CSR); optional like the snapshots.
HELDOUT_CODES_FILE = "heldout_codes.safetensors"
HELDOUT_CODES_TENSORS = ("indptr", "indices", "values")
# Held (flock) by the process that owns a job folder, with its PID and host (saeseeds.io.job_lock).
LOCK_FILE = ".saeseeds.lock"
# Hydra's record of the job's composed config. The trainer writes it itself once it has accepted
# a job (Hydra's own writing is off), so a refused command never rewrites a finished folder's.
HYDRA_DIR = ".hydra"
HYDRA_CONFIG = ".hydra/config.yaml"
# One JSON record per job of a multirun, in the sweep folder (not in the job's folder, so that a
# deleted job folder is still known): what the job was, what it did, and why it failed.
JOB_RECORDS_DIR = ".saeseeds_jobs"
JOB_RECORD_FORMAT = "saeseeds.job/1"

# Tensors every architecture saves, float32, with input normalisation folded in.
WEIGHT_TENSORS = ("W_enc", "b_enc", "W_dec", "b_dec")
# Extra tensors an architecture may add to the weights file: the inference threshold
# [n_features] of batchtopk, matryoshka and jumprelu (pre-activations at or below it are zero).
THRESHOLD_TENSOR = "threshold"
# Per-feature held-out statistics; n_tokens is in the file's metadata.
FEATURE_STATS_TENSORS = ("fire_count", "activation_sum")
TOP_EXAMPLES_FORMAT = "saeseeds.top_examples/1"
# The firing token of a top-examples context is wrapped in these. They are not markup in HTML or
# Markdown, so a rendered report keeps the token visible; folders written before used the second.
TOP_EXAMPLES_MARKER = ("⟦", "⟧")  # U+27E6, U+27E7
EARLIER_TOP_EXAMPLES_MARKERS = (("<<", ">>"),)

# cfg.json fields written for every architecture; an architecture adds its own (k, ...).
CFG_FIELDS = (
    "contract_version",
    "architecture",
    "d_in",
    "n_features",
    "model_name",
    "hook_name",
    "dtype",
    "activation_dtype",
    "normalization",
    "seed",
    "data",
)

# Config keys that never change what a run computes: where outputs go, how it is logged or
# shown, and how it was started. Dotted paths name nested keys.
OPERATIONAL_KEYS = (
    "paths",
    "logger",
    "resume",
    "ckpt_path",
    "trainer.enable_progress_bar",
    "trainer.checkpoint_every_n_steps",
    "trainer.log_every_n_steps",
    # What is saved besides the weights (snapshots, held-out codes); the weights do not change.
    "trainer.snapshots",
    "trainer.snapshot_fractions",
    "trainer.heldout_codes",
    # Copies of paths.* inside the data group, and knobs that change speed, not results.
    "data.cache_dir",
    "data.model_cache_dir",
    "data.model.device",
    "data.model.forward_batch_size",
    # The precision of the CE-loss forward: the weights never depend on it (docs/scaling.md).
    "data.model.eval_dtype",
    # Streaming the activations instead of storing them: the same batches, the same SAEs.
    "data.store",
    "model.device",
    "model.forward_batch_size",
    "model.eval_dtype",
    "threads",
    # How seeds were started: seeds=[1,2,3] trains them in one job, each exactly as its own job.
    "seeds",
    # Retired: how often Lightning's validation loop ran (the held-out curve is now the only
    # held-out pass). It never changed the weights, and folders written with it must still match.
    "trainer.val_check_interval",
)
# Keys that vary between the runs of one condition (a group): the seed, and the operational ones.
NON_CONDITION_KEYS = ("seed", *OPERATIONAL_KEYS)
# Keys whose null value is the behaviour from before they existed. They are left out of run
# configs when null, so folders written before them still match (resume, skip, grouping).
NULL_MEANS_ABSENT_KEYS = ("order_seed", "data.sampler")
# Config blocks that are off when their switch key has this value (``data.hierarchy`` with
# ``n_parents: 0``: synthetic data without a hierarchy). An off block computes nothing, so it is
# left out of run configs, and folders written before it existed still match.
OFF_BLOCKS = {"data.hierarchy": ("n_parents", 0)}


def snapshot_file(fraction: float) -> str:
    """``fraction=0.25.safetensors``: a snapshot's file name inside SNAPSHOTS_DIR."""
    return f"fraction={fraction:g}.safetensors"


def without_keys(config: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """A copy of a nested config without the (dotted) ``keys``."""
    result = json.loads(json.dumps(config, default=str))
    for dotted in keys:
        *parents, last = dotted.split(".")
        node = result
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return result


def config_sha256(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as {dotted key: leaf value}."""
    if not isinstance(config, dict):
        return {prefix: config}
    flat: dict[str, Any] = {}
    for key, value in config.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def differing_keys(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two configs (a key present in one only counts)."""
    left, right = flatten(recorded), flatten(current)
    return sorted(
        key
        for key in set(left) | set(right)
        if json.dumps(left.get(key, "<absent>"), sort_keys=True, default=str)
        != json.dumps(right.get(key, "<absent>"), sort_keys=True, default=str)
    )


def describe_differences(recorded: dict[str, Any], current: dict[str, Any], limit: int = 6) -> str:
    """``sae.k=8 vs 16, sae.lr=None vs 0.01``: the first ``limit`` differing keys, both values."""
    left, right = flatten(recorded), flatten(current)
    keys = differing_keys(recorded, current)
    parts = [f"{key}={left.get(key, '<absent>')} vs {right.get(key, '<absent>')}" for key in keys]
    more = f" and {len(parts) - limit} more" if len(parts) > limit else ""
    return ", ".join(parts[:limit]) + more


def _null_keys(config: dict[str, Any]) -> tuple[str, ...]:
    """The keys left out of ``config`` as if absent: nulls of NULL_MEANS_ABSENT_KEYS, and off
    blocks of OFF_BLOCKS."""
    flat = flatten(config)
    nulls = tuple(key for key in NULL_MEANS_ABSENT_KEYS if key in flat and flat[key] is None)
    off = tuple(
        block
        for block, (switch, value) in OFF_BLOCKS.items()
        if flat.get(f"{block}.{switch}") == value
    )
    return nulls + off


def run_config(resolved: dict[str, Any]) -> dict[str, Any]:
    """What defines one run: the resolved config without operational keys (the seed stays)."""
    return without_keys(resolved, OPERATIONAL_KEYS + _null_keys(resolved))


def condition_config(resolved: dict[str, Any]) -> dict[str, Any]:
    """What defines a condition: the run config without the seed."""
    return without_keys(resolved, NON_CONDITION_KEYS + _null_keys(resolved))


# ---- the identity of the training data ----

# Provenance keys that identify the content of the training data, for sources that do not record
# ``data_identity`` themselves (run folders written before it): the activation file's hash, the
# activation cache key (model weights, hook, corpus content, sizes), the model's weight and
# tokenizer hashes, the corpus identity (with its content hash), the synthetic data seed, and the
# control with its seed. Per-run facts (where the cache is, whether it was hit) are left out.
DATA_IDENTITY_KEYS = (
    "source",
    "file_sha256",
    "activation_cache_key",
    "model_weight_hash",
    "tokenizer_hash",
    "corpus",
    "data_seed",
    "model_seed",
    "control",
    "control_seed",
)


def data_identity(provenance: Any) -> dict[str, Any]:
    """The facts that identify a run's training data: the source's own ``data_identity`` when it
    records one, else the :data:`DATA_IDENTITY_KEYS` of its provenance. ``{}`` when unknown."""
    if not isinstance(provenance, dict):
        return {}
    recorded = provenance.get("data_identity")
    if isinstance(recorded, dict):
        return recorded
    return {key: provenance[key] for key in DATA_IDENTITY_KEYS if key in provenance}


def recorded_data_identity(environment: Any) -> dict[str, Any]:
    """The data identity of a completed run, from its environment.json."""
    provenance = environment.get("data_provenance") if isinstance(environment, dict) else None
    return data_identity(provenance)


def describe_identity_differences(recorded: dict[str, Any], current: dict[str, Any]) -> str:
    """``file_sha256=3f2a1b4c5d6e… vs 9c8d7e6f5a4b…``: like :func:`describe_differences`, with
    long values (hashes) shortened to their first 12 characters."""

    def shortened(config: dict[str, Any]) -> dict[str, Any]:
        return {
            key: f"{value[:12]}…" if isinstance(value, str) and len(value) > 16 else value
            for key, value in flatten(config).items()
        }

    return describe_differences(shortened(recorded), shortened(current), limit=3)


# ---- COMPLETE: what a complete folder vouches for ----

# The files COMPLETE records (those present at completion): everything the trainer writes for
# readers. Checkpoints, .hydra/ and logs are not part of the result.
RECORDED_FILES = (
    WEIGHTS_FILE,
    FEATURE_STATS_FILE,
    CFG_FILE,
    METRICS_FILE,
    TOP_EXAMPLES_FILE,
    GROUND_TRUTH_FILE,
    HELDOUT_CODES_FILE,
    ENVIRONMENT_FILE,
)


def completion_record(files: dict[str, dict[str, Any]], completed: str) -> dict[str, Any]:
    """COMPLETE's content: the completion time and, per file of :data:`RECORDED_FILES` present,
    ``{"bytes": size, "sha256": hex digest}``."""
    return {"format": COMPLETE_FORMAT, "completed": completed, "files": files}


def recorded_files(complete: Any) -> dict[str, dict[str, Any]] | None:
    """{file: {"bytes", "sha256"}} from COMPLETE's parsed content; None for a folder written
    before COMPLETE was a manifest (a timestamp line), complete on its marker alone."""
    if not isinstance(complete, dict) or complete.get("format") != COMPLETE_FORMAT:
        return None
    files = complete.get("files")
    return files if isinstance(files, dict) else {}
