"""report.md's sentences say what their numbers say: a p-value below 0.001 is never printed as
0.000, and a held-out FVU that rose over the last quarter is not reported as a fall."""

from __future__ import annotations

from types import SimpleNamespace

from saeseeds.analysis.report.markdown_sections import convergence_lines, p_text, trajectory_lines


def test_small_p_values_are_bounded_not_rounded_to_zero():
    assert p_text(5.4e-06) == "p < 0.001"
    assert p_text(0.0123) == "p = 0.012"
    assert p_text(None) == "p = –" and p_text(float("nan")) == "p = –"


def convergence(changes: dict[int, float], still_improving: bool) -> str:
    entry = {
        "last_quarter_relative_fvu_drop": changes,
        "fvu_still_improving": still_improving,
        "threshold": 0.02,
    }
    (line,) = convergence_lines(entry)
    return line


def test_a_falling_fvu_is_converged_and_a_rising_one_is_getting_worse():
    falling = convergence({1: 0.013, 2: 0.012}, still_improving=False)
    assert "seed 1: fell 1.3%, seed 2: fell 1.2%" in falling
    assert "converged by this criterion" in falling
    rising = convergence({1: -0.003, 2: -0.004}, still_improving=False)
    assert "seed 1: rose 0.3%, seed 2: rose 0.4%" in rising
    assert "getting worse" in rising and "converged" not in rising
    assert "**still improving**" in convergence({1: 0.05, 2: 0.01}, still_improving=True)


def trajectory_report(with_control: bool) -> SimpleNamespace:
    entry = {"value": 0.3, "ci_low": 0.29, "ci_high": 0.31}
    row = {"fraction": 0.5, "step": 512, "heldout_fvu": 0.1, "decoder_median": entry}
    if with_control:
        row["beyond_geometry_fraction"] = 0.1
    trajectory = {
        "statistic": "decoder_median",
        "stability_statistic": "decoder_stability@0.9",
        "rows": [row],
    }
    return SimpleNamespace(extras={"trajectory": trajectory})


def test_the_beyond_geometry_column_is_there_only_with_a_geometry_control():
    assert "beyond geometry" in "\n".join(trajectory_lines(trajectory_report(True)))
    assert "beyond geometry" not in "\n".join(trajectory_lines(trajectory_report(False)))
