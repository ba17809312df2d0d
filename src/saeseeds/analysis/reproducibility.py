"""Reproducibility notes: what, besides the config and the seed, decided the exact bytes of each
run, read from its environment.json, and what a group's report says about it.

Two runs of one config and seed are expected to have byte-identical weights only when they ran
on the same kind of device (and CPU capability or GPU), in the same step precision, with the same
language-model dtype, the same number of torch CPU threads (reductions split by thread) and the
same torch build. A group whose seeds ran under different device kinds or precisions says so,
because their differences are then not only the seed's. Folders written before environment.json
gathered these (``reproducibility``) are read from the fields they had. This module reads files
and words notes; it decides nothing about grouping.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saeseeds import contract
from saeseeds.io import file_sha256, read_json

CONDITIONS = (
    "device",
    "cpu_capability",
    "cuda_device",
    "precision",
    "model_dtype",
    "torch_threads",
    "torch",
)
"""What must agree for two runs of one config and seed to give byte-identical weights."""
SCIENCE_CONDITIONS = ("device", "precision")
"""Conditions whose difference between the seeds of a group is worth a note: they change the
arithmetic, not only the order of its last bits (the model dtype changes the data, so runs that
differ in it are other groups already)."""


def recorded_conditions(run_path: Path) -> dict[str, Any]:
    """The run's conditions (:data:`CONDITIONS`; None where its environment.json does not say)."""
    try:
        environment = read_json(run_path / contract.ENVIRONMENT_FILE)
    except (OSError, ValueError):
        environment = None
    if not isinstance(environment, dict):
        return dict.fromkeys(CONDITIONS)
    recorded = environment.get("reproducibility")
    if isinstance(recorded, dict):
        return {name: recorded.get(name) for name in CONDITIONS}
    platform = environment.get("platform") if isinstance(environment.get("platform"), dict) else {}
    versions = environment.get("versions") if isinstance(environment.get("versions"), dict) else {}
    provenance = environment.get("data_provenance")
    device = environment.get("device")
    return {
        "device": str(device).split(":")[0] if device else None,
        "cpu_capability": None,
        "cuda_device": platform.get("cuda_device"),
        "precision": environment.get("precision"),
        "model_dtype": provenance.get("model_dtype") if isinstance(provenance, dict) else None,
        "torch_threads": platform.get("torch_threads"),
        "torch": versions.get("torch"),
    }


def differences(first: dict[str, Any], other: dict[str, Any]) -> list[str]:
    """``torch_threads 1 vs 2``: the conditions both runs record and that differ."""
    return [
        f"{name} {first[name]} vs {other[name]}"
        for name in CONDITIONS
        if first.get(name) is not None
        and other.get(name) is not None
        and first[name] != other[name]
    ]


def duplicate_note(run_path: Path, kept_path: Path, seed: int) -> str:
    """Why a second run of one config and seed is ignored, and whether its weights are what the
    conditions it ran under lead one to expect."""
    start = f"same config and seed {seed} as {kept_path}; ignored."
    weights = contract.WEIGHTS_FILE
    try:
        identical = file_sha256(run_path / weights) == file_sha256(kept_path / weights)
    except OSError:
        return start
    if identical:
        return f"{start} Its weights are byte-identical to that run's."
    different = differences(recorded_conditions(run_path), recorded_conditions(kept_path))
    if different:
        return (
            f"{start} Its weights differ from that run's, as expected: they ran with "
            f"{', '.join(different)} (this run vs that one), and byte-identical weights need the "
            "same device, precision, model dtype, torch threads and torch build."
        )
    return (
        f"{start} Its weights differ from that run's although the device, precision, model "
        "dtype, torch threads and torch build they record agree: that is not expected; please "
        "report it with both folders' environment.json."
    )


def mixed_conditions_notes(runs: list[tuple[int, Path]]) -> list[str]:
    """One note per :data:`SCIENCE_CONDITIONS` value that differs between the seeds
    (``(seed, folder)``) of a group."""
    conditions = [(seed, recorded_conditions(path)) for seed, path in runs]
    notes = []
    for name in SCIENCE_CONDITIONS:
        seeds_by_value: dict[str, list[int]] = {}
        for seed, recorded in conditions:
            if recorded.get(name) is not None:
                seeds_by_value.setdefault(str(recorded[name]), []).append(seed)
        if len(seeds_by_value) > 1:
            described = "; ".join(
                f"{value} (seeds {', '.join(map(str, seeds))})"
                for value, seeds in seeds_by_value.items()
            )
            notes.append(
                f"its seeds ran with different {name}: {described}, so their differences are "
                f"not only the seed's (set trainer.precision and trainer.accelerator to one "
                "value to train every seed alike)."
            )
    return notes
