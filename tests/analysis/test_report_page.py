"""report.html from a real analysis: one self-contained file, the feature table and cards in
headless Chromium, markup in corpus contexts shown as text, and the same table in W&B.

The browser test needs Chromium (``apt-get install chromium``; scripts/setup.sh installs it when
it runs as root with apt) and skips with a message without it. The size and speed check at
5 seeds × 4096 features is slow: ``pytest -m slow tests/analysis/test_report_page.py``.
"""

from __future__ import annotations

import csv
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from saeseeds.analysis.app import run_analysis
from saeseeds.analysis.examples import marked_text, split_context
from saeseeds.analysis.report.html import script_json
from tests.analysis.browser import Browser, find_chromium
from tests.analysis.report_sweeps import SCRIPT_CONTEXT, write_page_sweep
from tests.helpers import offline_wandb_run

N_FEATURES = 24
CONDITION = "data.control=none"


@pytest.fixture(scope="module")
def analysed(tmp_path_factory) -> Path:
    """The report folder of a real analysis of a condition and its geometry control, with its
    offline W&B run."""
    from omegaconf import OmegaConf

    from saeseeds.analysis.config import AnalyzeConfig

    root = tmp_path_factory.mktemp("page")
    sweep = write_page_sweep(root / "sweep", N_FEATURES, 16)
    cfg = OmegaConf.structured(AnalyzeConfig)
    cfg.sweep_dir, cfg.progress, cfg.logger.mode = str(sweep), False, "offline"
    cfg.bootstrap.n_samples, cfg.baseline.n_samples = 200, 9
    cfg.report.examples_per_feature = 3
    with pytest.MonkeyPatch.context() as environment:  # as the autouse offline_wandb fixture
        environment.setenv("WANDB_SILENT", "true")
        environment.setenv("WANDB_CONFIG_DIR", str(root / "wandb_config"))
        environment.delenv("WANDB_API_KEY", raising=False)
        outcome = run_analysis(cfg, root / "report")
    assert outcome.summary["wandb"]["mode"] == "offline"
    return root / "report"


def page_json(page: str) -> dict:
    found = re.search(r'<script type="application/json" id="page-data">(.*?)</script>', page, re.S)
    assert found, "the page's data element is missing"
    return json.loads(found.group(1))


def seed1_features(report_dir: Path) -> list[dict]:
    with open(report_dir / "features.csv") as file:
        rows = [row for row in csv.DictReader(file) if row["group"] == CONDITION]
    return [row for row in rows if row["seed"] == "1"]


def test_page_is_one_self_contained_file_with_inert_corpus_text(analysed):
    page = (analysed / "report.html").read_text(encoding="utf-8")
    assert page.count("<script") == 2  # the data and the page's own script, nothing from a corpus
    assert SCRIPT_CONTEXT not in page and "<img src=x" not in page
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)  # nothing to fetch
    assert re.findall(r'<img[^>]*src="([^"]{0,22})', page) == ["data:image/png;base64,"] * len(
        re.findall(r"<img", page)
    )
    assert "default-src 'none'" in page

    data = page_json(page)
    condition, control = data["groups"]  # conditions first: the page opens on the condition
    assert (condition["label"], condition["role"], control["role"]) == (
        CONDITION,
        "condition",
        "control",
    )
    assert condition["n"] == N_FEATURES and condition["seeds"] == [1, 2, 3]
    assert control["beyond"] is None and condition["beyond"] is not None
    seed1 = condition["contexts"][0]
    assert seed1["3"][0][:3] == [SCRIPT_CONTEXT, "ing3", " word0 | *x* `y`"]  # earlier marker
    assert condition["contexts"][1]["0"][0][1] == "ing0"  # current marker
    assert not control["has_contexts"]


def test_script_json_cannot_close_its_element_or_break_a_script():
    value = {"text": "</script><!-- & \u2028\u2029 <b>", "n": [1.5, None]}
    encoded = script_json(value)
    assert not set(encoded) & set("<>&\u2028\u2029")
    assert json.loads(encoded) == value


def test_contexts_are_read_with_either_marker():
    for text in ("the <<Paris>> in", "the ⟦Paris⟧ in"):
        context = {"text": text, "token": "Paris", "activation": 1.0}
        assert split_context(context) == ("the ", "Paris", " in")
        assert marked_text(context) == "the ⟦Paris⟧ in"
    unmarked = {"text": "no marker here", "token": "x", "activation": 1.0}
    assert split_context(unmarked) == ("no marker here", "", "")
    assert marked_text(unmarked) == "no marker here"


