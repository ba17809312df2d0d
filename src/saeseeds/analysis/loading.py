"""Reading and validating one run folder (the contract of :mod:`saeseeds.contract`).

Owns every read of a run folder: cfg.json, sae_weights.safetensors, feature_stats.safetensors,
metrics.json, environment.json, .hydra/config.yaml and, lazily, top_examples.json. Tensors are
read with safetensors only (never pickle), and ``checkpoints/`` is never touched. A folder that
cannot be used raises :class:`RunFolderError` with the reason; nothing here decides grouping.

The config recorded at completion (environment.json's ``config``) is what a run is; a folder
whose ``.hydra/config.yaml`` no longer agrees with it was re-used or edited after it finished
(**relabelled**) and is not analysed: its two records disagree, and which one the user meant
cannot be known, so it is named with the differing keys instead of being counted under either.
A folder whose files are no longer those its ``COMPLETE`` recorded (sizes and sha256) is
**corrupt**, with the file named. JSON is read with :func:`saeseeds.io.read_json`, so a file
nested too deeply or holding a number no float can hold is a reason, never a crash. Optional
inputs (top_examples.json) that are malformed are dropped entry by entry, never the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open

from saeseeds import contract
from saeseeds.analysis.errors import RunFolderError
from saeseeds.analysis.imported import imported_from
from saeseeds.io import damaged_file, read_config_file, read_json


@dataclass
class SkippedRun:
    """A folder that is not analysed: ``status`` is incomplete, corrupt, rejected, relabelled,
    duplicate, missing (a sweep's job folder that is gone) or failed (a job that never trained).

    ``seed`` and ``condition`` (the run's config without seed and operational keys) are what the
    folder's records say it was meant to be, when they say; they let a group note the seeds it
    lacks.
    """

    path: Path
    status: str
    reason: str
    seed: int | None = None
    condition: dict[str, Any] | None = None


@dataclass
class RunFolder:
    """The parts of one completed run that the analysis needs, validated."""

    path: Path
    seed: int
    cfg: dict[str, Any]
    """cfg.json as written by the trainer."""
    comparable_config: dict[str, Any]
    """The composed config without seed and output paths: equal within a group."""
    decoder_directions: np.ndarray  # [n_features, d_in], unit rows of W_dec
    encoder_directions: np.ndarray  # [n_features, d_in], unit columns of W_enc
    fire_counts: np.ndarray | None  # [n_features] int64, on held-out tokens
    """None for an imported run without held-out statistics (:mod:`.imported`)."""
    n_tokens: int | None
    metrics: dict[str, Any] = field(default_factory=dict)
    wandb_group: str | None = None
    data_identity: dict[str, Any] = field(default_factory=dict)
    """What identifies the data it was trained on (environment.json's provenance): equal within
    a group; ``{}`` when the folder does not record it."""
    _top_examples: dict[int, list[dict[str, Any]]] | None = field(default=None, repr=False)

    @property
    def d_in(self) -> int:
        return int(self.decoder_directions.shape[1])

    @property
    def n_features(self) -> int:
        return int(self.decoder_directions.shape[0])

    @property
    def hook_name(self) -> str:
        return str(self.cfg.get("hook_name"))

    @property
    def firing_frequency(self) -> np.ndarray:  # [n_features]; NaN without held-out statistics
        if self.fire_counts is None or self.n_tokens is None:
            return np.full(self.n_features, np.nan)
        return self.fire_counts.astype(np.float64) / max(self.n_tokens, 1)

    @property
    def live_mask(self) -> np.ndarray:  # [n_features] bool
        return self.fire_counts > 0

    def top_examples(self) -> dict[int, list[dict[str, Any]]]:
        """Feature index -> top-activating contexts; empty when the data had no text."""
        if self._top_examples is None:
            self._top_examples = read_top_examples(self.path)
        return self._top_examples


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    """L2-normalise rows in place (float32); all-zero rows stay zero instead of NaN."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)  # [n, 1]
    np.divide(matrix, norms, out=matrix, where=norms > 0)
    return matrix


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise RunFolderError("corrupt", f"missing {path.name} ({what})")
    try:
        return read_json(path)
    except (OSError, ValueError) as error:
        raise RunFolderError("corrupt", f"{path.name} is unreadable: {error}") from error


def _read_tensors(
    path: Path, names: tuple[str, ...]
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    if not path.is_file():
        raise RunFolderError("corrupt", f"missing {path.name}")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            missing = [name for name in names if name not in handle.keys()]
            if missing:
                raise RunFolderError("corrupt", f"{path.name} lacks tensor(s) {missing}")
            tensors = {name: handle.get_tensor(name) for name in names}
            metadata = handle.metadata() or {}
    except RunFolderError:
        raise
    except (SafetensorError, OSError, ValueError) as error:
        raise RunFolderError(
            "corrupt", f"{path.name} is truncated or not a safetensors file ({error})"
        ) from error
    return tensors, metadata


def _check_shape(array: np.ndarray, shape: tuple[int, ...], name: str) -> None:
    if tuple(array.shape) != shape:
        raise RunFolderError(
            "corrupt", f"{name} has shape {list(array.shape)}, cfg.json implies {list(shape)}"
        )


def check_not_relabelled(run_path: Path, recorded: dict[str, Any]) -> None:
    """Refuse a folder whose .hydra/config.yaml disagrees with its completion record."""
    hydra_config = read_config_file(run_path / contract.HYDRA_CONFIG)
    if hydra_config is None:
        return  # absent or unreadable: the completion record stands alone
    at_completion, now = contract.run_config(recorded), contract.run_config(hydra_config)
    if contract.differing_keys(at_completion, now):
        raise RunFolderError(
            "relabelled",
            f"{contract.HYDRA_CONFIG} no longer matches the config recorded at completion in "
            f"{contract.ENVIRONMENT_FILE} ({contract.describe_differences(at_completion, now)}; "
            "at completion vs now): the folder was re-used by another command or edited. Its "
            f"weights are from the recorded config; restore {contract.HYDRA_CONFIG} or remove "
            "the folder from the sweep.",
        )


def run_identity(run_path: Path) -> tuple[int | None, dict[str, Any] | None]:
    """(seed, condition) from whatever record a folder holds, for folders that cannot be used."""
    environment = run_path / contract.ENVIRONMENT_FILE
    config = None
    try:
        recorded = read_json(environment).get("config")
        config = recorded if isinstance(recorded, dict) else None
    except (OSError, ValueError, AttributeError):
        pass
    if config is None:
        config = read_config_file(run_path / contract.HYDRA_CONFIG)
    if config is None:
        return None, None
    seed = config.get("seed")
    return (
        seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        contract.condition_config(config),
    )


def comparable_config(run_path: Path, environment: Any) -> dict[str, Any]:
    """The run's condition: the config it recorded at completion (environment.json) without the
    seed; for runs written before that record, .hydra/config.yaml, resolved as the trainer
    resolved it (``hook.name: blocks.${.layer}.hook_${.point}`` is ``blocks.6.hook_resid_pre``),
    without the same keys."""
    recorded = environment.get("config") if isinstance(environment, dict) else None
    if isinstance(recorded, dict):
        return contract.condition_config(recorded)
    hydra_config = run_path / contract.HYDRA_CONFIG
    if not hydra_config.is_file():
        raise RunFolderError(
            "corrupt",
            f"neither {contract.ENVIRONMENT_FILE} nor {contract.HYDRA_DIR}/ records its config",
        )
    config = read_config_file(hydra_config)
    if config is None:
        raise RunFolderError(
            "corrupt",
            f"{contract.ENVIRONMENT_FILE} has no config record and {contract.HYDRA_CONFIG} is "
            "not a readable config whose interpolations resolve",
        )
    return contract.condition_config(config)


def load_run(run_path: Path) -> RunFolder:
    """Read and validate one run folder; raises :class:`RunFolderError` with the reason."""
    if not (run_path / contract.COMPLETE_MARKER).is_file():
        raise RunFolderError("incomplete", "no COMPLETE marker (training unfinished or crashed)")
    damaged = damaged_file(run_path, check_hashes=True)
    if damaged is not None:
        raise RunFolderError("corrupt", f"{damaged}; re-run its training command to restore it")
    cfg = _read_json(run_path / contract.CFG_FILE, "the run's SAE config")
    if not isinstance(cfg, dict):
        raise RunFolderError("corrupt", "cfg.json is not a JSON object")
    version = cfg.get("contract_version")
    if version != contract.CONTRACT_VERSION:
        raise RunFolderError(
            "rejected",
            f"contract_version {version!r}; this analysis reads "
            f"version {contract.CONTRACT_VERSION}",
        )
    invalid = [
        f"{name}={cfg[name]!r}" if name in cfg else f"{name} missing"
        for name in ("d_in", "n_features", "seed")
        if type(cfg.get(name)) is not int  # bool, float and str are not sizes or seeds
    ]
    if invalid:
        shown = ", ".join(invalid)
        raise RunFolderError("corrupt", f"cfg.json lacks an integer d_in/n_features/seed ({shown})")
    d_in, n_features, seed = cfg["d_in"], cfg["n_features"], cfg["seed"]

    weights, _ = _read_tensors(run_path / contract.WEIGHTS_FILE, ("W_dec", "W_enc"))
    _check_shape(weights["W_dec"], (n_features, d_in), "W_dec")
    _check_shape(weights["W_enc"], (d_in, n_features), "W_enc")
    for name, tensor in weights.items():
        if not np.isfinite(tensor).all():
            raise RunFolderError("corrupt", f"{name} contains NaN or infinite values")
    if not np.any(weights["W_dec"]):
        raise RunFolderError(
            "corrupt", "W_dec is all zeros: the dictionary has no directions to compare"
        )
    decoder_directions = unit_rows(np.ascontiguousarray(weights.pop("W_dec"), dtype=np.float32))
    encoder_directions = unit_rows(np.ascontiguousarray(weights.pop("W_enc").T, dtype=np.float32))

    fire_counts, n_tokens = None, None  # an import without --activations has no stats file
    if (run_path / contract.FEATURE_STATS_FILE).is_file() or imported_from(cfg) is None:
        stats, metadata = _read_tensors(run_path / contract.FEATURE_STATS_FILE, ("fire_count",))
        fire_counts = stats["fire_count"].astype(np.int64)
        _check_shape(fire_counts, (n_features,), "fire_count")
        try:
            n_tokens = int(metadata["n_tokens"])
        except (KeyError, ValueError) as error:
            raise RunFolderError(
                "corrupt", "feature_stats.safetensors lacks n_tokens metadata"
            ) from error

    metrics_path = run_path / contract.METRICS_FILE
    environment_path = run_path / contract.ENVIRONMENT_FILE
    metrics = _read_json(metrics_path, "final metrics") if metrics_path.is_file() else {}
    environment = _read_json(environment_path, "versions") if environment_path.is_file() else {}
    wandb_info = environment.get("wandb") if isinstance(environment, dict) else None
    recorded = environment.get("config") if isinstance(environment, dict) else None
    if isinstance(recorded, dict):
        check_not_relabelled(run_path, recorded)
    return RunFolder(
        path=run_path,
        seed=seed,
        cfg=cfg,
        comparable_config=comparable_config(run_path, environment),
        data_identity=contract.recorded_data_identity(environment),
        decoder_directions=decoder_directions,
        encoder_directions=encoder_directions,
        fire_counts=fire_counts,
        n_tokens=n_tokens,
        metrics=metrics if isinstance(metrics, dict) else {},
        wandb_group=wandb_info.get("group") if isinstance(wandb_info, dict) else None,
    )


def read_top_examples(run_path: Path) -> dict[int, list[dict[str, Any]]]:
    """top_examples.json as {feature index: contexts}; {} when absent or unreadable.

    Only well-typed entries are kept (a context is a dict with str ``text`` and ``token`` and a
    finite number ``activation``), so a malformed file costs its examples, never the report.
    """
    path = run_path / contract.TOP_EXAMPLES_FILE
    if not path.is_file():
        return {}
    try:
        payload = read_json(path)
    except (OSError, ValueError):
        return {}
    features = payload.get("features") if isinstance(payload, dict) else None
    if not isinstance(features, dict):
        return {}
    examples: dict[int, list[dict[str, Any]]] = {}
    for index, items in features.items():
        try:
            feature = int(index)
        except (TypeError, ValueError):
            continue
        contexts = [_typed_context(item) for item in items] if isinstance(items, list) else []
        kept = [context for context in contexts if context is not None]
        if kept:
            examples[feature] = kept
    return examples


def _typed_context(item: Any) -> dict[str, Any] | None:
    if not isinstance(item, dict):
        return None
    text, token, activation = item.get("text"), item.get("token"), item.get("activation")
    if not isinstance(text, str) or not isinstance(token, str):
        return None
    if isinstance(activation, bool) or not isinstance(activation, int | float):
        return None
    if not np.isfinite(activation):
        return None
    return {**item, "text": text, "token": token, "activation": float(activation)}
