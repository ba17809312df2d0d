"""The stability-methods study's part of the results page: every architecture and Top-K with an
L2 weight penalty at matched held-out L0, each against its own geometry control. Its table
(reconstruction, then stability, each with its control), its figure (stability beyond geometry
against reconstruction) and its verdicts on the published claims about methods: archetypal more
stable than Top-K (Fel et al.), Matryoshka against absorption (Bussmann et al.), a weight
penalty more stable (Jedryszek & Crook), Song et al.'s PW-MCC of 0.80 and ReLU+L1 against Top-K
(Paulo & Belrose). Reads the analysis's groups and the runs' metrics, and for absorption the
metrics.json of the runs on the hierarchical synthetic world (``<study>/absorption``, no
analysis); judges with :mod:`saeseeds.studies.claims`'s rule.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from saeseeds import contract
from saeseeds.analysis.report.ground_truth import NOTE, ground_truth_table
from saeseeds.analysis.report.markdown_sections import table
from saeseeds.errors import DataError
from saeseeds.io import read_json
from saeseeds.studies import figures
from saeseeds.studies.claims import (
    Claim,
    Finding,
    architecture_claims,
    architecture_group,
    control_group,
    finding,
    near_duplicate_share,
    verdict,
)
from saeseeds.studies.experiments import ABSORPTION_FOLDER
from saeseeds.studies.published import BUSSMANN, FEL, JEDRYSZEK_CROOK
from saeseeds.studies.summaries import (
    Groups,
    difference,
    run_metric,
    run_metric_values,
    statistic,
)
from saeseeds.studies.token_scaling import PWMCC, pwmcc_claim

STUDY = "stability_methods"
NAMES = {
    "topk": "Top-K", "batchtopk": "BatchTopK", "matryoshka": "Matryoshka",
    "archetypal": "archetypal (RA-SAE)", "relu_l1": "ReLU+L1", "jumprelu": "JumpReLU",
}  # fmt: skip
WEIGHT_PENALTY = "Top-K + L2 weight penalty"
COEFFICIENTS = (("relu_l1", "sae.l1_coefficient"), ("jumprelu", "sae.l0_coefficient"))
# Held-out L0 further than this from k (relative) is not matched sparsity.
L0_TOLERANCE = 0.1
# Pair statistics of the table (with seed-bootstrap intervals), in its order.
STABILITY = (
    ("decoder_median", "median matched cosine"),
    (PWMCC, "PW-MCC"),
    ("shared", "shared fraction"),
    ("decoder_stability@0.9", "stability@0.9"),
)
# The figure's panels: stability beyond geometry (method − its control).
# Absorption: children absorbed per seed (docs/synthetic.md), Matryoshka against each baseline.
ABSORBED = "gt_absorbed_children"
ABSORPTION_BASELINES = ("batchtopk", "topk")  # Bussmann et al.'s baseline first
# The hierarchical world as its runs recorded it: (config key, how the section names it).
WORLD = (("data.hierarchy.n_parents", "parents"),
         ("data.hierarchy.children_per_parent", "children per parent"),
         ("data.hierarchy.child_probability", "child probability"),
         ("data.n_true_features", "true features"), ("data.d_in", "dimensions"),
         ("data.n_tokens", "tokens"), ("trainer.max_epochs", "epochs"),
         ("sae.n_features", "SAE features"), ("sae.k", "k"))  # fmt: skip
BEYOND = ((PWMCC, "PW-MCC − geometry control"),
          ("decoder_median", "median matched cosine − geometry control"))  # fmt: skip


def method_name(condition: dict[str, Any]) -> str:
    architecture = str(condition.get("sae.architecture"))
    penalty = condition.get("sae.weight_l2") or 0
    if penalty:
        base = NAMES.get(architecture, architecture)
        return WEIGHT_PENALTY if architecture == "topk" else f"{base} + L2 ({penalty:g})"
    return NAMES.get(architecture, architecture)


def methods(groups: Groups) -> list[tuple[str, dict]]:
    """(method name, trained-model group) of every method, the architectures' order of NAMES,
    each with its weight-penalty variant after it."""
    found = []
    for label, condition in groups.conditions.items():
        if condition.get("data.control") == "none" and condition.get("model.init") == "pretrained":
            architecture = condition.get("sae.architecture")
            order = list(NAMES).index(architecture) if architecture in NAMES else len(NAMES)
            penalty = condition.get("sae.weight_l2") or 0
            found.append(((order, penalty), method_name(condition), groups.entries[label]))
    return [(name, group) for _, name, group in sorted(found, key=lambda item: item[0])]


def beyond_geometry(groups: Groups, group: dict | None, metric: str) -> dict[str, Any]:
    """{value, ci_low, ci_high} of a method's statistic minus its geometry control's (the
    analysis's jackknife-t over seeds); None values without a control."""
    control = control_group(groups, group, "gaussian")
    if group is None or statistic(control, metric)["value"] is None:
        return {"value": None, "ci_low": None, "ci_high": None}
    result = difference(group, control, metric)
    low, high = result["difference_ci"]
    return {"value": result["difference"], "ci_low": low, "ci_high": high}


# ---- claims ----


def budgets(groups: Groups) -> list[tuple[str, Groups]]:
    """(name, its groups) of each training budget in the sweep folder (one, unless the study
    was run at several ``data.n_tokens``)."""
    return [(f"{n:,} tokens" if isinstance(n, int) else str(n), groups.where(data__n_tokens=n))
            for n in groups.values("data.n_tokens")]  # fmt: skip


def stability_methods_claims(groups: Groups, folder: Path | None = None) -> list[Claim]:
    """The study's claims; ``folder`` (the study's, else found from the groups' runs) holds the
    absorption runs."""
    settings = budgets(groups)
    archetypal = compared(
        "archetypal", "Archetypal SAEs are more stable than Top-K", FEL, settings,
        lambda g: architecture_group(g, "archetypal"), (PWMCC, "decoder_median"),
    )  # fmt: skip
    penalty = compared(
        "weight_l2", "A small L2 weight penalty makes Top-K SAEs more stable", JEDRYSZEK_CROOK,
        settings, weight_penalty_group, ("shared", PWMCC),
    )  # fmt: skip
    song = pwmcc_claim(
        groups,
        [(f"Top-K, {name} (methods study)", architecture_group(subset, "topk"))
         for name, subset in settings],
        STUDY,
    )  # fmt: skip
    paulo_belrose = [
        claim
        for name, subset in settings
        for claim in architecture_claims(
            subset, f" (methods study{f', {name}' if len(settings) > 1 else ''})"
        )
    ]
    song.text += " (methods study)"  # the token-scaling study judges the same claim
    absorption = absorption_claim(absorption_runs(folder or study_folder(groups)))
    claims = [archetypal, absorption, penalty, song, *paulo_belrose]
    return [claim for claim in claims if claim.findings or claim.note]


def weight_penalty_group(groups: Groups) -> dict | None:
    """The trained-model group of Top-K with a weight penalty (None unless exactly one)."""
    penalised = [label for label, condition in groups.conditions.items()
                 if condition.get("sae.architecture") == "topk"
                 and (condition.get("sae.weight_l2") or 0) > 0
                 and condition.get("data.control") == "none"]  # fmt: skip
    return groups.entries[penalised[0]] if len(penalised) == 1 else None


def compared(
    key: str,
    text: str,
    source: str,
    settings: list[tuple[str, Groups]],
    method: Callable[[Groups], dict | None],
    metrics: tuple[str, ...],
) -> Claim:
    """A method − Top-K on each statistic and budget, each against the two methods' geometry
    controls (difference-in-differences)."""
    claim = Claim(
        key, text, source, " and ".join(metrics), "the method − Top-K",
        "the two methods' own geometry controls (difference-in-differences)", 1,
    )  # fmt: skip
    for name, groups in settings:
        group, topk = method(groups), architecture_group(groups, "topk")
        if group is not None:
            claim.compared = f"{method_name(groups.condition(group))} − Top-K"
        control = ("gaussian", *(control_group(groups, g, "gaussian") for g in (group, topk)))
        for metric in metrics:
            setting = metric.replace("_", " ") + (f", {name}" if len(settings) > 1 else "")
            found = finding(setting, group, topk, metric, 1, control)
            claim.findings += [found] if found else []
    return claim


def study_folder(groups: Groups) -> Path | None:
    """The study's folder: the parent of the sweep folder that holds its runs
    (``<out>/<study>/sweep/<job>[/seed=N]``); None when no run lies in one."""
    for group in groups.entries.values():
        for run in group.get("runs") or []:
            sweep = next((p for p in Path(run).parents if p.name == "sweep"), None)
            if sweep is not None:
                return sweep.parent
    return None


def absorption_runs(folder: Path | None) -> dict[str, dict[int, dict[str, Any]]]:
    """{architecture: {seed: {"config": flat config, "metrics": metrics.json}}} of the complete
    runs of ``<folder>/absorption`` that recorded absorbed children; {} without any."""
    root = folder / ABSORPTION_FOLDER if folder is not None else None
    if root is None or not root.is_dir():
        return {}
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for marker in sorted(root.rglob(contract.COMPLETE_MARKER)):
        run = marker.parent
        try:
            environment = read_json(run / contract.ENVIRONMENT_FILE)
            metrics = read_json(run / contract.METRICS_FILE)
        except (OSError, ValueError) as error:
            raise DataError(f"{run} is marked complete but unreadable ({error}); delete it and "
                            "re-run the study's train stage.") from None  # fmt: skip
        config = contract.flatten(environment.get("config") or {})
        seed = config.get("seed")
        if (
            isinstance(metrics, dict)
            and isinstance(metrics.get(ABSORBED), int | float)
            and isinstance(seed, int)
        ):
            architecture = str(config.get("sae.architecture"))
            runs.setdefault(architecture, {})[seed] = {
                "config": config, "metrics": metrics,
            }  # fmt: skip
    return runs


def seed_group(runs: dict[int, dict[str, Any]], key: str) -> dict[str, Any]:
    """Runs as a group of the summaries' helpers: {"run_metrics": {seed: {key: value}}}."""
    return {"run_metrics": {seed: {key: run["metrics"].get(key)} for seed, run in runs.items()}}


def absorption_finding(runs: dict[str, dict[int, dict]], baseline: str) -> Finding | None:
    """Matryoshka − the baseline in absorbed children, paired by seed (same world, init seed and
    batch order), with a Student-t interval over the seeds' differences."""
    matryoshka, other = runs.get("matryoshka", {}), runs.get(baseline, {})
    seeds = sorted(set(matryoshka) & set(other))
    if not seeds:
        return None
    absorbed = [{s: side[s]["metrics"][ABSORBED] for s in seeds} for side in (matryoshka, other)]
    differences = {s: {"metrics": {ABSORBED: absorbed[0][s] - absorbed[1][s]}} for s in seeds}
    result = run_metric(seed_group(differences, ABSORBED), ABSORBED)
    interval = [result["ci_low"], result["ci_high"]]
    means = [run_metric(seed_group({s: side[s] for s in seeds}, ABSORBED), ABSORBED)["value"]
             for side in (matryoshka, other)]  # fmt: skip
    return Finding(
        f"Matryoshka − {NAMES[baseline]}, {len(seeds)} seeds", means[0], means[1],
        result["value"], interval, verdict(interval, -1),
    )  # fmt: skip


def absorption_claim(runs: dict[str, dict[int, dict]]) -> Claim:
    """Matryoshka's claim on the hierarchical synthetic world's runs: fewer absorbed children
    than BatchTopK (Bussmann et al.'s baseline) and than Top-K; not measured without the runs."""
    claim = Claim(
        "absorption", "Matryoshka SAEs reduce feature absorption", BUSSMANN, ABSORBED,
        "Matryoshka − BatchTopK and Matryoshka − Top-K, per seed",
        "the ground truth itself (synthetic world with known parents and children; no geometry "
        "control)", -1,
    )  # fmt: skip
    found = [absorption_finding(runs, baseline) for baseline in ABSORPTION_BASELINES]
    claim.findings = [entry for entry in found if entry is not None]
    if not claim.findings:
        claim.measured, claim.judged_against = False, "—"
        claim.note = (
            "Absorption needs ground-truth parent and child features, which a language model's "
            "activations do not have; it is measured on a synthetic world with a feature "
            "hierarchy, whose runs are not here (no Matryoshka and baseline runs with "
            f"`{ABSORBED}` under `<out>/stability_methods/{ABSORPTION_FOLDER}`). Train them with "
            "`python scripts/run_studies.py --only stability_methods --stages train` (complete "
            "runs are skipped), then rewrite the page with `--stages page`."
        )
    else:
        claim.note = (
            "Absorbed children as docs/synthetic.md defines them, counted in each run's "
            "metrics.json on the synthetic world of section 6; each seed's Matryoshka minus the "
            "baseline of the same seed [Student-t over the seeds' differences; none when they "
            "agree exactly]. The ground truth is the reference: there is no geometry control."
        )
    return claim


def world_sentence(runs: dict[str, dict[int, dict]]) -> str:
    """The hierarchical world and the SAEs as the absorption runs recorded them."""
    every = [run for seeds in runs.values() for run in seeds.values()]
    parts = []
    for key, name in WORLD:
        values = sorted({run["config"].get(key) for run in every} - {None}, key=str)
        shown = ", ".join(f"{v:,}" if isinstance(v, int) else f"{v:g}" for v in values)
        parts.append(f"{name} {shown or 'n/a'}")
    seen = sorted({int(run["metrics"]["tokens_seen"]) for run in every
                   if isinstance(run["metrics"].get("tokens_seen"), int | float)})  # fmt: skip
    parts.append(f"{', '.join(f'{n:,}' for n in seen) or 'unknown'} tokens seen per SAE")
    return "; ".join(parts)


def absorption_lines(runs: dict[str, dict[int, dict]]) -> list[str]:
    """The section's absorption part: the world, and per architecture the seeds' mean with
    their range of the ground-truth metrics; empty without the runs."""
    if not runs:
        return []
    order = [a for a in NAMES if a in runs] + sorted(set(runs) - set(NAMES))
    header, rows = ground_truth_table(
        [(NAMES.get(a, a), [run["metrics"] for run in runs[a].values()]) for a in order]
    )
    return [
        "", "### Absorption on a synthetic world with known parents and children", "",
        "For Matryoshka's claim (Bussmann et al. 2025), Top-K, BatchTopK and Matryoshka SAEs "
        "trained on a synthetic world with a feature hierarchy (`data=synthetic`, "
        "docs/synthetic.md; seeds sharing one batch order), as their runs recorded it: "
        f"{world_sentence(runs)}. {NOTE}", "",
        *table(["architecture", *header[1:]], rows),
    ]  # fmt: skip


# ---- the section ----


def budget_sentence(groups: Groups) -> str:
    """The training budget as the runs recorded it (never the config's default)."""
    seen = sorted({int(v) for group in groups.entries.values()
                   for v in run_metric_values(group, "tokens_seen")})  # fmt: skip
    requested = [f"{n:,}" for n in groups.values("data.n_tokens") if isinstance(n, int)]
    epochs = [str(e) for e in groups.values("trainer.max_epochs") if e is not None]
    shown = ", ".join(f"{n:,}" for n in seen) or "unknown"
    return (f"{shown} training tokens per SAE as the runs recorded them (`tokens_seen`; "
            f"`data.n_tokens` = {', '.join(requested) or 'n/a'}, "
            f"{', '.join(epochs) or 'n/a'} epoch(s))")  # fmt: skip


def target_l0(groups: Groups) -> int | None:
    ks = [k for k in groups.values("sae.k") if isinstance(k, int)]
    return ks[0] if len(ks) == 1 else None


def off_target(groups: Groups, group: dict) -> bool:
    """Whether a method's mean held-out L0 is further than L0_TOLERANCE from k."""
    k, l0 = target_l0(groups), run_metric(group, "l0")["value"]
    return k is not None and l0 is not None and abs(l0 - k) > L0_TOLERANCE * k


def _cell(entry: dict[str, Any], digits: int = 3) -> str:
    """A value [interval], the value alone without one, n/a without either."""
    from saeseeds.studies.page import fmt, fmt_ci

    if entry["value"] is None:
        return "n/a"
    if entry["ci_low"] is None:
        return fmt(entry["value"], digits)
    return f"{fmt(entry['value'], digits)} {fmt_ci([entry['ci_low'], entry['ci_high']], digits)}"


def _with_control(group: dict | None, control: dict | None, shown: Callable[[Any], str]) -> str:
    return f"{shown(group)}<br>control: {shown(control)}"


def method_table(groups: Groups) -> list[str]:
    """One budget's table: a row per method, each cell beside its geometry control's."""
    from saeseeds.studies.page import distinct_cell, pct

    lines = [
        "| method | held-out L0 | held-out FVU | CE-loss score | "
        + " | ".join(name for _, name in STABILITY)
        + " | PW-MCC beyond geometry | near-duplicates | distinct features: shared, median |",
        "| --- |" + " --- |" * (len(STABILITY) + 6),
    ]
    rows = methods(groups)
    for name, group in rows:
        control = control_group(groups, group, "gaussian")
        matched = " (not matched)" if off_target(groups, group) else ""
        cells = [_cell(run_metric(group, "l0"), 1) + matched]
        for metric in ("fvu", "ce_loss_score"):
            cells.append(_with_control(group, control, lambda g, m=metric: _cell(run_metric(g, m))))
        for metric, _ in STABILITY:
            cells.append(_with_control(group, control, lambda g, m=metric: _cell(statistic(g, m))))
        cells.append(_cell(beyond_geometry(groups, group, PWMCC)))
        cells.append(_with_control(group, control, lambda g: pct(near_duplicate_share(g))))
        cells.append(_with_control(group, control, distinct_cell))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    unmatched = [name for name, group in rows if off_target(groups, group)]
    if unmatched:
        lines += ["", f"Not at matched sparsity (held-out L0 more than {L0_TOLERANCE:.0%} from "
                  f"k = {target_l0(groups)}): {', '.join(unmatched)}; their comparisons with "
                  "Top-K are not at matched sparsity. (A coefficient's search keeps its closest "
                  "probe when it runs out of probes; the study's `calibration.json` records the "
                  "λ used.)"]  # fmt: skip
    return lines


def coefficients(groups: Groups) -> str:
    """The sparsity coefficients the calibrated methods were trained with."""
    parts = []
    for architecture, key in COEFFICIENTS:
        values = {condition.get(key) for condition in groups.conditions.values()
                  if condition.get("sae.architecture") == architecture}  # fmt: skip
        values = sorted(values - {None})
        if values:
            parts.append(f"{NAMES[architecture]} λ = {', '.join(f'{v:.4g}' for v in values)}")
    return "; ".join(parts) or "no calibrated method"


def stability_methods_section(study: dict[str, Any], figure: Path | None, page: Path) -> list[str]:
    from saeseeds.studies.page import _convergence, _relative, _seeds

    groups: Groups = study["groups"]
    k = target_l0(groups)
    sizes = ", ".join(map(str, groups.values("sae.n_features")))
    layers = ", ".join(map(str, groups.values("hook.layer")))
    once = groups.values("trainer.max_epochs") == [1]
    lines = [
        "## 6. Stability by training method at matched L0, beyond geometry", "",
        f"Every architecture and Top-K with an L2 weight penalty (`sae.weight_l2`, decoder "
        f"rows left free; Jedryszek & Crook 2026), {sizes} features on layer {layers} of the "
        "embedded model, on the Python standard library's source (`data=pysource`): "
        f"{budget_sentence(groups)}{', every token seen once' if once else ''}; "
        f"{_seeds(groups)} seeds that share one batch order. Sparsity is matched on held-out L0 "
        f"(k = {k if k else 'n/a'}; {coefficients(groups)}, each searched by "
        "`run_studies.py` for held-out L0 within 10% of k on this data and budget). Each "
        "cell: the method [95% CI: Student-t over seeds for the runs' held-out metrics, seed "
        "bootstrap for the pair statistics]; below it, the same method trained on its geometry "
        "control (Gaussian data with the activations' mean and covariance; it has no CE-loss "
        "score). PW-MCC beyond geometry: the method's PW-MCC minus its control's "
        "[jackknife-t]. Near-duplicates: share of live features with another of their own "
        "dictionary at decoder cosine ≥ 0.9; distinct features: shared and median matched "
        "cosine over the others.",
    ]  # fmt: skip
    settings = budgets(groups)
    for name, subset in settings:
        lines += ["", f"### {name}", ""] if len(settings) > 1 else [""]
        lines += method_table(subset)
    if figure is not None:
        shown = f" ({settings[-1][0]})" if len(settings) > 1 else ""
        lines += ["", f"![Stability beyond geometry against reconstruction, by method{shown}]"
                      f"({_relative(figure, page)})"]  # fmt: skip
    folder = study.get("folder") or study_folder(groups)
    return lines + _convergence(groups) + absorption_lines(absorption_runs(folder))


def stability_methods_figure(groups: Groups, path: Path) -> Path | None:
    """Stability beyond geometry against held-out FVU, one point per method, at the largest
    budget."""
    settings = budgets(groups)
    if not settings:
        return None
    largest = settings[-1][1]
    rows = [(name, run_metric(group, "fvu"),
             {metric: beyond_geometry(largest, group, metric) for metric, _ in BEYOND})
            for name, group in methods(largest)]  # fmt: skip
    return figures.tradeoff_figure(rows, BEYOND, "held-out FVU (lower: better reconstruction)",
                                   path)  # fmt: skip
