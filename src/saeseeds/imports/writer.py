"""Writing an :class:`ImportedSAE` as a contract run folder (``docs/contract.md``, "Imported runs").

One folder per SAE: ``sae_weights.safetensors``, ``cfg.json``, ``environment.json`` (the run
config, the data identity in ``data_provenance`` and where the SAE came from in ``import``), with
``feature_stats.safetensors`` and ``metrics.json`` only when held-out statistics were computed,
then ``COMPLETE``. The folder is built under a temporary name and renamed into place, so it
appears complete or not at all. The file writers are the trainer's
(:mod:`saeseeds.training.run_folder`); this module decides only what an import writes.
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path
from typing import Any

from torch import Tensor

from saeseeds import contract
from saeseeds.analysis.imported import IMPORTED_DATA_PREFIX
from saeseeds.imports.source import ImportedSAE
from saeseeds.io import atomic_directory, file_sha256
from saeseeds.training import run_folder

IMPORT_VERSIONS = ("saeseeds", "torch", "numpy", "safetensors")
# Hex digits of the source-config digest in the run config: 64 bits, short in group labels.
DIGEST_LENGTH = 16
# Contract rules whose cfg.json carries k.
USES_K = ("topk", "groupmax")


def cfg_json(sae: ImportedSAE) -> dict[str, Any]:
    """cfg.json: the contract's fields, the rule's k, and the architecture the library trained."""
    scaled = sae.input_scale != 1.0
    return {
        "contract_version": contract.CONTRACT_VERSION,
        "architecture": sae.architecture,
        "d_in": sae.d_in,
        "n_features": sae.n_features,
        **({"k": sae.k} if sae.architecture in USES_K else {}),
        "model_name": sae.model_name,
        "hook_name": sae.hook_name,
        "dtype": "float32",
        "activation_dtype": sae.activation_dtype,
        "normalization": {"method": "scalar" if scaled else "none", "input_scale": sae.input_scale},
        "seed": sae.seed,
        "data": f"{IMPORTED_DATA_PREFIX}{sae.library}",
        "source_architecture": sae.source_architecture,
    }


def run_config(sae: ImportedSAE) -> dict[str, Any]:
    """What the analysis groups by: library, model, hook, the contract rule and size, the seed,
    and a digest of the source's cleaned configuration (in full in the provenance): a digest
    keeps group labels short when the configs of two libraries are analysed side by side."""
    return {
        "imported_from": sae.library,
        "model": {"name": sae.model_name},
        "hook": {"name": sae.hook_name},
        "sae": {
            "architecture": sae.architecture,
            "n_features": sae.n_features,
            **({"k": sae.k} if sae.architecture in USES_K else {}),
        },
        "source_config_digest": contract.config_sha256(sae.source_condition)[:DIGEST_LENGTH],
        "seed": sae.seed,
    }


def environment(sae: ImportedSAE, heldout: dict[str, Any] | None) -> dict[str, Any]:
    """environment.json: the run config, and the SAE's provenance (see docs/contract.md)."""
    config = run_config(sae)
    return {
        "python": sys.version.split()[0],
        "versions": {name: run_folder._version(name) for name in IMPORT_VERSIONS},
        "platform": {"system": platform.platform(), "machine": platform.machine()},
        "device": "cpu",
        "precision": None,
        "git": run_folder.git_state(),
        "installed_packages_sha256": run_folder.installed_packages_hash(),
        "seed": sae.seed,
        "model_weight_hash": None,
        "activation_store_key": None,
        # What identifies the training data, where the analysis looks for it; nothing per-run.
        "data_provenance": {
            "source": f"{IMPORTED_DATA_PREFIX}{sae.library}",
            "data_identity": sae.data_identity,
        },
        "import": {  # where this SAE came from: per-run facts
            "library": sae.library,
            "library_version": sae.library_version,
            "source_dir": str(sae.source_dir.resolve()),
            "weights_file": sae.weights_file.name,
            "weights_sha256": file_sha256(sae.weights_file),
            "source_architecture": sae.source_architecture,
            "seed_origin": sae.seed_origin,
            "conversions": sae.conversions,
            "source_condition": sae.source_condition,
            "source_cfg": sae.source_cfg,
            "source_training_cfg": sae.source_training_cfg,
            "imported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "heldout": heldout,
        },
        "config_sha256": contract.config_sha256(config),
        "condition_sha256": contract.config_sha256(contract.condition_config(config)),
        "config": config,
        "command": sys.argv,
        "seeds_trained_together": sae.seeds_trained_together,
        "wandb": None,
    }


def write_run(
    run_dir: Path,
    sae: ImportedSAE,
    stats: tuple[dict[str, Any], Tensor, Tensor] | None = None,
    heldout: dict[str, Any] | None = None,
) -> Path:
    """Write ``sae`` as the complete run folder ``run_dir``; ``stats`` = (metrics, fire_count,
    activation_sum) from :func:`.heldout.heldout_statistics`, ``heldout`` their source."""
    with atomic_directory(run_dir) as tmp:
        run_folder.write_weights(tmp, sae.tensors)
        if stats is not None:
            metrics, fire_count, activation_sum = stats
            run_folder.write_feature_stats(
                tmp, fire_count, activation_sum, metrics["heldout_tokens"]
            )
            run_folder.write_metrics(tmp, metrics)
        run_folder.write_json(tmp, contract.CFG_FILE, cfg_json(sae))
        run_folder.write_json(tmp, contract.ENVIRONMENT_FILE, environment(sae, heldout))
        run_folder.mark_complete(tmp)
    return run_dir
