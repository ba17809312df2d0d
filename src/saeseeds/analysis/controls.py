"""A condition judged against its controls: which group is whose control, the difference of
group medians with a seed-bootstrap interval and p-value, and the features reproduced beyond
geometry.

Controls of a condition group (the same config and seeds, one setting changed):
- ``gaussian``: ``data.control=gaussian``, SAEs trained on Gaussian samples with the activations'
  mean and covariance: the same geometry and no features. The main null.
- ``random_model``: ``model=random`` (``model.init=random``), SAEs on a randomly initialised
  model of the same architecture, Gerasimov et al.'s "dead salmon" control.
- ``isotropic``: random unit-norm dictionaries (:mod:`.baselines`), the weakest null.

Difference = condition group median − control group median (median of pair medians of the
decoder matched cosines). Its uncertainty comes from the seeds: each group's standard error is the
delete-one-seed jackknife, SE² = (S−1)/S · Σ_i (θ_(−i) − θ̄)², the two combine as
√(SE_a² + SE_b²), and the 95% interval and two-sided p-value use Student's t with min(S_a, S_b) − 1
degrees of freedom. A percentile bootstrap of 3–5 seeds has only a handful of distinct resamples
and gives intervals that are too narrow (on featureless data it "found" differences that were not
there); the jackknife-t interval is wide when seeds are few, as it should be. Seeds of one group
share one draw of the data, so no seed-based interval covers data-sampling variation. For the
isotropic null the interval uses the condition's standard error alone, and the p-value is the
Monte Carlo p-value of :class:`.baselines.Baseline`.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np
from scipy import stats

from saeseeds.analysis.group_stats import aggregate, pair_matrix
from saeseeds.contract import flatten

STATISTIC = "decoder_median"
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


def jackknife_se(group_pairs: Any) -> float:
    """Delete-one-seed jackknife standard error of the group median; NaN below 3 seeds."""
    matrix = pair_matrix(group_pairs, STATISTIC)  # [S, S]
    n_seeds = matrix.shape[0]
    if n_seeds < 3:
        return float("nan")
    leave_one_out = []
    for left_out in range(n_seeds):
        kept = [seed for seed in range(n_seeds) if seed != left_out]
        pairs = np.array([matrix[a, b] for a, b in combinations(kept, 2)])
        leave_one_out.append(aggregate(pairs, STATISTIC))
    values = np.array(leave_one_out)
    return float(np.sqrt((n_seeds - 1) / n_seeds * np.sum((values - values.mean()) ** 2)))


def t_interval(
    difference: float, standard_error: float, dof: int, confidence: float
) -> tuple[list[float], float]:
    """(interval, two-sided p-value) of a difference with Student's t on ``dof`` degrees."""
    if not (dof >= 1 and standard_error > 0):
        return [float("nan"), float("nan")], float("nan")
    half_width = stats.t.ppf(0.5 + confidence / 2, dof) * standard_error
    p_value = 2 * stats.t.sf(abs(difference) / standard_error, dof)
    return [difference - half_width, difference + half_width], float(p_value)


def compare(condition: Any, control: Any, confidence: float) -> dict[str, Any]:
    """Condition minus trained control on the group median, with interval and p-value."""
    median = control.statistics[STATISTIC]["value"]
    difference = condition.statistics[STATISTIC]["value"] - median
    standard_error = float(np.hypot(jackknife_se(condition.pairs), jackknife_se(control.pairs)))
    dof = min(len(condition.pairs.seeds), len(control.pairs.seeds)) - 1
    interval, p_value = t_interval(difference, standard_error, dof, confidence)
    return {
        "label": control.label,
        "median": median,
        "difference": difference,
        "difference_ci": interval,
        "p_value": p_value,
        "standard_error": standard_error,
        "side_by_side": side_by_side(control),
    }


def compare_isotropic(condition: Any, confidence: float) -> dict[str, Any] | None:
    """Condition minus the isotropic null (random dictionaries with the group's seed count)."""
    baseline = condition.extras.get("baseline")
    if not baseline:
        return None
    null_median = float(baseline["chance"][STATISTIC])  # mean of the null group medians
    difference = condition.statistics[STATISTIC]["value"] - null_median
    standard_error = jackknife_se(condition.pairs)
    interval, _ = t_interval(difference, standard_error, len(condition.pairs.seeds) - 1, confidence)
    return {
        "label": "random unit-norm dictionaries",
        "median": null_median,
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
                 "decoder_stability@0.9", "shared")  # fmt: skip


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


def attach_controls(reports: list[Any], confidence: float) -> None:
    """Fill ``extras["controls"]`` (and the beyond-geometry share) of every condition group."""
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
            controls[kind] = compare(report, by_label[label], confidence)
            if kind == "gaussian":
                share, threshold, masks = beyond_geometry(report, by_label[label])
                report.extras["beyond_geometry_fraction"] = share
                report.extras["beyond_geometry_threshold"] = threshold
                report.beyond_geometry = masks
        report.extras["controls"] = controls


def verdict(report: Any) -> str:
    """One plain sentence: which controls the condition beats, by how much."""
    entry = report.statistics[STATISTIC]
    parts = []
    for name in CONTROL_NAMES:
        control = report.extras.get("controls", {}).get(name)
        if control is None:
            continue
        low, high = control["difference_ci"]
        if np.isnan(low) or low <= 0 <= high:
            outcome = "is not distinguishable from"
        elif low > 0:
            outcome = "beats"
        else:
            outcome = "is below"
        kind = "isotropic null" if name == "isotropic" else f"{name.replace('_', '-')} control"
        parts.append(
            f"{outcome} the {kind} ({control['median']:.3f}; "
            f"difference {control['difference']:+.3f} [{low:+.3f}, {high:+.3f}], "
            f"p = {control['p_value']:.3g})"
        )
    sentence = f"**{report.label}**: median matched cosine {entry['value']:.3f}"
    if not parts:
        return (
            sentence + ", with no control to judge it against (train one: data.control=gaussian)."
        )
    sentence += " " + "; it ".join(parts) + "."
    if "beyond_geometry_fraction" in report.extras:
        sentence += (
            f" {report.extras['beyond_geometry_fraction']:.1%} of its features are reproduced "
            "beyond geometry (best-match cosine above the geometry control's 95th percentile)."
        )
    if report.extras.get("convergence", {}).get("still_improving"):
        sentence += " Its SAEs were still improving when training stopped (see Convergence)."
    return sentence
