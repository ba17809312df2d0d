"""A condition judged against its controls: which group is whose control, the difference of
group values with a jackknife-t interval and p-value, the features reproduced beyond geometry, and
the unstable-feature subspace overlap beside each trained control's.

Controls of a condition group (the same config and seeds, one setting changed):
- ``gaussian``: ``data.control=gaussian``, SAEs trained on Gaussian samples with the activations'
  mean and covariance: the same geometry and no features. The main null.
- ``random_model``: ``model=random`` (``model.init=random``), SAEs on a randomly initialised
  model of the same architecture, Gerasimov et al.'s "dead salmon" control.
- ``isotropic``: random unit-norm dictionaries (:mod:`.baselines`), the weakest null.

Difference = condition − control on the headline statistic: the group median (median of pair
medians of the decoder matched cosines), or MMCS with argmax matching. Its uncertainty comes from
the seeds: each group's standard error is the delete-one-seed jackknife, the two combine as
√(SE_a² + SE_b²), and the 95% interval and two-sided p-value use Student's t with
min(S_a, S_b) − 1 degrees of freedom (:func:`group_stats.difference_of_groups`). A percentile
bootstrap of 3–5 seeds has only a handful of distinct resamples and gives intervals that are too
narrow (on featureless data it "found" differences that were not there); the jackknife-t interval
is wide when seeds are few, as it should be. Seeds of one group share one draw of the data, so no
seed-based interval covers data-sampling variation. For the isotropic null the interval uses the
condition's standard error alone, and the p-value is the Monte Carlo p-value of
:class:`.baselines.Baseline`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from saeseeds.analysis.group_stats import (
    difference_of_groups,
    jackknife_se,
    outcome,
    pair_matrix,
    t_interval,
)
from saeseeds.analysis.imported import import_sentence
from saeseeds.analysis.subspaces import compare_with_control
from saeseeds.contract import flatten

STATISTIC = "decoder_median"  # the headline statistic with Hungarian matching
CONTROL_NAMES = ("gaussian", "random_model", "isotropic")
_MODEL_INIT_KEYS = {"model.init", "model.seed", "data.model.init", "data.model.seed"}
BEYOND_GEOMETRY_QUANTILE = 0.95


def control_kind(condition: dict[str, Any], other: dict[str, Any]) -> str | None:
    """Which control ``other`` is of ``condition`` (flattened configs), or None."""
    keys = set(condition) | set(other)
    differing = {key for key in keys if condition.get(key) != other.get(key)}
    if not differing:
        return None
    if differing == {"data.control"}:
        if condition.get("data.control", "none") == "none" and other["data.control"] == "gaussian":
            return "gaussian"
        return None
    if differing <= _MODEL_INIT_KEYS:
        if other.get("model.init") == "random" and condition.get("model.init") != "random":
            return "random_model"
    return None


def find_controls(configs: dict[str, dict[str, Any]]) -> dict[str, dict[str, str]]:
    """{condition label: {control name: control group label}} from each group's config."""
    flat = {label: _with_control_default(flatten(config)) for label, config in configs.items()}
    controls: dict[str, dict[str, str]] = {}
    for label, config in flat.items():
        for other_label, other in flat.items():
            kind = control_kind(config, other) if other_label != label else None
            if kind is not None:
                controls.setdefault(label, {})[kind] = other_label
    return controls


def _with_control_default(flat: dict[str, Any]) -> dict[str, Any]:
    # Runs written before data.control existed are real data.
    return {"data.control": "none", **flat} if any(k.startswith("data.") for k in flat) else flat


def compare(condition: Any, control: Any, confidence: float) -> dict[str, Any] | None:
    """Condition minus trained control on the headline statistic (the group median; MMCS with
    argmax matching), with interval and p-value; None when the control lacks that statistic."""
    statistic = condition.headline_statistic
    if statistic not in control.statistics:
        return None
    difference = difference_of_groups(
        pair_matrix(condition.pairs, statistic),
        pair_matrix(control.pairs, statistic),
        statistic,
        confidence,
    )
    value = control.statistics[statistic]["value"]
    return {
        "label": control.label,
        "statistic": statistic,
        "value": value,
        **({"median": value} if statistic == STATISTIC else {}),
        "difference": condition.statistics[statistic]["value"] - value,
        "difference_ci": difference["difference_ci"],
        "p_value": difference["p_value"],
        "standard_error": difference["standard_error"],
        "side_by_side": side_by_side(control),
    }


