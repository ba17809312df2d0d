"""The feature table of a group, as the report page (report.html) and the W&B analysis run show it.

One row per feature of the group's first seed (the reference): its best match in every other
seed (latent and decoder cosine), reappearance and stable / unstable, firing frequency, whether
it is reproduced beyond geometry, whether it has a near-duplicate in its own dictionary, and the
top-activating contexts of each of its versions. Every value is read from the
:class:`GroupReport` the analysis computed; this module computes no metric.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from saeseeds.analysis.examples import marked_text, split_context
from saeseeds.analysis.group_analysis import GroupReport
from saeseeds.analysis.loading import RunFolder
from saeseeds.analysis.pair_metrics import HUNGARIAN
from saeseeds.analysis.reappearance import FeatureVersions

STABLE, UNSTABLE, PARTIAL = "stable", "unstable", "partial"


@dataclass
class FeatureTable:
    """One group's per-feature results, reference seed first; arrays are over its features."""

    report: GroupReport

    @property
    def label(self) -> str:
        return self.report.label

    @property
    def runs(self) -> list[RunFolder]:
        return self.report.group.runs

    @property
    def seeds(self) -> list[int]:
        return self.versions.seeds

    @property
    def reference_seed(self) -> int:
        return self.versions.reference_seed

    @property
    def versions(self) -> FeatureVersions:
        if self.report.versions is None:
            raise ValueError(f"group {self.label} has no feature versions")
        return self.report.versions

    @property
    def n_features(self) -> int:
        return int(self.versions.latents.shape[1])

    @property
    def other_seeds(self) -> list[int]:
        return self.seeds[1:]

    def version_cosine(self, seed: int) -> np.ndarray:  # [n_features]
        """Decoder cosine between each reference feature and its best match in ``seed``."""
        return self.versions.cosines[:, 0, self.seeds.index(seed)]

    @property
    def best_match(self) -> np.ndarray:  # [n_features]
        """Best-match cosine averaged over the other seeds (the beyond-geometry statistic)."""
        return self.report.best_match[self.reference_seed]

    @property
    def firing_frequency(self) -> np.ndarray:  # [n_features]
        return self.runs[0].firing_frequency

    @property
    def reappearance(self) -> np.ndarray | None:  # [n_features]
        return self.report.reappearance.get(self.reference_seed)

    @property
    def epsilon(self) -> float | None:
        return self.report.extras.get("reappearance", {}).get("epsilon")

    def stability(self) -> list[str | None]:
        """stable (p ≥ 1 − ε), unstable (p ≤ ε) or partial per feature; None without
        reappearance."""
        p, epsilon = self.reappearance, self.epsilon
        if p is None or epsilon is None:
            return [None] * self.n_features
        labels = np.full(self.n_features, PARTIAL, dtype=object)
        labels[p >= 1.0 - epsilon] = STABLE
        labels[p <= epsilon] = UNSTABLE
        return labels.tolist()

    @property
    def beyond_geometry(self) -> np.ndarray | None:  # [n_features] bool
        """None when the group has no geometry control to judge it against."""
        return self.report.beyond_geometry.get(self.reference_seed)

    @property
    def beyond_geometry_threshold(self) -> float | None:
        return self.report.extras.get("beyond_geometry_threshold")

    @property
    def nearest_neighbour(self) -> np.ndarray | None:  # [n_features], NaN for dead features
        return self.report.nearest_neighbour.get(self.reference_seed)

    @property
    def duplicate_threshold(self) -> float | None:
        return (self.report.extras.get("redundancy") or {}).get("threshold")

    def near_duplicate(self) -> np.ndarray | None:  # [n_features] bool
        nearest, threshold = self.nearest_neighbour, self.duplicate_threshold
        if nearest is None or threshold is None:
            return None
        return np.nan_to_num(nearest, nan=-np.inf) >= threshold

    def one_to_one(self, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Hungarian partner (-1 if none) and its cosine per reference feature; None with argmax."""
        if self.report.matching != HUNGARIAN:
            return None
        return self.report.pairs.matched(self.reference_seed, seed)

    def contexts(self, seed: int, latent: int, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` top-activating contexts of ``latent`` in ``seed``, strongest first."""
        run = self.runs[self.seeds.index(seed)]
        return run.top_examples().get(int(latent), [])[:limit]

    @property
    def has_contexts(self) -> bool:
        return any(run.top_examples() for run in self.runs)


def feature_tables(reports: list[GroupReport]) -> list[FeatureTable]:
    """The table of every group that has feature versions (every analysed group)."""
    return [FeatureTable(report) for report in reports if report.versions is not None]


def context_parts(context: dict[str, Any]) -> list[Any]:
    """[text before, firing token, text after, activation]: the page's form of one context."""
    before, token, after = split_context(context)
    return [before, token, after, round(float(context["activation"]), 4)]


def context_lines(contexts: list[dict[str, Any]]) -> str:
    """Contexts as plain text, one a line, the firing token marked: the W&B form."""
    return "\n".join(
        f"{marked_text(context)} ({float(context['activation']):.3g})" for context in contexts
    )


def _optional(values: np.ndarray | None, feature: int, digits: int) -> float | None:
    if values is None or not np.isfinite(values[feature]):
        return None
    return round(float(values[feature]), digits)


def wandb_columns(table: FeatureTable) -> list[str]:
    columns = ["feature", "firing_frequency", "reappearance", "stability", "best_match_mean"]
    columns += ["beyond_geometry", "nearest_neighbour_cosine", "near_duplicate"]
    for seed in table.other_seeds:
        columns += [f"seed{seed}_feature", f"seed{seed}_cosine"]
    return columns + [f"seed{seed}_contexts" for seed in table.seeds]


def wandb_rows(table: FeatureTable, per_feature: int) -> list[list[Any]]:
    """One row per reference feature, in the order of :func:`wandb_columns`."""
    stability, duplicate = table.stability(), table.near_duplicate()
    beyond, latents = table.beyond_geometry, table.versions.latents
    cosines = {seed: table.version_cosine(seed) for seed in table.other_seeds}
    rows = []
    for feature in range(table.n_features):
        row: list[Any] = [
            feature,
            float(table.firing_frequency[feature]),
            _optional(table.reappearance, feature, 5),
            stability[feature],
            round(float(table.best_match[feature]), 5),
            None if beyond is None else bool(beyond[feature]),
            _optional(table.nearest_neighbour, feature, 5),
            None if duplicate is None else bool(duplicate[feature]),
        ]
        for index, seed in enumerate(table.other_seeds, start=1):
            row += [int(latents[index, feature]), round(float(cosines[seed][feature]), 5)]
        row += [
            context_lines(table.contexts(seed, latents[index, feature], per_feature))
            for index, seed in enumerate(table.seeds)
        ]
        rows.append(row)
    return rows
