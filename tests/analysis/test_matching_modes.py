"""Argmax matching (no assignment) beside Hungarian: what each reports, and that the report says
which was used. Real run folders, the app in process and once through ``analyze.py``."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from saeseeds.analysis.app import run_analysis
from saeseeds.analysis.config import resolve_matching
from saeseeds.analysis.errors import AnalysisConfigError
from saeseeds.analysis.similarity import best_matches, best_matches_between, cosine_similarity
from tests.analysis.run_folders import random_directions, write_run_folder
from tests.analysis.test_analyze_cli import analyze


def test_blockwise_best_matches_equal_those_of_the_stored_matrix():
    rows, columns = random_directions(37, 8, seed=1), random_directions(29, 8, seed=2)
    stored = best_matches(cosine_similarity(rows, columns), block_size=5)
    for block_size in (1, 7, 64):
        blockwise = best_matches_between(rows, columns, block_size=block_size)
        for key in ("row_best", "column_best"):
            np.testing.assert_array_equal(blockwise[key], stored[key])
        for key in ("row_max", "column_max"):
            np.testing.assert_allclose(blockwise[key], stored[key], rtol=0, atol=1e-6)


def test_auto_uses_argmax_above_the_size():
    assert resolve_matching("auto", 32768, 32768) == "hungarian"
    assert resolve_matching("auto", 32769, 32768) == "argmax"
    assert resolve_matching("hungarian", 10**6, 32768) == "hungarian"
    assert resolve_matching("argmax", 8, 32768) == "argmax"


def test_a_hungarian_matrix_larger_than_memory_is_refused_before_any_work(
    tmp_path, analysis_config
):
    """10⁶ features would need a 3.6 TiB matrix; the run folder is real, only small in d_in."""
    n_features = 1_000_000
    decoder = np.zeros((n_features, 1), dtype=np.float32)
    decoder[:, 0] = 1.0
    sweep = tmp_path / "sweep"
    for seed in (1, 2):
        write_run_folder(sweep / f"seed={seed}", decoder, seed=seed)
    with pytest.raises(AnalysisConfigError) as refused:
        run_analysis(analysis_config(str(sweep), matching="hungarian"), tmp_path / "report")
    message = str(refused.value)
    assert "Hungarian matching of 1000000 features needs a 3725.3 GiB similarity matrix" in message
    assert "Use matching=argmax" in message
    assert not (tmp_path / "report").exists()


def test_argmax_reports_what_needs_no_assignment_and_marks_the_rest(
    stable_sweep, tmp_path, analysis_config
):
    quick = {"baseline.n_samples": 3, "bootstrap.n_samples": 50, "report.figures": False}
    hungarian = run_analysis(analysis_config(str(stable_sweep), **quick), tmp_path / "hungarian")
    argmax = run_analysis(
        analysis_config(str(stable_sweep), matching="argmax", **quick), tmp_path / "argmax"
    ).summary
    hungarian = hungarian.summary
    assert argmax["matching"]["by_group"] == dict.fromkeys(argmax["groups"], "argmax")
    for label, group in argmax["groups"].items():
        full = hungarian["groups"][label]
        assert group["matching"]["mode"] == "argmax"
        assert group["matching"]["headline_statistic"] == "mmcs"
        assert full["matching"]["mode"] == "hungarian"
        assert full["matching"]["not_computed"]["statistics"] == []
        # The same data: what needs no assignment is identical in both modes.
        assert set(group["statistics"]) == {"mmcs"}
        assert group["statistics"]["mmcs"]["value"] == pytest.approx(
            full["statistics"]["mmcs"]["value"], abs=1e-9
        )
        assert group["reappearance"] == full["reappearance"]
        assert group["subspaces"] == full["subspaces"]
        # What needs one is absent, and listed as such.
        absent = group["matching"]["not_computed"]
        assert {"decoder_median", "shared", "agreement", "live_decoder_median"} <= set(
            absent["statistics"]
        )
        assert set(absent["statistics"]) <= set(full["statistics"])
        assert absent["results"] == [
            "overlap_vs_seeds",
            "matched_cosine_vs_firing_frequency",
            "functional_agreement",
            "examples",
        ]
        assert "overlap_vs_seeds" not in group and group["examples"] == []
        assert group["baseline"]["statistic"] == "mmcs"
        assert group["controls"]["isotropic"]["statistic"] == "mmcs"
        assert "median" not in group["controls"]["isotropic"]
        assert (
            full["controls"]["isotropic"]["median"] == full["baseline"]["chance"]["decoder_median"]
        )
        assert all("decoder_median" in pair for pair in full["pairs"])
        assert all(set(pair) == {"seed_a", "seed_b", "mmcs"} for pair in group["pairs"])

    with open(tmp_path / "argmax" / "features.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["matched_cosine_seed2"] for row in rows if row["seed"] == "1"} == {""}
    assert all(row["best_cosine_seed2"] != "" for row in rows if row["seed"] == "1")
    report = (tmp_path / "argmax" / "report.md").read_text()
    assert "Matching: **argmax only** (no one-to-one assignment) for every group." in report
    assert "MMCS (mean max cosine)" in report and "| n/a |" in report
    assert "**Not computed**" in report and "`decoder_median`" in report


def test_auto_mixes_modes_by_size_and_the_report_names_them(
    stable_sweep, tmp_path, analysis_config
):
    cfg = analysis_config(
        str(stable_sweep), argmax_above=30, **{"metrics.baseline": False, "report.figures": False}
    )
    summary = run_analysis(cfg, tmp_path / "report").summary
    assert summary["matching"] == {
        "requested": "auto",
        "argmax_above": 30,
        "by_group": {"sae.n_features=24": "hungarian", "sae.n_features=40": "argmax"},
    }
    assert "decoder_median" in summary["groups"]["sae.n_features=24"]["statistics"]
    report = (tmp_path / "report" / "report.md").read_text()
    assert (
        "Matching: **argmax only** (no one-to-one assignment) for **sae.n_features=40**; "
        "Hungarian for the other 1." in report
    )
    assert "(n_features=40 > argmax_above=30)" in report


def test_argmax_through_the_command_line(stable_sweep, tmp_path):
    result = analyze(
        tmp_path, f"sweep_dir={stable_sweep}", "matching=argmax", "logger=none",
        "baseline.n_samples=3", "bootstrap.n_samples=50",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["config"]["matching"] == "argmax"
    assert set(summary["matching"]["by_group"].values()) == {"argmax"}
    figures = {name for group in summary["groups"].values() for name in group["figures"]}
    assert "mmcs_heatmap" in figures and "median_heatmap" not in figures
    assert "cosine_histograms" not in figures
    report = (tmp_path / "report" / "report.md").read_text()
    assert "(argmax matching, no one-to-one assignment): MMCS (mean max cosine)" in report
    bad = analyze(tmp_path, "matching=greedy", f"hydra.run.dir={tmp_path / 'refused'}")
    assert bad.returncode == 1
    assert "Invalid value 'greedy', expected one of [auto, hungarian, argmax]" in bad.stderr