def visible_features(page) -> list[int]:
    return page.evaluate(
        "[...document.querySelectorAll('#spacer .row')]"
        ".sort((a, b) => parseFloat(a.style.top) - parseFloat(b.style.top))"
        ".map(row => Number(row.dataset.feature))"
    )


def count_text(page) -> str:
    return page.evaluate("document.getElementById('count').textContent")


def test_page_in_headless_chromium(analysed, tmp_path):
    executable = find_chromium()
    if executable is None:
        pytest.skip(
            "Chromium not found: the report page's browser test needs it (apt-get install "
            "chromium, as scripts/setup.sh does when run as root, or set SAESEEDS_CHROMIUM)"
        )
    features = seed1_features(analysed)
    beyond = [int(row["feature"]) for row in features if row["beyond_geometry"] == "1"]
    best = dict(enumerate(page_json((analysed / "report.html").read_text())["groups"][0]["best"]))
    for row in features:  # the page shows features.csv's best-match cosines, to 3 decimals
        assert best[int(row["feature"])] == pytest.approx(float(row["best_match_mean"]), abs=6e-4)
    assert 0 < len(beyond) < N_FEATURES
    with Browser(executable) as browser:
        page = browser.open((analysed / "report.html").as_uri())
        page.wait_until_ready()
        verdict = (analysed / "report.md").read_text().split("## Verdict\n\n- ")[1].split("\n")[0]
        shown = page.evaluate("document.querySelector('#verdict li').textContent")
        assert shown == verdict.replace("**", "")  # report.md's sentence, bold as HTML
        assert count_text(page) == f"showing {N_FEATURES} of {N_FEATURES} features of seed 1"
        assert visible_features(page) == list(range(N_FEATURES))

        page.click('#table-header [data-key="best"]')  # sort: best match, largest first
        page.wait_for("document.querySelector('[data-key=best]').className.includes('desc')")
        assert visible_features(page) == sorted(best, key=lambda f: (-best[f], f))

        page.click("#filter-beyond")
        page.wait_for(
            f"document.getElementById('count').textContent.startsWith('showing {len(beyond)} ')"
        )
        assert sorted(visible_features(page)) == beyond

        page.click("#filter-beyond")
        page.type_into("#search", "onerror")
        page.wait_for("document.getElementById('count').textContent.startsWith('showing 1 ')")
        assert visible_features(page) == [3]

        page.click("#spacer .row")
        page.wait_for("!document.getElementById('card').hidden")
        assert page.evaluate("document.querySelectorAll('#card .seed-column').length") == 3
        first_context = page.evaluate(
            "document.querySelector('#card .seed-column .contexts li').textContent"
        )
        assert first_context.startswith(SCRIPT_CONTEXT + "ing3 word0")
        assert page.evaluate("document.querySelector('#card mark').textContent") == "ing3"
        # Seed 2 recorded its activation at every token: more than the firing one is shaded; seed
        # 1's contexts (written before) show the marked token alone.
        shaded = "document.querySelectorAll('#card [data-seed=\"%s\"] li:first-child .shaded')"
        assert page.evaluate(f"{shaded % 2}.length") == 3
        assert page.evaluate(f"[...{shaded % 2}].map(e => e.title)") == [
            "activation 0.5",
            "activation 1.5",
            "activation 4",
        ]
        assert page.evaluate(f"{shaded % 1}.length") == 0
        assert page.evaluate("document.querySelectorAll('#card script, #card img').length") == 0
        assert page.evaluate("window.pwned === undefined")
        shot = page.screenshot(tmp_path / "report_card.png")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        page.press("Escape")
        page.wait_for("document.getElementById('card').hidden")
        page.evaluate(
            "(() => { const s = document.getElementById('group'); s.value = '1';"
            " s.dispatchEvent(new Event('change')); })()"
        )
        assert page.evaluate("document.getElementById('filter-beyond').disabled")
        assert "(control)" in page.evaluate(
            "document.getElementById('group').selectedOptions[0].textContent"
        )
        assert page.console_errors() == []


