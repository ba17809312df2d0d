"""Each published directional claim judged on our numbers, against its strongest control, with
the raw difference beside it.

Rule: a claim says a difference has a sign (e.g. layer 6 minus layer 0 < 0). The **raw** verdict
of a setting is reproduced where the 95% interval of our difference lies wholly on the claimed
side, not reproduced where it lies wholly on the other side, and inconclusive where it contains 0
(or cannot be computed). Differences between groups use the analysis's jackknife-t over seeds;
masking contrasts a Student-t over seeds. Where a geometry control exists, the same difference is
also taken against it (difference-in-differences): a trend the featureless control shows as much
is a property of the activations' geometry, not of reproducible features.

The **verdict** of a setting or a claim is the one against its strongest control (the geometry
control where there is one, else the raw difference, whose comparison may itself be with a
control): **reproduced** where both the raw and the controlled difference are; **not beyond
geometry** where the raw difference is but the controlled one is not; **not reproduced** where
either lies wholly on the other side; **inconclusive** otherwise. A claim over several settings
aggregates each kind (raw, controlled) first: reproduced when at least half of its settings are
reproduced and none is not reproduced; not reproduced, symmetrically; inconclusive otherwise
(too few settings decided, or settings that contradict each other).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from saeseeds.studies.published import GERASIMOV, GPT2_STUDY, PAULO_BELROSE
from saeseeds.studies.summaries import Groups, difference, difference_in_differences

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
NOT_BEYOND_GEOMETRY = "not beyond geometry"
NOT_MEASURED = "not measured by this study"
STUDY_BUDGET = 1024


def verdict(interval: Any, direction: int) -> str:
    """The rule above for one interval and the claimed sign (+1 or −1)."""
    low, high = (interval or [None, None])[:2]
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return INCONCLUSIVE
    if (low > 0 and direction > 0) or (high < 0 and direction < 0):
        return REPRODUCED
    if (low > 0 and direction < 0) or (high < 0 and direction > 0):
        return NOT_REPRODUCED
    return INCONCLUSIVE


def overall(verdicts: list[str]) -> str:
    """Several settings' verdicts as one: at least half decided one way and none the other."""
    counts = {v: sum(item == v for item in verdicts) for v in (REPRODUCED, NOT_REPRODUCED)}
    for outcome, other in ((REPRODUCED, NOT_REPRODUCED), (NOT_REPRODUCED, REPRODUCED)):
        if counts[other] == 0 and 2 * counts[outcome] >= max(len(verdicts), 1):
            return outcome
    return INCONCLUSIVE


def against_control(raw: str, controlled: str) -> str:
    """The verdict against the strongest control, from the raw one and the controlled one."""
    if raw == REPRODUCED:
        return REPRODUCED if controlled == REPRODUCED else NOT_BEYOND_GEOMETRY
    if NOT_REPRODUCED in (raw, controlled):
        return NOT_REPRODUCED
    return INCONCLUSIVE


@dataclass
class Finding:
    """One setting of a claim: a − b on one statistic, and the same against a control."""

    setting: str
    value_a: float | None
    value_b: float | None
    difference: float | None
    interval: list[float | None]
    verdict: str
    control: dict[str, Any] | None = None
    """{name, difference, interval, verdict}: the difference-in-differences against it."""
    note: str | None = None

    @property
    def controlled_verdict(self) -> str:
        """The verdict of the difference against the control, or the raw one without one."""
        return self.control["verdict"] if self.control is not None else self.verdict

    @property
    def judged(self) -> str:
        """This setting's verdict against its strongest control."""
        return against_control(self.verdict, self.controlled_verdict)


