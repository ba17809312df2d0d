"""Figure titles: a group label of several config keys is broken after its commas so that it fits
the figure, and nothing of it is lost."""

from __future__ import annotations

from saeseeds.analysis.report.plots import titled

LONG = "data.control=none,model.init=pretrained,sae.n_features=512,sae.k=32,trainer.max_epochs=8"


def test_a_long_label_is_broken_after_commas_and_kept_whole():
    lines = titled("Median matched cosine", LONG, width_inches=5.0).split("\n")
    assert lines[0] == "Median matched cosine" and len(lines) == 3
    assert all(len(line) <= 5.0 * 120 / 9 for line in lines[1:])
    assert "".join(lines[1:]) == LONG
    assert all(line.endswith(",") for line in lines[1:-1])


def test_a_short_label_stays_on_one_line():
    label = "n_features=512,k=32"
    assert titled("Overlap", label, width_inches=5.5) == f"Overlap\n{label}"


def test_one_key_longer_than_the_line_is_not_split():
    key = "data.corpus.paths=" + "x" * 100
    assert titled("t", f"{key},seed=1", width_inches=2.0).split("\n")[1:] == [f"{key},", "seed=1"]