def test_analysis_run_logs_the_feature_table_with_contexts(analysed):
    (run_folder,) = (analysed / "wandb").glob("offline-run-*")
    assert f"features/{CONDITION}/_type" in offline_wandb_run(run_folder)["history_keys"]
    (table_file,) = (run_folder / "files" / "media" / "table" / "features").glob(
        "data.control=none*.table.json"
    )
    table = json.loads(table_file.read_text())
    columns = table["columns"]
    assert columns[:8] == ["feature", "firing_frequency", "reappearance", "stability",
                           "best_match_mean", "beyond_geometry", "nearest_neighbour_cosine",
                           "near_duplicate"]  # fmt: skip
    assert {"seed2_feature", "seed3_cosine", "seed1_contexts", "seed3_contexts"} <= set(columns)
    rows = [dict(zip(columns, row, strict=True)) for row in table["data"]]
    assert [row["feature"] for row in rows] == list(range(N_FEATURES))
    features = {int(row["feature"]): row for row in seed1_features(analysed)}
    for row in rows:
        expected = features[row["feature"]]
        assert row["beyond_geometry"] == (expected["beyond_geometry"] == "1")
        assert row["seed2_feature"] == int(expected["best_feature_seed2"])
        assert row["best_match_mean"] == pytest.approx(float(expected["best_match_mean"]), abs=1e-4)
    assert rows[3]["seed1_contexts"].startswith(SCRIPT_CONTEXT + "⟦ing3⟧ word0")
    assert rows[3]["seed1_contexts"].count("\n") == 2  # 3 contexts, one a line


@pytest.mark.slow
def test_page_size_and_first_render_at_5_seeds_by_4096_features(tmp_path, analysis_config):
    """Prints the page's size and Chromium's time to its first rows; the bounds are generous
    (a loaded machine), the printed figures are the result."""
    executable = find_chromium()
    if executable is None:
        pytest.skip("Chromium not found (apt-get install chromium)")
    sweep = write_page_sweep(tmp_path / "sweep", 4096, 64, seeds=(1, 2, 3, 4, 5), per_feature=5)
    cfg = analysis_config(
        str(sweep), matching="hungarian", live_only=False,
        **{"metrics.encoder": False, "metrics.overlap": False, "metrics.baseline": False,
           "metrics.subspaces": False},
    )  # fmt: skip
    started = time.perf_counter()
    run_analysis(cfg, tmp_path / "report")
    analysis_s = time.perf_counter() - started
    page_file = tmp_path / "report" / "report.html"
    size_mb = page_file.stat().st_size / 1e6
    with Browser(executable) as browser:
        page = browser.open(page_file.as_uri())
        page.wait_until_ready()
        first_render_ms = page.evaluate(
            "performance.getEntriesByName('saeseeds-first-render')[0].startTime"
        )
        assert count_text(page) == "showing 4096 of 4096 features of seed 1"
        assert page.evaluate("document.querySelectorAll('#spacer .row').length") < 80
        page.click('#table-header [data-key="best"]')
        started = time.perf_counter()
        page.type_into("#search", "word4")
        page.wait_for(
            "document.getElementById('count').textContent.startsWith('showing ') &&"
            " !document.getElementById('count').textContent.startsWith('showing 4096')"
        )
        search_s = time.perf_counter() - started
        page.click("#spacer .row")
        page.wait_for("!document.getElementById('card').hidden")
        assert page.evaluate("document.querySelectorAll('#card .seed-column').length") == 5
        page.screenshot(tmp_path / "card_4096.png")
        assert page.console_errors() == []
    data = page_json(page_file.read_text(encoding="utf-8"))
    figures = {
        "page_mb": round(size_mb, 2),
        "first_render_ms": round(first_render_ms),
        "search_s": round(search_s, 2),
        "analysis_s": round(analysis_s, 1),
        "features_with_all_contexts": data["groups"][0]["n_full"],
    }
    print(json.dumps(figures))
    (tmp_path / "figures.json").write_text(json.dumps(figures))
    assert size_mb < 40 and first_render_ms < 10_000
    assert np.sum(data["groups"][0]["full"]) == 1000


def test_figure_names_of_long_group_labels_fit_a_file_name():
    """Six architectures in one sweep give group labels past 255 bytes; their figures' names
    are cut with a hash, so two such groups never share a figure."""
    from saeseeds.analysis.report.plots import slug

    label = "sae=matryoshka data.control=gaussian " + "sae.groups=[1,2,4] " * 20
    assert len(slug(label).encode()) <= 120
    assert slug(label) != slug(label.replace("matryoshka", "archetypal"))
    assert slug("sae=topk / n=512") == "sae=topk_n=512"