@dataclass
class Claim:
    key: str
    text: str
    source: str
    statistic: str
    compared: str
    """What a − b is, e.g. "layer 6 − layer 0"."""
    judged_against: str
    direction: int
    findings: list[Finding] = field(default_factory=list)
    note: str | None = None
    measured: bool = True
    """False for a claim the study lists but does not measure (its note says where it is)."""

    @property
    def raw_verdict(self) -> str:
        """The verdict of the raw differences, without the geometry control."""
        if not self.measured:
            return NOT_MEASURED
        return overall([f.verdict for f in self.findings])

    @property
    def verdict(self) -> str:
        """The verdict against the strongest control (the module's rule)."""
        if not self.measured:
            return NOT_MEASURED
        controlled = overall([f.controlled_verdict for f in self.findings])
        return against_control(self.raw_verdict, controlled)

    @property
    def beyond_control(self) -> str:
        """How many settings show the trend more than their geometry control does."""
        controlled = [f for f in self.findings if f.control is not None]
        if not controlled:
            return "n/a"
        beyond = sum(f.control["verdict"] == REPRODUCED for f in controlled)
        return f"{beyond} of {len(controlled)} settings"

    @property
    def summary(self) -> str:
        counts = [
            f"{sum(f.verdict == v for f in self.findings)} {v}"
            for v in (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)
            if any(f.verdict == v for f in self.findings)
        ]
        plural = "s" if len(self.findings) != 1 else ""
        return (
            f"{len(self.findings)} setting{plural}: " + ", ".join(counts) if self.findings else ""
        )


def finding(
    setting: str,
    a: dict | None,
    b: dict | None,
    metric: str,
    direction: int,
    control: tuple[str, dict | None, dict | None] | None = None,
) -> Finding | None:
    """a − b on ``metric`` (None when either group is missing), and against a control pair."""
    if a is None or b is None:
        return None
    result = difference(a, b, metric)
    entry = Finding(
        setting,
        result["value_a"],
        result["value_b"],
        result["difference"],
        list(result["difference_ci"]),
        verdict(result["difference_ci"], direction),
    )
    if control is not None and control[1] is not None and control[2] is not None:
        name, control_a, control_b = control
        did = difference_in_differences(a, b, control_a, control_b, metric)
        entry.control = {
            "name": name,
            "difference": did["difference"],
            "interval": list(did["difference_ci"]),
            "verdict": verdict(did["difference_ci"], direction),
        }
    return entry


def control_group(groups: Groups, group: dict | None, kind: str) -> dict | None:
    label = ((group or {}).get("controls", {}).get(kind) or {}).get("label")
    return groups.entries.get(label) if label else None


def budgets(groups: Groups) -> list[int]:
    """Token budgets of a seed study, the project's first and the study's own last."""
    values = [v for v in groups.values("data.n_tokens") if isinstance(v, int)]
    return sorted(values, key=lambda v: (v == STUDY_BUDGET, -v))


def budget_name(n_tokens: int) -> str:
    return "~1k tokens (the study's)" if n_tokens == STUDY_BUDGET else f"{n_tokens:,} tokens"


# ---- the multi-seed GPT-2 study ----


def real(groups: Groups, **values: Any) -> dict | None:
    return groups.find(data__control="none", model__init="pretrained", **values)


