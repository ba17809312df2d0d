"""Grouping runs into conditions: runs whose configs are equal apart from seed and output paths,
and that were trained on the same data.

The data is part of a run's identity: two runs of one config whose recorded data identity
(:func:`saeseeds.contract.data_identity`: the activation file's hash, the cache key, the model's
weight hash, ...) differs, e.g. because the activation file was overwritten between them, are two
groups, each noting the other with the facts that differ; never seeds of one condition.

A group is analysable when it has at least two distinct seeds and its runs agree on every field
of cfg.json but the seed (architecture, sizes, k, model, hook, normalisation, ...). Groups that
are not analysable are kept with the reason, so the report can list them. Folders that could not
be used but whose records say which condition they belong to (a killed, corrupt, relabelled or
deleted seed) become a group's ``notes``: the group is analysed with fewer seeds, and says so.
Seeds trained under different precisions or devices, and a second run of one seed, get the notes
of :mod:`saeseeds.analysis.reproducibility`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from saeseeds.analysis.loading import RunFolder, SkippedRun
from saeseeds.analysis.reproducibility import duplicate_note, mixed_conditions_notes
from saeseeds.contract import describe_identity_differences, differing_keys, flatten

# cfg.json fields that may differ inside a group; every other one must agree.
PER_RUN_FIELDS = ("seed",)


@dataclass
class Group:
    """One condition: runs sorted by seed, a readable label and, if not analysable, why."""

    label: str
    runs: list[RunFolder]
    config: dict[str, Any]
    problem: str | None = None
    duplicates: list[SkippedRun] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """One line per seed of this condition that is not analysed, with the reason."""
    missing: list[SkippedRun] = field(default_factory=list)
    """The skipped folders behind ``notes``."""
    data_identity: dict[str, Any] = field(default_factory=dict)
    """What identifies the data every run of the group was trained on."""

    @property
    def seeds(self) -> list[int]:
        return [run.seed for run in self.runs]

    @property
    def analysable(self) -> bool:
        return self.problem is None


def _labels(configs: list[dict[str, Any]], runs: list[list[RunFolder]]) -> list[str]:
    """Name each group by the config keys that differ between groups."""
    flats = [flatten(config) for config in configs]
    all_keys = sorted(set().union(*flats))
    varying = [key for key in all_keys if len({repr(flat.get(key)) for flat in flats}) > 1]
    # data.model.* and data.hook.* are interpolated copies of model.* and hook.*.
    shown = [key for key in varying if not key.startswith(("data.model.", "data.hook."))]
    labels = []
    for flat, group_runs in zip(flats, runs, strict=True):
        if varying:
            labels.append(",".join(f"{key}={flat.get(key)}" for key in (shown or varying)))
        else:
            cfg = group_runs[0].cfg
            labels.append(f"n_features={cfg.get('n_features')},k={cfg.get('k')}")
    return labels


def _same(first: Any, other: Any) -> bool:
    """Equal, with floats equal to 1e-9 relative: derived values such as the input scale differ
    in the last bits between thread counts, which does not make the runs another condition."""
    if isinstance(first, dict) and isinstance(other, dict):
        return first.keys() == other.keys() and all(_same(first[k], other[k]) for k in first)
    if isinstance(first, float) and isinstance(other, float):
        return math.isclose(first, other, rel_tol=1e-9, abs_tol=0.0)
    return json.dumps(first, sort_keys=True) == json.dumps(other, sort_keys=True)


def _consistency_problem(runs: list[RunFolder]) -> str | None:
    names = sorted({name for run in runs for name in run.cfg} - set(PER_RUN_FIELDS))
    for name in names:
        reference = runs[0].cfg.get(name)
        if not all(_same(reference, run.cfg.get(name)) for run in runs[1:]):
            detail = ", ".join(f"{run.path.name}: {run.cfg.get(name)}" for run in runs)
            return (
                f"runs share a config but differ in {name} ({detail}); their dictionaries "
                "cannot be compared. Re-train them with the same data and hook."
            )
    return None


def _config_key(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, default=str)


def _distinguish_by_data(groups: list[Group]) -> None:
    """Groups of one config trained on different data: their labels gain the first fact of the
    data that differs (``file_sha256=3f2a1b4c5d6e``), and each notes the others."""
    by_config: dict[str, list[Group]] = {}
    for group in groups:
        by_config.setdefault(_config_key(group.config), []).append(group)
    for same_config in by_config.values():
        if len(same_config) < 2:
            continue
        for group in same_config:
            others = [other for other in same_config if other is not group]
            keys = differing_keys(group.data_identity, others[0].data_identity)
            value = flatten(group.data_identity).get(keys[0], "unrecorded") if keys else "?"
            shown = f"{value[:12]}" if isinstance(value, str) and len(value) > 16 else value
            group.label = f"{group.label},{keys[0] if keys else 'data'}={shown}"
        for group in same_config:
            for other in same_config:
                if other is group:
                    continue
                folders = ", ".join(run.path.name for run in other.runs)
                line = (
                    f"the same config was also trained on other data: group {other.label} "
                    f"(seeds {other.seeds}: {folders}) differs in "
                    f"{describe_identity_differences(group.data_identity, other.data_identity)} "
                    "(this group vs that one), so its runs are not seeds of this condition."
                )
                group.notes.append(line)
                if group.problem is not None:
                    group.problem = f"{group.problem} Note: {line}"


def attach_missing_seeds(groups: list[Group], skipped: list[SkippedRun]) -> None:
    """Note in each group the seeds of its condition that were skipped, with the reason."""
    by_key: dict[str, Group] = {}
    for group in groups:  # of several groups of one config (other data), the first
        by_key.setdefault(_config_key(group.config), group)
    for entry in skipped:
        if entry.condition is None:
            continue
        group = by_key.get(_config_key(entry.condition))
        if group is None or (entry.seed is not None and entry.seed in group.seeds):
            continue
        seed = f"seed {entry.seed}" if entry.seed is not None else "a run"
        group.missing.append(entry)
        group.notes.append(
            f"{seed} not analysed ({entry.path.name}): {entry.status}: {entry.reason}"
        )


def group_runs(runs: list[RunFolder], skipped: list[SkippedRun] | None = None) -> list[Group]:
    """Groups in order of first appearance, runs sorted by seed, problems recorded; with
    ``skipped``, each group notes the seeds of its condition that could not be used."""
    by_key: dict[str, list[RunFolder]] = {}
    configs: dict[str, dict[str, Any]] = {}
    for run in runs:
        key = _config_key({"config": run.comparable_config, "data": run.data_identity})
        by_key.setdefault(key, []).append(run)
        configs.setdefault(key, run.comparable_config)
    keys = list(by_key)
    labels = _labels([configs[key] for key in keys], [by_key[key] for key in keys])
    groups = []
    for key, label in zip(keys, labels, strict=True):
        unique: dict[int, RunFolder] = {}
        duplicates = []
        for run in sorted(by_key[key], key=lambda run: (run.seed, str(run.path))):
            if run.seed in unique:
                reason = duplicate_note(run.path, unique[run.seed].path, run.seed)
                duplicates.append(SkippedRun(run.path, "duplicate", reason))
            else:
                unique[run.seed] = run
        group = Group(label, list(unique.values()), configs[key], duplicates=duplicates)
        group.data_identity = by_key[key][0].data_identity
        group.notes.extend(mixed_conditions_notes([(run.seed, run.path) for run in group.runs]))
        group.problem = _consistency_problem(group.runs)
        if group.problem is None and len(group.runs) < 2:
            group.problem = (
                f"only one seed ({group.seeds[0]}); stability needs >= 2 seeds of the same "
                "config. Train more seeds, e.g. python train.py -m seed=1,2,3 ..."
            )
        groups.append(group)
    _distinguish_by_data(groups)
    attach_missing_seeds(groups, list(skipped or []))
    return groups
