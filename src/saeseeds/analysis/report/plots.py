"""The report's PNG figures (matplotlib, Agg backend: no display needed).

Per group: seed × seed heatmaps of median matched cosine (of MMCS with argmax matching) and of the
shared fraction; histograms of matched cosines (all and live-only) with the random baseline
overlaid; reappearance and matched cosine vs firing frequency; the statistics over training
beside the geometry control's; activation correlation vs decoder cosine of matched features.
Across groups: overlap vs number of seeds. Each function writes one file and returns its path;
none computes a metric.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from saeseeds.analysis.functional import scatter_points  # noqa: E402
from saeseeds.analysis.group_analysis import GroupReport  # noqa: E402
from saeseeds.analysis.group_stats import frequency_points, seed_matrix  # noqa: E402
from saeseeds.io import fit_name  # noqa: E402

STATISTIC_TITLES = {"decoder_median": "median matched cosine", "mmcs": "MMCS"}


def slug(label: str) -> str:
    """A file-name-safe form of a group label, short enough for a file name with its suffix."""
    safe = re.sub(r"[^A-Za-z0-9_.=-]+", "_", label).strip("_") or "group"
    return fit_name(safe, 120)


def titled(title: str, label: str, width_inches: float, fontsize: float = 9) -> str:
    """``title`` over the group label, the label broken after its commas into lines that fit
    ``width_inches`` (a label of several config keys is wider than a one-panel figure)."""
    per_line = max(20, int(width_inches * 120 / fontsize))  # about 0.6 em a character
    lines, line = [], ""
    for piece in label.split(","):
        candidate = f"{line},{piece}" if line else piece
        if line and len(candidate) > per_line:
            lines.append(line + ",")
            candidate = piece
        line = candidate
    return "\n".join([title, *lines, line])


def _save(figure: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def seed_heatmap(report: GroupReport, metric: str, title: str, path: Path) -> Path:
    matrix = seed_matrix(report.pairs, metric)  # [S, S]
    seeds = report.pairs.seeds
    figure, axes = plt.subplots(figsize=(1.2 + 0.7 * len(seeds), 1.0 + 0.6 * len(seeds)))
    image = axes.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis")
    axes.set_xticks(range(len(seeds)), [str(seed) for seed in seeds])
    axes.set_yticks(range(len(seeds)), [str(seed) for seed in seeds])
    axes.set_xlabel("seed")
    axes.set_ylabel("seed")
    if len(seeds) <= 12:
        for (i, j), value in np.ndenumerate(matrix):
            color = "black" if value > 0.6 else "white"
            axes.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color=color)
    axes.set_title(titled(title, report.label, figure.get_figwidth()), fontsize=9)
    figure.colorbar(image, ax=axes, fraction=0.046)
    return _save(figure, path)


def matched_cosine_histograms(report: GroupReport, path: Path) -> Path:
    panels = [("all features", [p.decoder.cosines for p in report.pairs.pairs.values()])]
    live = [p.decoder_live.cosines for p in report.pairs.pairs.values() if p.decoder_live]
    if live:
        panels.append(("live in both runs", live))
    figure, axes_list = plt.subplots(
        1, len(panels), figsize=(5.0 * len(panels), 3.4), squeeze=False
    )
    bins = np.linspace(-0.2, 1.0, 61)
    for axes, (title, cosines) in zip(axes_list[0], panels, strict=True):
        values = np.concatenate(cosines) if cosines else np.zeros(0)
        axes.hist(values, bins=bins, density=True, alpha=0.75, label="seed pairs")
        if report.baseline is not None:
            axes.hist(
                report.baseline.matched_cosines,
                bins=bins,
                density=True,
                histtype="step",
                color="black",
                linewidth=1.5,
                label="random dictionaries (isotropic null)",
            )
        axes.set_xlabel("matched decoder cosine (Hungarian)")
        axes.set_ylabel("density")
        axes.set_title(titled(title, report.label, 5.0), fontsize=9)
        axes.legend(fontsize=8)
    return _save(figure, path)


def reappearance_vs_frequency(report: GroupReport, path: Path) -> Path:
    frequencies = np.concatenate([run.firing_frequency for run in report.pairs.runs])
    reappearance = np.concatenate([report.reappearance[seed] for seed in report.pairs.seeds])
    dead = frequencies <= 0
    floor = frequencies[~dead].min() / 10 if np.any(~dead) else 1e-6
    jitter = np.random.default_rng(0).uniform(-0.015, 0.015, size=len(reappearance))
    figure, axes = plt.subplots(figsize=(5.5, 3.6))
    axes.scatter(np.where(dead, floor, frequencies), reappearance + jitter, s=4, alpha=0.35)
    axes.set_xscale("log")
    axes.set_xlabel("firing frequency on held-out tokens (dead features at the left edge)")
    axes.set_ylabel("reappearance p_i")
    axes.set_ylim(-0.05, 1.05)
    axes.set_title(titled("Reappearance vs firing frequency", report.label, 5.5), fontsize=9)
    return _save(figure, path)


def matched_cosine_vs_frequency(
    report: GroupReport, frequencies: np.ndarray, cosines: np.ndarray, path: Path
) -> Path:
    live = frequencies > 0
    figure, axes = plt.subplots(figsize=(5.5, 3.6))
    axes.scatter(frequencies[live], cosines[live], s=4, alpha=0.3)
    axes.set_xscale("log")
    axes.set_xlabel("firing frequency on held-out tokens")
    axes.set_ylabel("matched decoder cosine")
    axes.set_title(titled("Matched cosine vs firing frequency", report.label, 5.5), fontsize=9)
    return _save(figure, path)


def beyond_geometry(report: GroupReport, control: GroupReport, path: Path) -> Path:
    """Best-match cosine per feature: the condition's and its geometry control's, with the
    control's 95th percentile (features right of it are reproduced beyond geometry)."""
    figure, axes = plt.subplots(figsize=(5.5, 3.6))
    bins = np.linspace(-0.1, 1.0, 56)
    for label, values, style in (
        ("condition", report.best_match, {"alpha": 0.7}),
        (
            "geometry control",
            control.best_match,
            {"histtype": "step", "color": "black", "linewidth": 1.5},
        ),
    ):
        axes.hist(
            np.concatenate(list(values.values())), bins=bins, density=True, label=label, **style
        )
    threshold = report.extras["beyond_geometry_threshold"]
    axes.axvline(
        threshold, color="red", linestyle="--", label=f"control's 95th percentile ({threshold:.2f})"
    )
    axes.set_xlabel("best-match cosine to the other seeds (mean over seeds)")
    axes.set_ylabel("density")
    share = report.extras["beyond_geometry_fraction"]
    axes.set_title(
        titled(f"{share:.1%} of features beyond geometry", report.label, 5.5), fontsize=9
    )
    axes.legend(fontsize=7)
    return _save(figure, path)