def compare_isotropic(condition: Any, confidence: float) -> dict[str, Any] | None:
    """Condition minus the isotropic null (random dictionaries with the group's seed count)."""
    baseline = condition.extras.get("baseline")
    if not baseline:
        return None
    statistic = condition.headline_statistic
    null_value = float(baseline["chance"][statistic])  # mean of the null group values
    difference = condition.statistics[statistic]["value"] - null_value
    standard_error = jackknife_se(pair_matrix(condition.pairs, statistic), statistic)
    interval, _ = t_interval(difference, standard_error, len(condition.pairs.seeds) - 1, confidence)
    return {
        "label": "random unit-norm dictionaries",
        "statistic": statistic,
        "value": null_value,
        **({"median": null_value} if statistic == STATISTIC else {}),
        "difference": difference,
        "difference_ci": interval,
        "p_value": baseline["p_value"],
        "standard_error": standard_error,
        "side_by_side": {
            name: baseline["chance"].get(name)
            for name in _SIDE_BY_SIDE
            if name in baseline["chance"]
        },
    }


_SIDE_BY_SIDE = ("decoder_median", "live_decoder_median", "decoder_stability@0.7",
                 "decoder_stability@0.9", "shared", "mmcs")  # fmt: skip


def side_by_side(report: Any) -> dict[str, float | None]:
    """The statistics a reader compares across a condition and its controls."""
    values: dict[str, float | None] = {
        name: report.statistics[name]["value"]
        for name in _SIDE_BY_SIDE
        if name in report.statistics
    }
    reappearance = report.extras.get("reappearance")
    if reappearance:
        values["stable_share"] = reappearance["stable_share"]
    return values


def beyond_geometry(condition: Any, control: Any) -> tuple[float, float, dict[int, np.ndarray]]:
    """Share of the condition's features whose best-match cosine to the other seeds exceeds the
    95th percentile of the gaussian control's; returns (share, threshold, {seed: mask})."""
    reference = np.concatenate(list(control.best_match.values()))
    threshold = float(np.quantile(reference, BEYOND_GEOMETRY_QUANTILE))
    masks = {seed: values > threshold for seed, values in condition.best_match.items()}
    share = float(np.mean(np.concatenate(list(masks.values()))))
    return share, threshold, masks


def attach_controls(reports: list[Any], confidence: float, subspace_rank: int = 32) -> None:
    """Fill ``extras["controls"]`` (the beyond-geometry share, and the unstable-subspace overlap
    beside each trained control's) of every condition group."""
    by_label = {report.label: report for report in reports}
    pairs = find_controls({report.label: report.group.config for report in reports})
    controlled = {label for kinds in pairs.values() for label in kinds.values()}
    for report in reports:
        report.extras["role"] = "control" if report.label in controlled else "condition"
        controls: dict[str, Any] = {}
        isotropic = compare_isotropic(report, confidence)
        if isotropic is not None:
            controls["isotropic"] = isotropic
        for kind, label in pairs.get(report.label, {}).items():
            control = by_label[label]
            entry = compare(report, control, confidence)
            if entry is None:
                continue
            if report.subspace_bases and control.subspace_bases:
                entry["subspace_overlap"] = compare_with_control(
                    report.subspace_bases, control.subspace_bases, subspace_rank, confidence
                )
            controls[kind] = entry
            if kind == "gaussian":
                share, threshold, masks = beyond_geometry(report, control)
                report.extras["beyond_geometry_fraction"] = share
                report.extras["beyond_geometry_threshold"] = threshold
                report.beyond_geometry = masks
        report.extras["controls"] = controls


# What report sentences call each control: the names the rest of the report and the docs use.
CONTROL_TITLES = {
    "gaussian": "geometry control",
    "random_model": "random-model control",
    "isotropic": "isotropic null",
}


def control_title(name: str) -> str:
    """What report.md calls a control of :data:`CONTROL_NAMES`."""
    return CONTROL_TITLES.get(name, f"{name.replace('_', '-')} control")


