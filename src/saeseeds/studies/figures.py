"""The results page's figures (docs/results_*.png), drawn from the studies' summaries with
matplotlib's Agg backend. Each function returns the file it wrote, or None without the data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from saeseeds.io import atomic_path  # noqa: E402
from saeseeds.studies.claims import budget_name, budgets, control_group, real  # noqa: E402
from saeseeds.studies.published import GPT2_FIGURES  # noqa: E402
from saeseeds.studies.summaries import Groups, statistic  # noqa: E402

COLOURS = {"real": "tab:blue", "gaussian": "tab:orange", "random_model": "tab:green"}
NAMES = {"real": "trained model", "gaussian": "geometry control", "random_model": "random model"}


def _save(figure: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


def _point(axis: Any, x: float, group: dict | None, metric: str, colour: str, **style: Any) -> None:
    entry = statistic(group, metric)
    if entry["value"] is None:
        return
    axis.errorbar(
        [x], [entry["value"]], yerr=_error(entry), fmt="o", color=colour, capsize=3, **style
    )


def seed_study_figure(groups: Groups, path: Path) -> Path | None:
    """Live-only median matched cosine per layer and size, real vs controls vs published."""
    token_budgets = budgets(groups)
    if not token_budgets:
        return None
    figure, axes = plt.subplots(1, len(token_budgets), figsize=(5.5 * len(token_budgets), 4),
                                squeeze=False, sharey=True)  # fmt: skip
    settings = [(layer, n) for layer in groups.values("hook.layer")
                for n in groups.values("sae.n_features")]  # fmt: skip
    for axis, n_tokens in zip(axes[0], token_budgets, strict=True):
        for x, (layer, n_features) in enumerate(settings):
            group = real(groups, hook__layer=layer, sae__n_features=n_features,
                         data__n_tokens=n_tokens)  # fmt: skip
            for offset, kind in ((-0.2, "real"), (0.0, "gaussian"), (0.2, "random_model")):
                shown = group if kind == "real" else control_group(groups, group, kind)
                label = NAMES[kind] if x == 0 else None
                _point(axis, x + offset, shown, "live_decoder_median", COLOURS[kind], label=label)
            for published in GPT2_FIGURES:
                shown = (published["metric"], published["layer"], published["n_features"])
                if shown in (("live_decoder_median", layer, None),
                             ("live_decoder_median", layer, n_features)):  # fmt: skip
                    axis.plot([x], [published["value"]], "k*", markersize=11,
                              label="published (GPT-2)" if x == 0 else None)  # fmt: skip
        axis.set_xticks(range(len(settings)))
        axis.set_xticklabels([f"layer {layer}\n{n} features" for layer, n in settings])
        axis.set_title(budget_name(n_tokens))
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("median matched cosine, live features")
    axes[0][0].legend(fontsize=8)
    return _save(figure, path)


def size_tokens_figure(groups: Groups, path: Path) -> Path | None:
    """Shared fraction and median matched cosine against dictionary size, one line per token
    budget, real (solid) vs geometry control (dashed)."""
    sizes = [n for n in groups.values("sae.n_features") if isinstance(n, int)]
    if not sizes:
        return None
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    panels = (("shared", "shared fraction (decoder and encoder cosine > 0.7)"),
              ("decoder_median", "median matched decoder cosine"))  # fmt: skip
    for axis, (metric, ylabel) in zip(axes, panels, strict=True):
        _lines(axis, groups, metric, ("sae.n_features", sizes), "data.n_tokens", "{:,} tokens")
        axis.set_xscale("log", base=2)
        axis.set_xlabel("dictionary size (features)")
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    return _save(figure, path)


def token_figure(
    groups: Groups, statistics: tuple[tuple[str, str], ...], path: Path
) -> Path | None:
    """Each statistic against training tokens (log scale), one line per dictionary size, real
    (solid) vs geometry control (dashed), seed-bootstrap intervals as bands."""
    budgets = [n for n in groups.values("data.n_tokens") if isinstance(n, int)]
    if not budgets:
        return None
    figure, axes = plt.subplots(1, len(statistics), figsize=(4.2 * len(statistics), 3.8),
                                squeeze=False)  # fmt: skip
    for axis, (metric, name) in zip(axes[0], statistics, strict=True):
        _lines(axis, groups, metric, ("data.n_tokens", budgets), "sae.n_features", "{} features")
        axis.set_xscale("log")
        axis.set_xticks(budgets, [f"{b:,}" for b in budgets])  # the budgets, not log-scale minors
        axis.minorticks_off()
        axis.set_xlabel("training tokens (each seen once)")
        axis.set_title(name)
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return _save(figure, path)


def _lines(
    axis: Any, groups: Groups, metric: str, x: tuple[str, list[Any]], per: str, name: str
) -> None:
    """``metric`` over the values ``x[1]`` of the condition key ``x[0]``: one colour per value of
    the key ``per`` (labelled ``name.format(value)``), the trained model solid, its geometry
    control dashed."""
    key, xs = x
    for index, value in enumerate(groups.values(per)):
        for kind, style in (("real", "-"), ("gaussian", "--")):
            points = []
            for x_value in xs:
                values = {key.replace(".", "__"): x_value, per.replace(".", "__"): value}
                group = real(groups, **values)
                points.append((x_value, group if kind == "real" else
                               control_group(groups, group, kind)))  # fmt: skip
            label = f"{name.format(value)}, {NAMES[kind]}"
            _line(axis, points, metric, style, f"C{index}", label)


def _line(
    axis: Any, points: list[tuple[float, dict | None]], metric: str, style: str, colour: str,
    label: str,
) -> None:  # fmt: skip
    """One line of a group statistic over x, with its interval as a band where it has one."""
    xs, ys, lows, highs = [], [], [], []
    for x, group in points:
        entry = statistic(group, metric)
        if entry["value"] is None:
            continue
        xs.append(x)
        ys.append(entry["value"])
        lows.append(entry["ci_low"] if entry["ci_low"] is not None else entry["value"])
        highs.append(entry["ci_high"] if entry["ci_high"] is not None else entry["value"])
    if xs:
        axis.plot(xs, ys, style, marker="o", color=colour, label=label)
        axis.fill_between(xs, lows, highs, color=colour, alpha=0.15)


def architectures_figure(groups: Groups, path: Path) -> Path | None:
    architectures = [a for a in groups.values("sae.architecture") if a]
    if not architectures:
        return None
    figure, axes = plt.subplots(1, 2, figsize=(8, 3.5))
    for axis, metric, title in ((axes[0], "shared", "shared fraction"),
                                (axes[1], "decoder_median", "median matched cosine")):  # fmt: skip
        for x, name in enumerate(architectures):
            group = real(groups, sae__architecture=name)
            for offset, kind in ((-0.1, "real"), (0.1, "gaussian")):
                shown = group if kind == "real" else control_group(groups, group, kind)
                label = NAMES[kind] if x == 0 and axis is axes[0] else None
                _point(axis, x + offset, shown, metric, COLOURS[kind], label=label)
        axis.set_xticks(range(len(architectures)))
        axis.set_xticklabels(architectures)
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save(figure, path)


def masking_figure(groups: Groups, masking: dict[str, Any], path: Path) -> Path | None:
    """ΔFVU from masking the stable vs the unstable side of each equal-mass pair, per group."""
    rows = []
    for label, entry in masking.get("groups", {}).items():
        stable, unstable = entry["fvu"]["matched_stable"], entry["fvu"]["matched_unstable"]
        if stable["mean"] is not None and unstable["mean"] is not None:
            rows.append((label, stable, unstable))
    if not rows:
        return None
    figure, axis = plt.subplots(figsize=(7, 0.5 * len(rows) + 1.5))
    for y, (_, stable, unstable) in enumerate(rows):
        for offset, entry, colour, name in (
            (-0.15, stable, "tab:blue", "stable masked"),
            (0.15, unstable, "tab:red", "unstable masked"),
        ):
            low, high = entry["ci"]
            error = None if low is None else [[entry["mean"] - low], [high - entry["mean"]]]
            axis.errorbar([entry["mean"]], [y + offset], xerr=error, fmt="o", color=colour,
                          capsize=3, label=name if y == 0 else None)  # fmt: skip
    axis.set_yticks(range(len(rows)))
    axis.set_yticklabels([condition_name(groups, label) for label, _, _ in rows], fontsize=8)
    axis.set_xlabel("increase in held-out FVU (equal activation mass masked)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return _save(figure, path)


def condition_name(groups: Groups, label: str) -> str:
    from saeseeds.studies.claims import describe

    condition = groups.conditions.get(label, {})
    kind = (
        "geometry control"
        if condition.get("data.control") == "gaussian"
        else ("random model" if condition.get("model.init") == "random" else "trained model")
    )
    return f"{describe(condition)} ({kind})"


def tradeoff_figure(
    rows: list[tuple[str, dict[str, Any], dict[str, dict[str, Any]]]],
    panels: tuple[tuple[str, str], ...],
    x_label: str,
    path: Path,
) -> Path | None:
    """One point per method: its reconstruction (x) against each panel's statistic (y), each
    a {value, ci_low, ci_high} drawn with its interval; a dotted line at y = 0. ``rows`` are
    (method, x, {panel metric: y})."""
    rows = [row for row in rows if row[1]["value"] is not None]
    if not rows:
        return None
    figure, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for axis, (metric, title) in zip(axes[0], panels, strict=True):
        for index, (name, x, ys) in enumerate(rows):
            y = ys.get(metric) or {}
            if y.get("value") is None:
                continue
            axis.errorbar([x["value"]], [y["value"]], xerr=_error(x), yerr=_error(y), fmt="o",
                          color=f"C{index}", capsize=3, label=name)  # fmt: skip
            axis.annotate(name, (x["value"], y["value"]), fontsize=7, xytext=(4, 4),
                          textcoords="offset points")  # fmt: skip
        axis.axhline(0.0, color="grey", linestyle=":", linewidth=1)
        axis.set_xlabel(x_label)
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return _save(figure, path)


def _error(entry: dict[str, Any]) -> list[list[float]] | None:
    """An interval as matplotlib's asymmetric error bar (None without one)."""
    value, low, high = entry["value"], entry.get("ci_low"), entry.get("ci_high")
    if low is None or high is None:
        return None
    return [[max(value - low, 0)], [max(high - value, 0)]]