def seed_study_claims(groups: Groups) -> list[Claim]:
    layer = Claim(
        "layer", "Deeper layers are less stable", GPT2_STUDY, "live_decoder_median",
        "layer 6 − layer 0", "the geometry control's own layer difference", -1,
    )  # fmt: skip
    size = Claim(
        "size_gpt2", "Larger dictionaries are less stable", GPT2_STUDY, "live_decoder_median",
        "512 − 128 features", "the geometry control's own size difference", -1,
    )  # fmt: skip
    trained = Claim(
        "random_model", "SAEs on the trained model are more stable than on a random model",
        GERASIMOV, "decoder_median", "trained − random-init model",
        "the random-model (\"dead salmon\") control itself", 1,
    )  # fmt: skip
    for n_tokens in budgets(groups):
        budget = budget_name(n_tokens)
        for n_features in groups.values("sae.n_features"):
            deep, shallow = (
                real(groups, hook__layer=6, sae__n_features=n_features, data__n_tokens=n_tokens),
                real(groups, hook__layer=0, sae__n_features=n_features, data__n_tokens=n_tokens),
            )
            control = ("gaussian", *(control_group(groups, g, "gaussian") for g in (deep, shallow)))
            found = finding(f"{n_features} features, {budget}", deep, shallow,
                            layer.statistic, -1, control)  # fmt: skip
            layer.findings += [found] if found else []
        sizes = sorted(groups.values("sae.n_features"))
        for hook_layer in groups.values("hook.layer"):
            if len(sizes) > 1:
                large, small = (
                    real(groups, hook__layer=hook_layer, sae__n_features=n, data__n_tokens=n_tokens)
                    for n in (sizes[-1], sizes[0])
                )
                control = (
                    "gaussian",
                    *(control_group(groups, g, "gaussian") for g in (large, small)),
                )
                found = finding(f"layer {hook_layer}, {budget}", large, small, size.statistic, -1,
                                control)  # fmt: skip
                size.findings += [found] if found else []
            for n_features in sizes:
                group = real(groups, hook__layer=hook_layer, sae__n_features=n_features,
                             data__n_tokens=n_tokens)  # fmt: skip
                found = finding(
                    f"layer {hook_layer}, {n_features} features, {budget}", group,
                    control_group(groups, group, "random_model"), trained.statistic, 1,
                )  # fmt: skip
                trained.findings += [found] if found else []
    return [claim for claim in (layer, size, trained) if claim.findings]


# ---- Paulo & Belrose: size, tokens, architectures ----


def size_and_tokens_claims(groups: Groups) -> list[Claim]:
    """Paulo & Belrose's two trends on their statistic (shared), then on the median matched
    cosine: at small scale the shared fraction sits at its floor, where no trend can show."""
    secondary = "a secondary statistic: the shared fraction can sit at its floor"
    claims = [
        Claim("size", "The shared fraction falls with dictionary size", PAULO_BELROSE, "shared",
              "largest − smallest dictionary", "the geometry control's own size difference", -1),
        Claim("tokens", "The shared fraction rises with training tokens", PAULO_BELROSE, "shared",
              "most − fewest training tokens", "the geometry control's own token difference", 1),
        Claim("size_median", "The median matched cosine falls with dictionary size",
              f"Paulo & Belrose's trend ({secondary})", "decoder_median",
              "largest − smallest dictionary", "the geometry control's own size difference", -1),
        Claim("tokens_median", "The median matched cosine rises with training tokens",
              f"Paulo & Belrose's trend ({secondary})", "decoder_median",
              "most − fewest training tokens", "the geometry control's own token difference", 1),
    ]  # fmt: skip
    for size, tokens in (claims[:2], claims[2:]):
        add_size_and_token_findings(groups, size, tokens)
    return [claim for claim in claims if claim.findings]


def add_size_and_token_findings(groups: Groups, size: Claim, tokens: Claim) -> None:
    """Largest − smallest dictionary per budget, most − fewest tokens per size; each against
    the same difference in the geometry control."""
    sizes = sorted(groups.values("sae.n_features"))
    token_counts = sorted(groups.values("data.n_tokens"))
    for n_tokens in token_counts if len(sizes) > 1 else []:
        large, small = (real(groups, sae__n_features=n, data__n_tokens=n_tokens)
                        for n in (sizes[-1], sizes[0]))  # fmt: skip
        control = ("gaussian", *(control_group(groups, g, "gaussian") for g in (large, small)))
        found = finding(f"{sizes[-1]} − {sizes[0]} features, {n_tokens:,} tokens", large, small,
                        size.statistic, -1, control)  # fmt: skip
        size.findings += [found] if found else []
    add_token_findings(groups, tokens, tokens.statistic)