def _interval_line(axes, fractions, entries, label: str, style: dict) -> None:
    """One statistic over training with its interval as a band."""
    values = [entry["value"] if entry else np.nan for entry in entries]
    low = [entry["ci_low"] if entry else np.nan for entry in entries]
    high = [entry["ci_high"] if entry else np.nan for entry in entries]
    (line,) = axes.plot(fractions, values, label=label, **style)
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    axes.fill_between(fractions, low, high, color=line.get_color(), alpha=0.15, linewidth=0)


def trajectory(report: GroupReport, control: GroupReport | None, path: Path) -> Path:
    """The headline statistic, stability@0.9 with the shared fraction, and the beyond-geometry
    share at each snapshot and at the end, beside the geometry control's (95% intervals)."""
    entry = report.extras["trajectory"]
    statistic, stability = entry["statistic"], entry["stability_statistic"]
    # Short legend labels: the title names the condition and the caption its control, so the
    # legends stay inside their panels however long the group labels are.
    groups = [("condition", entry["rows"], {})]
    if control is not None:
        style = {"color": "black", "linestyle": "--"}
        groups.append(("geometry control", control.extras["trajectory"]["rows"], style))
    panels = [
        (STATISTIC_TITLES.get(statistic, statistic), [statistic]),
        (f"{stability.removeprefix('decoder_')} and shared", [stability, "shared"]),
    ]
    beyond = any("beyond_geometry_fraction" in row for row in entry["rows"])
    figure, axes_list = plt.subplots(
        1, len(panels) + beyond, figsize=(4.2 * (len(panels) + beyond), 3.4)
    )
    for axes, (title, names) in zip(axes_list, panels, strict=False):
        for label, rows, style in groups:
            fractions = [row["fraction"] for row in rows]
            for name, marker in zip(names, ("o", "s"), strict=False):
                suffix = f" ({name.removeprefix('decoder_')})" if len(names) > 1 else ""
                _interval_line(axes, fractions, [row.get(name) for row in rows], label + suffix,
                               {**style, "marker": marker})  # fmt: skip
        axes.set_title(title, fontsize=9)
        axes.set_xlabel("fraction of training")
        axes.set_xlim(0, 1.05)
        axes.legend(fontsize=7)
    if beyond:
        axes = axes_list[-1]
        rows = [row for row in entry["rows"] if "beyond_geometry_fraction" in row]
        axes.plot([row["fraction"] for row in rows],
                  [row["beyond_geometry_fraction"] for row in rows], marker="o")  # fmt: skip
        axes.set_title("share of features beyond geometry", fontsize=9)
        axes.set_xlabel("fraction of training")
        axes.set_xlim(0, 1.05)
        axes.set_ylim(bottom=0)
    figure.suptitle(f"Stability over training — {report.label}", fontsize=10)
    if control is not None:
        caption = f"geometry control: {control.label}"
        figure.text(0.5, 0.0, caption, ha="center", va="bottom", fontsize=8)
    return _save(figure, path)


