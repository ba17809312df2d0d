"""The whole app on fixture sweeps: every report file exists and parses, bad runs are listed."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from saeseeds.analysis.app import run_analysis
from saeseeds.analysis.errors import AnalysisError
from tests.analysis.run_folders import random_directions, write_run_folder

FIGURES = ("median", "shared", "histograms", "reappearance", "frequency")


def test_report_folder_holds_every_output(stable_sweep, tmp_path, analysis_config):
    report_dir = tmp_path / "report"
    outcome = run_analysis(analysis_config(str(stable_sweep)), report_dir)

    summary = json.loads((report_dir / "summary.json").read_text())
    assert set(summary["groups"]) == {"sae.n_features=24", "sae.n_features=40"}
    for group in summary["groups"].values():
        assert group["seeds"] == [1, 2, 3]
        stats = group["statistics"]
        assert stats["decoder_median"]["value"] > group["baseline"]["chance"]["decoder_median"]
        assert stats["shared"]["value"] > 0.8
        assert stats["decoder_median"]["ci_low"] <= stats["decoder_median"]["value"]
        assert group["baseline"]["p_value"] == pytest.approx(1 / 10)
        assert [example["kind"] for example in group["examples"]] == [
            "best",
            "near median",
            "poorly matched",
        ]
        assert set(group["overlap_vs_seeds"]) == {"1", "2"}
        assert {"reappearance", "subspaces", "matched_cosine_vs_firing_frequency"} <= set(group)
    assert summary["timings"]["total_s"] > 0 and "analysis_s" in summary["timings"]

    with open(report_dir / "pairs.csv") as handle:
        pair_rows = list(csv.DictReader(handle))
    assert {(row["seed_a"], row["seed_b"]) for row in pair_rows} == {
        ("1", "2"),
        ("1", "3"),
        ("2", "3"),
    }
    assert {"decoder_median", "live_decoder_median", "shared", "agreement", "mmcs"} <= {
        row["metric"] for row in pair_rows
    }
    with open(report_dir / "features.csv") as handle:
        feature_rows = list(csv.DictReader(handle))
    assert len(feature_rows) == 3 * (24 + 40)
    first = feature_rows[0]
    assert first["seed"] == "1" and first["matched_cosine_seed1"] == ""
    assert float(first["matched_cosine_seed2"]) <= float(first["best_cosine_seed2"]) + 1e-6

    report = (report_dir / "report.md").read_text()
    assert "| group | median matched cosine | live-only | stability@0.7" in report
    for label in ("sae.n_features=24", "sae.n_features=40"):
        for figure in FIGURES:
            png = report_dir / "figures" / f"{label}_{figure}.png"
            assert png.read_bytes()[:4] == b"\x89PNG"
            assert f"figures/{label}_{figure}.png" in report
    assert (report_dir / "figures" / "overlap_vs_seeds.png").is_file()
    assert len(outcome.reports) == 2


def test_bad_runs_are_listed_and_the_rest_analysed(stable_sweep, tmp_path, analysis_config):
    broken = stable_sweep / "sae.n_features=24,seed=3"
    (broken / "cfg.json").unlink()
    outcome = run_analysis(analysis_config(str(stable_sweep)), tmp_path / "report")
    assert outcome.summary["skipped_runs"] == [
        {
            "path": str(broken),
            "status": "corrupt",
            "reason": "missing cfg.json (the run's SAE config)",
        }
    ]
    assert outcome.summary["groups"]["sae.n_features=24"]["seeds"] == [1, 2]
    assert "missing cfg.json" in (tmp_path / "report" / "report.md").read_text()


def test_example_pairs_show_top_examples_side_by_side(tmp_path, analysis_config):
    base = random_directions(8, 8, seed=0)
    examples = {
        index: [{"activation": 3.0, "text": f"ctx <<tok{index}>> end", "token": f"tok{index}"}]
        for index in range(8)
    }
    for seed in (1, 2):
        write_run_folder(
            tmp_path / "sweep" / f"seed={seed}", base, seed=seed, top_examples=examples
        )
    run_analysis(analysis_config(str(tmp_path / "sweep")), tmp_path / "report")
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| seed 1 feature" in report and "| seed 2 feature" in report
    assert "ctx ⟦tok0⟧ end" in report  # written with the earlier marker, shown with the current one


def test_nothing_analysable_raises_with_every_reason(tmp_path, analysis_config):
    write_run_folder(tmp_path / "a", random_directions(6, 4, 0), seed=1, complete=False)
    write_run_folder(tmp_path / "b", random_directions(6, 4, 0), seed=2)
    with pytest.raises(AnalysisError) as caught:
        run_analysis(analysis_config(str(tmp_path)), tmp_path / "report")
    message = str(caught.value)
    assert "incomplete" in message and "needs >= 2 seeds" in message
    assert not (tmp_path / "report").exists()


def test_thresholds_and_switches_come_from_the_config(stable_sweep, tmp_path, analysis_config):
    cfg = analysis_config(
        str(stable_sweep),
        thresholds=[0.5],
        live_only=False,
        solver="scipy",
        **{"metrics.baseline": False, "metrics.subspaces": False, "report.figures": False},
    )
    outcome = run_analysis(cfg, tmp_path / "report")
    group = outcome.summary["groups"]["sae.n_features=24"]
    assert "decoder_stability@0.5" in group["statistics"]
    assert "decoder_stability@0.7" not in group["statistics"]
    assert "live_decoder_median" not in group["statistics"]
    assert "baseline" not in group and "subspaces" not in group
    assert not (tmp_path / "report" / "figures").exists()
    assert np.isfinite(group["statistics"]["decoder_median"]["value"])
