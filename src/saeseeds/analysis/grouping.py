"""Grouping runs into conditions: runs whose configs are equal apart from seed and output paths.

A group is analysable when it has at least two distinct seeds and its runs agree on every field
of cfg.json but the seed (architecture, sizes, k, model, hook, normalisation, ...). Groups that
are not analysable are kept with the reason, so the report can list them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from saeseeds.analysis.loading import RunFolder, SkippedRun

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

    @property
    def seeds(self) -> list[int]:
        return [run.seed for run in self.runs]

    @property
    def analysable(self) -> bool:
        return self.problem is None


def _flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(config, dict):
        return {prefix: config}
    flat: dict[str, Any] = {}
    for key, value in config.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _labels(configs: list[dict[str, Any]], runs: list[list[RunFolder]]) -> list[str]:
    """Name each group by the config keys that differ between groups."""
    flats = [_flatten(config) for config in configs]
    all_keys = sorted(set().union(*flats))
    varying = [key for key in all_keys if len({repr(flat.get(key)) for flat in flats}) > 1]
    labels = []
    for flat, group_runs in zip(flats, runs, strict=True):
        if varying:
            labels.append(",".join(f"{key}={flat.get(key)}" for key in varying[:4]))
        else:
            cfg = group_runs[0].cfg
            labels.append(f"n_features={cfg.get('n_features')},k={cfg.get('k')}")
    return labels


def _consistency_problem(runs: list[RunFolder]) -> str | None:
    names = sorted({name for run in runs for name in run.cfg} - set(PER_RUN_FIELDS))
    for name in names:
        values = {json.dumps(run.cfg.get(name), sort_keys=True) for run in runs}
        if len(values) > 1:
            detail = ", ".join(f"{run.path.name}: {run.cfg.get(name)}" for run in runs)
            return (
                f"runs share a config but differ in {name} ({detail}); their dictionaries "
                "cannot be compared. Re-train them with the same data and hook."
            )
    return None


def group_runs(runs: list[RunFolder]) -> list[Group]:
    """Groups in order of first appearance, runs sorted by seed, problems recorded."""
    by_key: dict[str, list[RunFolder]] = {}
    configs: dict[str, dict[str, Any]] = {}
    for run in runs:
        key = json.dumps(run.comparable_config, sort_keys=True, default=str)
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
                reason = f"same config and seed {run.seed} as {unique[run.seed].path}; ignored"
                duplicates.append(SkippedRun(run.path, "duplicate", reason))
            else:
                unique[run.seed] = run
        group = Group(label, list(unique.values()), configs[key], duplicates=duplicates)
        group.problem = _consistency_problem(group.runs)
        if group.problem is None and len(group.runs) < 2:
            group.problem = (
                f"only one seed ({group.seeds[0]}); stability needs >= 2 seeds of the same "
                "config. Train more seeds, e.g. python train.py -m seed=1,2,3 ..."
            )
        groups.append(group)
    return groups