def add_token_findings(groups: Groups, claim: Claim, metric: str, named: str = "") -> None:
    """Most − fewest training tokens on ``metric``, per dictionary size, each against the same
    difference in the geometry control; ``named`` is added to the setting's name."""
    for n_features in sorted(groups.values("sae.n_features")):
        # Each size's own budgets: a larger budget may have been run for some sizes only.
        token_counts = [n for n in sorted(groups.values("data.n_tokens"))
                        if real(groups, sae__n_features=n_features, data__n_tokens=n)]  # fmt: skip
        if len(token_counts) < 2:
            continue
        most, fewest = (real(groups, sae__n_features=n_features, data__n_tokens=n)
                        for n in (token_counts[-1], token_counts[0]))  # fmt: skip
        control = ("gaussian", *(control_group(groups, g, "gaussian") for g in (most, fewest)))
        found = finding(f"{n_features} features, {token_counts[-1]:,} − {token_counts[0]:,} "
                        f"tokens{named}", most, fewest, metric, claim.direction,
                        control)  # fmt: skip
        claim.findings += [found] if found else []


def architecture_group(groups: Groups, architecture: str) -> dict | None:
    """The trained-model group of one architecture; where several differ in the weight penalty
    (the methods study's Top-K with and without it), the one without."""
    return real(groups, sae__architecture=architecture) or real(
        groups, sae__architecture=architecture, sae__weight_l2=0.0
    )


def architecture_claims(groups: Groups, context: str = "") -> list[Claim]:
    """Paulo & Belrose's ReLU+L1 against Top-K; ``context`` names the study in the claim."""
    claim = Claim(
        "architecture", f"ReLU+L1 SAEs are more stable than Top-K at matched sparsity{context}",
        PAULO_BELROSE, "shared", "ReLU+L1 − Top-K",
        "Top-K at the same held-out L0 (the calibrated ReLU+L1 coefficient), and the two "
        "architectures' own geometry controls", 1,
    )  # fmt: skip
    relu, topk = (architecture_group(groups, name) for name in ("relu_l1", "topk"))
    control = ("gaussian", *(control_group(groups, g, "gaussian") for g in (relu, topk)))
    for metric in ("shared", "decoder_median"):
        found = finding(metric.replace("_", " "), relu, topk, metric, 1, control)
        claim.findings += [found] if found else []
    duplicates = [near_duplicate_share(group) for group in (relu, topk)]
    if None not in duplicates and max(duplicates) >= 0.1:
        claim.note = (
            f"Near-duplicates: {duplicates[0]:.0%} of ReLU+L1's live features and "
            f"{duplicates[1]:.0%} of Top-K's have another feature of their own dictionary at "
            "decoder cosine ≥ 0.9. Copies of one direction match each other in every seed, so "
            "the matched statistics of the more redundant dictionary overstate how many distinct "
            "features reproduce."
        )
        distinct = [redundancy_of(group).get("distinct") or {} for group in (relu, topk)]
        if all(entry.get("shared") is not None for entry in distinct):
            claim.note += (
                " Over the distinct features only (live, no near-duplicate), shared is "
                f"{distinct[0]['shared']:.3f} for ReLU+L1 and {distinct[1]['shared']:.3f} for "
                f"Top-K; median matched cosine {distinct[0]['decoder_median']:.3f} and "
                f"{distinct[1]['decoder_median']:.3f}."
            )
    return [claim] if claim.findings else []


def redundancy_of(group: dict | None) -> dict[str, Any]:
    """A group's ``redundancy`` entry of summary.json ({} without it)."""
    return (group or {}).get("redundancy") or {}


def near_duplicate_share(group: dict | None) -> float | None:
    """The analysis's near-duplicate share of a group (None without it)."""
    return redundancy_of(group).get("near_duplicate_share")


# ---- Gerasimov et al.: masking and subspaces ----