def subspace_sentence(report: Any) -> str:
    """Whether the unstable features' subspace overlap beats each trained control's."""
    parts = []
    for name in CONTROL_NAMES:
        entry = report.extras.get("controls", {}).get(name, {}).get("subspace_overlap")
        if entry is None:
            continue
        if entry["outcome"] is None:
            parts.append(f"cannot be compared with the {control_title(name)}'s ({entry['reason']})")
            continue
        low, high = entry["difference_ci"]
        verb = {"beats": "beats", "is below": "is below"}.get(
            entry["outcome"], "does not beat (not distinguishable from)"
        )
        parts.append(
            f"{verb} the {control_title(name)}'s ({entry['condition']:.3f} vs "
            f"{entry['control']:.3f} at rank {entry['rank']}; difference "
            f"{entry['difference']:+.3f} [{low:+.3f}, {high:+.3f}]; random subspaces "
            f"{entry['random_expectation']:.3f})"
        )
    if not parts:
        return ""
    return "The overlap of its unstable features' subspaces " + "; it ".join(parts) + "."


def verdict(report: Any) -> str:
    """One plain sentence: which controls the condition beats, by how much."""
    statistic = report.headline_statistic
    entry = report.statistics[statistic]
    parts = []
    for name in CONTROL_NAMES:
        control = report.extras.get("controls", {}).get(name)
        if control is None:
            continue
        low, high = control["difference_ci"]
        parts.append(
            f"{outcome(control['difference_ci'])} the {control_title(name)} "
            f"({control['value']:.3f}; difference {control['difference']:+.3f} "
            f"[{low:+.3f}, {high:+.3f}], p = {control['p_value']:.3g})"
        )
    if statistic == STATISTIC:
        sentence = f"**{report.label}**: median matched cosine {entry['value']:.3f}"
    else:
        sentence = (
            f"**{report.label}** (argmax matching, no one-to-one assignment): "
            f"MMCS (mean max cosine) {entry['value']:.3f}"
        )
    imported = import_sentence(report.group.runs, isotropic=bool(parts))
    if imported and not parts:
        return sentence + "." + imported + redundancy_warning(report)
    if not parts:
        sentence += ", with no control to judge it against (train one: data.control=gaussian)."
        return sentence + redundancy_warning(report)
    sentence += " " + "; it ".join(parts) + "." + imported
    if not imported:  # an import's own sentence says what it can be judged against
        sentence += untrained_controls_warning(report)
    if "beyond_geometry_fraction" in report.extras:
        sentence += (
            f" {report.extras['beyond_geometry_fraction']:.1%} of its features are reproduced "
            "beyond geometry (best-match cosine above the geometry control's 95th percentile)."
        )
    subspaces = subspace_sentence(report)
    if subspaces:
        sentence += " " + subspaces
    lead = report.extras.get("trajectory", {}).get("lead_change")
    if lead:
        sentence += " " + lead["sentence"]
    convergence = report.extras.get("convergence", {})
    if convergence.get("fvu_still_improving"):
        sentence += " Its SAEs were still improving when training stopped (see Convergence)."
    if convergence.get("stability", {}).get("still_rising"):
        sentence += " Its stability was still rising over the last quarter (see Convergence)."
    return sentence + redundancy_warning(report)


TRAINED_CONTROLS = ("gaussian", "random_model")


def untrained_controls_warning(report: Any) -> str:
    """When a condition is judged against random dictionaries only: say that this is no result
    yet, and give the command that adds its geometry control to the same sweep folder."""
    controls = report.extras.get("controls", {})
    if any(name in controls for name in TRAINED_CONTROLS) or not report.group.runs:
        return ""
    folder = report.group.runs[0].path.parent
    return (
        " **No trained control yet**: anisotropic activations let any dictionary beat random "
        "ones, so this is not evidence of reproducible features. Add its geometry control to "
        "the same folder by running the same training command again with "
        f"`data.control=gaussian hydra.sweep.dir={folder}` added (the existing jobs are "
        "untouched), then run analyze.py again."
    )


DUPLICATE_WARNING_SHARE = 0.1
"""Warn in the verdict when at least this share of live features has a near-duplicate."""


def redundancy_warning(report: Any) -> str:
    """A sentence when many features of each dictionary are copies of one another (they match
    each other's copies in every seed and inflate the matched cosines); else empty."""
    entry = report.extras.get("redundancy") or {}
    share = entry.get("near_duplicate_share")
    if share is None or share < DUPLICATE_WARNING_SHARE:
        return ""
    return (
        f" **{share:.0%} of its live features have a near-duplicate in their own dictionary** "
        f"(decoder cosine ≥ {entry['threshold']:g}); copies of one direction match each other "
        "across seeds, so its matched cosines overstate how many distinct features reproduce."
    )
