"""The run-folder contract (version 1): file names, tensor names, cfg.json fields, and which
config keys define an experimental condition.

The trainer writes run folders with these names and the analysis reads them with the same
names; ``docs/contract.md`` documents them for users. This module imports no torch and nothing of
the project, so both apps (and other tools) can use it cheaply.
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
GROUND_TRUTH_FILE = "ground_truth.safetensors"
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
    # Copies of paths.* inside the data group, and knobs that change speed, not results.
    "data.cache_dir",
    "data.model_cache_dir",
    "data.model.device",
    "data.model.forward_batch_size",
    "model.device",
    "model.forward_batch_size",
    "threads",
    # How seeds were started: seeds=[1,2,3] trains them in one job, each exactly as its own job.
    "seeds",
)
# Keys that vary between the runs of one condition (a group): the seed, and the operational ones.
NON_CONDITION_KEYS = ("seed", *OPERATIONAL_KEYS)
# Keys whose null value is the behaviour from before they existed. They are left out of run
# configs when null, so folders written before them still match (resume, skip, grouping).
NULL_MEANS_ABSENT_KEYS = ("order_seed",)


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
    return tuple(key for key in NULL_MEANS_ABSENT_KEYS if key in config and config[key] is None)


def run_config(resolved: dict[str, Any]) -> dict[str, Any]:
    """What defines one run: the resolved config without operational keys (the seed stays)."""
    return without_keys(resolved, OPERATIONAL_KEYS + _null_keys(resolved))


def condition_config(resolved: dict[str, Any]) -> dict[str, Any]:
    """What defines a condition: the run config without the seed."""
    return without_keys(resolved, NON_CONDITION_KEYS + _null_keys(resolved))