def masking_claim(groups: Groups, masking: dict[str, Any]) -> Claim | None:
    claim = Claim(
        "masking", "Stable features carry most of the reconstruction and prediction signal",
        GERASIMOV, "equal-mass masking contrast", "masking stable − masking unstable (harm)",
        "frequency-matched unstable features of the same activation mass; the same contrast "
        "in the geometry and random-model controls", 1,
    )  # fmt: skip
    results = masking.get("groups", {})
    for label, entry in results.items():
        condition = groups.conditions.get(label, {})
        if condition.get("data.control") != "none" or condition.get("model.init") == "random":
            continue
        for metric, name in (("fvu", "FVU"), ("ce_loss_score", "CE-loss score")):
            contrast = entry.get(metric, {}).get("contrast", {})
            if contrast.get("mean") is None:
                continue
            group = groups.entries.get(label, {})
            gaussian = ((group.get("controls") or {}).get("gaussian") or {}).get("label")
            control = (results.get(gaussian) or {}).get(metric, {}).get("contrast")
            claim.findings.append(
                Finding(
                    f"{describe(condition)}: {name}", None, None, contrast["mean"],
                    list(contrast["ci"]), verdict(contrast["ci"], 1),
                    control=contrast_beyond(contrast, control),
                )
            )  # fmt: skip
    return claim if claim.findings else None


def contrast_beyond(contrast: dict[str, Any], control: dict[str, Any] | None) -> dict | None:
    """The condition's masking contrast minus its geometry control's: the two seed means'
    t-intervals give their standard errors, which add in quadrature (Welch, min(n) − 1 df)."""
    if not control or control.get("mean") is None or None in (control.get("ci") or [None]):
        return None
    from scipy import stats

    errors, dofs = [], []
    for side in (contrast, control):
        dof = int(side["n_seeds"]) - 1
        errors.append((side["ci"][1] - side["ci"][0]) / 2 / stats.t.ppf(0.975, dof))
        dofs.append(dof)
    value = contrast["mean"] - control["mean"]
    half = stats.t.ppf(0.975, min(dofs)) * math.hypot(*errors)
    interval = [value - half, value + half]
    return {
        "name": f"gaussian (its contrast {control['mean']:.3f})",
        "difference": value,
        "interval": interval,
        "verdict": verdict(interval, 1),
    }


def subspace_claim(groups: Groups) -> Claim | None:
    claim = Claim(
        "subspaces", "Unstable features concentrate in reproducible low-rank subspaces",
        GERASIMOV, "unstable-subspace overlap", "condition − geometry control, at equal rank",
        "the geometry control's unstable-subspace overlap (r/d_in shown for reference)", 1,
    )  # fmt: skip
    missing = 0
    for label, group in groups.entries.items():
        condition = groups.conditions[label]
        if condition.get("data.control") != "none" or condition.get("model.init") == "random":
            continue
        entry = ((group.get("controls") or {}).get("gaussian") or {}).get("subspace_overlap")
        if entry is None:
            missing += 1
            continue
        interval = entry.get("difference_ci") or [None, None]
        claim.findings.append(
            Finding(describe(condition), entry.get("condition"), entry.get("control"),
                    entry.get("difference"), list(interval), verdict(interval, 1),
                    note=f"rank {entry.get('rank')}; random subspaces "
                    f"{fmt(entry.get('random_expectation'))}"
                    + (f"; {entry['reason']}" if entry.get("reason") else ""))
        )  # fmt: skip
    if missing:
        claim.note = (
            f"{missing} group(s) have no unstable-subspace comparison with the geometry control in "
            "their summary.json (an analysis older than that comparison, or no control trained)."
        )
    return claim if claim.findings or claim.note else None


def fmt(value: Any, digits: int = 3) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (f"{value:.{digits}f}")
    )


def describe(condition: dict[str, Any]) -> str:
    """A short name of a condition: layer, size, architecture, budget."""
    parts = [f"layer {condition.get('hook.layer')}"]
    if condition.get("sae.architecture") not in (None, "topk"):
        parts.append(str(condition["sae.architecture"]))
    parts.append(f"{condition.get('sae.n_features')} features")
    n_tokens = condition.get("data.n_tokens")
    if isinstance(n_tokens, int):
        parts.append(budget_name(n_tokens))
    return ", ".join(parts)