def functional_agreement(report: GroupReport, control: GroupReport | None, path: Path) -> Path:
    """Activation correlation on held-out tokens against decoder cosine, per matched pair, for
    the group and its geometry control."""
    figure, axes = plt.subplots(figsize=(5.5, 3.8))
    for label, source, style in (
        ("matched pairs", report, {"s": 5, "alpha": 0.35}),
        ("geometry control's matched pairs", control,
         {"s": 5, "alpha": 0.35, "color": "black", "marker": "x"}),
    ):  # fmt: skip
        if source is None or not source.agreements:
            continue
        cosines, correlations = scatter_points(source.agreements)
        axes.scatter(cosines, correlations, label=label, **style)
    axes.axhline(0.0, color="grey", linewidth=0.8)
    axes.set_xlabel("matched decoder cosine")
    axes.set_ylabel("activation correlation on held-out tokens")
    median = report.extras["functional"]["median"]["value"]
    title = f"Matched features: median correlation {median:.2f}"
    axes.set_title(titled(title, report.label, 5.5), fontsize=9)
    axes.legend(fontsize=7)
    return _save(figure, path)


def overlap_vs_seeds(reports: list[GroupReport], path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(5.5, 3.6))
    for report in reports:
        curve = report.extras.get("overlap_vs_seeds")
        if curve:
            m_values = sorted(curve)
            axes.plot(m_values, [curve[m] for m in m_values], marker="o", label=report.label)
    axes.set_xlabel("number of other seeds m")
    axes.set_ylabel("share of latents shared with none")
    # Scaled to the curves (they often all lie near 1), with whole numbers of seeds.
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylim(top=min(1.0, axes.get_ylim()[1]) + 0.002)
    axes.set_title("Overlap vs number of seeds", fontsize=9)
    axes.legend(fontsize=7)
    return _save(figure, path)


def _over_training(
    report: GroupReport, control: GroupReport | None, figures_dir: Path, name: str
) -> dict[str, Path]:
    """The trajectory (not for a control: its condition's figure shows it) and the functional
    agreement, where the group has them."""
    paths = {}
    has_trajectory = len(report.trajectory) > 1 and report.extras.get("role") != "control"
    if has_trajectory:
        beside = control if control is not None and len(control.trajectory) > 1 else None
        paths["trajectory"] = trajectory(report, beside, figures_dir / f"{name}_trajectory.png")
    if report.agreements:
        paths["functional_agreement"] = functional_agreement(
            report, control, figures_dir / f"{name}_functional.png"
        )
    return paths


def write_figures(reports: list[GroupReport], figures_dir: Path) -> dict[str, dict[str, Path]]:
    """Every figure of every group: {group label or "all": {figure name: path}}."""
    figures: dict[str, dict[str, Path]] = {}
    for report in reports:
        name = slug(report.label)
        if report.matching == "hungarian":
            paths = {
                "median_heatmap": seed_heatmap(
                    report,
                    "decoder_median",
                    "Median matched cosine",
                    figures_dir / f"{name}_median.png",
                ),
                "cosine_histograms": matched_cosine_histograms(
                    report, figures_dir / f"{name}_histograms.png"
                ),
            }
        else:  # argmax matching: no matched cosines
            paths = {
                "mmcs_heatmap": seed_heatmap(
                    report,
                    "mmcs",
                    "MMCS (mean max cosine, argmax matching)",
                    figures_dir / f"{name}_mmcs.png",
                )
            }
        if "shared" in next(iter(report.pairs.statistics.values())):
            paths["shared_heatmap"] = seed_heatmap(
                report, "shared", "Shared fraction", figures_dir / f"{name}_shared.png"
            )
        if report.reappearance and "heldout_statistics" not in report.extras:  # imports lack it
            paths["reappearance_vs_frequency"] = reappearance_vs_frequency(
                report, figures_dir / f"{name}_reappearance.png"
            )
        if "matched_cosine_vs_firing_frequency" in report.extras:
            frequencies, cosines = frequency_points(report.pairs)
            paths["matched_cosine_vs_frequency"] = matched_cosine_vs_frequency(
                report, frequencies, cosines, figures_dir / f"{name}_frequency.png"
            )
        gaussian = report.extras.get("controls", {}).get("gaussian")
        control = next(r for r in reports if r.label == gaussian["label"]) if gaussian else None
        if control is not None and report.beyond_geometry:
            paths["beyond_geometry"] = beyond_geometry(
                report, control, figures_dir / f"{name}_beyond_geometry.png"
            )
        paths.update(_over_training(report, control, figures_dir, name))
        figures[report.label] = paths
    if any("overlap_vs_seeds" in report.extras for report in reports):
        figures["all"] = {
            "overlap_vs_seeds": overlap_vs_seeds(reports, figures_dir / "overlap_vs_seeds.png")
        }
    return figures
