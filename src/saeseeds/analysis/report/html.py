"""report.html: one self-contained page to browse each group's features across seeds.

The page opens from disk with no server and no network: the figures are embedded as data URIs,
the feature tables travel as one compact JSON blob in a ``<script type="application/json">``
element, and the page's own script and style (``page.js``, ``page.css`` beside this module) are
inlined. A Content-Security-Policy allows that one script (by its hash), inline styles and data:
images, and nothing else: no request leaves the page.

It opens with the verdict, in the same sentences as report.md (:func:`controls.verdict`), and the
table of stability over training where the runs have snapshots, then a feature table per group
(:mod:`.feature_table`) that the script sorts, filters and renders a screenful of rows at a time,
and a card per feature with its versions in every seed side by side, each context's tokens
shaded by the feature's activation where the run recorded it.

Size: at 5 seeds × 4096 features the contexts are most of the page. Every version of every
feature carries its strongest context; the ``full_context_rows`` features with the highest
best-match cosine (the ones most worth reading across seeds) carry up to ``per_feature`` contexts
per version. The page says so, and every context stays in each run's ``top_examples.json``.

Corpus text is never markup: the JSON escapes ``<``, ``>``, ``&``, U+2028 and U+2029, and the
script builds every node from data with ``textContent``.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from saeseeds.analysis.controls import verdict
from saeseeds.analysis.group_analysis import GroupReport
from saeseeds.analysis.report.data import json_safe
from saeseeds.analysis.report.feature_table import FeatureTable, context_parts, feature_tables
from saeseeds.analysis.report.ground_truth import NOTE as GROUND_TRUTH_NOTE
from saeseeds.analysis.report.ground_truth import ground_truth_table, group_metrics
from saeseeds.analysis.report.markdown import FIGURE_TITLES, matching_line
from saeseeds.analysis.report.markdown_sections import OVERVIEW_NOTE, overview_table

PAGE_FORMAT = "saeseeds.report_page/1"
FULL_CONTEXT_ROWS = 1000
"""Per group, the features (highest best-match cosine first) whose card shows every context."""
_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028",
                 "\u2029": "\\u2029"}  # fmt: skip


def script_json(data: Any) -> str:
    """Strict JSON that is inert inside a ``<script>`` element: no ``</script>``, no ``<!--``, no
    entity, no JavaScript line terminator, whatever the strings hold."""
    text = json.dumps(json_safe(data), allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    return re.sub("[<>&\u2028\u2029]", lambda found: _JSON_ESCAPES[found.group()], text)


def _rounded(values: np.ndarray | None, digits: int = 3) -> list[float | None] | None:
    if values is None:
        return None
    return [round(float(v), digits) if np.isfinite(v) else None for v in values]


def _significant(values: np.ndarray, digits: int = 4) -> list[float]:
    return [float(f"{float(v):.{digits}g}") for v in values]


def _contexts(table: FeatureTable, per_feature: int, full_rows: int) -> tuple[list, list[int]]:
    """Per seed {latent: contexts} for every version of every feature, and the 0/1 flags of the
    features whose versions carry all their contexts (the others carry their strongest)."""
    ranking = np.argsort(-table.best_match, kind="stable")
    full = np.zeros(table.n_features, dtype=np.int64)
    full[ranking[:full_rows]] = 1
    by_seed: list[dict[str, list]] = [{} for _ in table.seeds]
    if not table.has_contexts or per_feature < 1:
        return by_seed, full.tolist()
    latents = table.versions.latents  # [S, n_features]
    for feature in range(table.n_features):
        limit = per_feature if full[feature] else 1
        for index, seed in enumerate(table.seeds):
            latent = int(latents[index, feature])
            if len(by_seed[index].get(str(latent), [])) >= limit:
                continue
            contexts = table.contexts(seed, latent, limit)
            if contexts:
                by_seed[index][str(latent)] = [context_parts(context) for context in contexts]
    return by_seed, full.tolist()


def group_data(table: FeatureTable, per_feature: int, full_rows: int) -> dict[str, Any]:
    """One group's table in the page's columnar form (see page.js for how each field is read)."""
    report, seeds = table.report, table.seeds
    upper = np.triu_indices(len(seeds), k=1)
    contexts, full = _contexts(table, per_feature, full_rows)
    duplicate = table.near_duplicate()
    beyond = table.beyond_geometry
    one_to_one = [table.one_to_one(seed) for seed in table.other_seeds]
    run = table.runs[0]
    return {
        "label": table.label,
        "role": report.extras.get("role", "condition"),
        "matching": report.matching,
        "seeds": seeds,
        "runs": [str(r.path) for r in table.runs],
        "n": table.n_features,
        "description": f"n_features={run.n_features}, d_in={run.d_in}, k={run.cfg.get('k')}, "
        f"hook {run.hook_name}, model {run.cfg.get('model_name')}",
        "latents": table.versions.latents.tolist(),
        "cosines": _rounded(table.versions.cosines[:, upper[0], upper[1]].ravel()),
        "frequency": [_significant(r.firing_frequency) for r in table.runs],
        "best": _rounded(table.best_match),
        "reappearance": _rounded(table.reappearance),
        "stability": table.stability() if table.reappearance is not None else None,
        "epsilon": table.epsilon,
        "beyond": None if beyond is None else beyond.astype(int).tolist(),
        "beyond_threshold": table.beyond_geometry_threshold,
        "nearest": _rounded(table.nearest_neighbour),
        "duplicate": None if duplicate is None else duplicate.astype(int).tolist(),
        "duplicate_threshold": table.duplicate_threshold,
        "one_to_one": None
        if any(entry is None for entry in one_to_one)
        else [
            {"latents": partner.tolist(), "cosines": _rounded(cosine)}
            for partner, cosine in one_to_one  # type: ignore[misc]
        ],
        "has_text": table.has_contexts,
        "has_contexts": table.has_contexts and per_feature > 0,
        "per_feature": per_feature,
        "full": full,
        "n_full": int(sum(full)),
        "contexts": contexts,
    }


def page_tables(reports: list[GroupReport]) -> list[FeatureTable]:
    """The page's groups: conditions first (the first is shown on opening), then controls."""
    tables = feature_tables(reports)
    return sorted(tables, key=lambda table: table.report.extras.get("role") == "control")


def page_data(tables: list[FeatureTable], per_feature: int, full_rows: int) -> dict[str, Any]:
    return {
        "format": PAGE_FORMAT,
        "groups": [group_data(table, per_feature, full_rows) for table in tables],
    }


def inline_markdown(text: str) -> str:
    """The verdict's Markdown (``**bold**``, ``code``) as HTML, everything else escaped."""
    escaped = html.escape(text, quote=False)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)


def _image(path: Path, title: str) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{encoded}">'
        f"<figcaption>{html.escape(title)}</figcaption></figure>"
    )


def _figures(tables: list[FeatureTable], figures: dict[str, dict[str, Path]]) -> str:
    """Each group's figures in a block the script shows with its group; then the shared ones."""
    blocks = []
    for index, table in enumerate(tables):
        images = [
            _image(path, FIGURE_TITLES.get(name, name))
            for name, path in figures.get(table.label, {}).items()
        ]
        blocks.append(f'<div class="figures" data-group="{index}" hidden>{"".join(images)}</div>')
    shared = [
        _image(path, FIGURE_TITLES.get(name, name)) for name, path in figures.get("all", {}).items()
    ]
    if shared:
        blocks.append(f'<div class="figures shared">{"".join(shared)}</div>')
    return "".join(blocks)


def over_training_section(reports: list[GroupReport]) -> str:
    """The stability-over-training table of report.md, as HTML; empty without a row."""
    header, rows, sentences = overview_table(reports)
    if not rows:
        return ""
    items = "".join(f"<li>{inline_markdown(sentence)}</li>" for sentence in sentences)
    return (
        f'<section id="over-training"><h2>Stability over training</h2>'
        f'<p class="note">{html.escape(OVERVIEW_NOTE)} Each group\'s figure is under '
        f'"Figures of this group".</p>{html_table(header, rows, "over-training")}'
        f"<ul>{items}</ul></section>"
    )


def ground_truth_section(reports: list[GroupReport]) -> str:
    """report.md's ground-truth table (synthetic data), as HTML; empty without a row."""
    header, rows = ground_truth_table(group_metrics(reports))
    if not rows:
        return ""
    return (
        f'<section id="ground-truth"><h2>Ground-truth recovery</h2>'
        f'<p class="note">{html.escape(GROUND_TRUTH_NOTE)}</p>'
        f"{html_table(header, rows, 'ground-truth')}</section>"
    )


def html_table(header: list[str], rows: list[list[str]], css_class: str) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f'<table class="{css_class}"><tr>{head}</tr>{body}</table>'


def _asset(name: str) -> str:
    return resources.files("saeseeds.analysis.report").joinpath(name).read_text(encoding="utf-8")


def render_page(
    roots: list[Path],
    reports: list[GroupReport],
    figures: dict[str, dict[str, Path]],
    per_feature: int,
    full_rows: int = FULL_CONTEXT_ROWS,
) -> str:
    """The whole report.html."""
    script, style = _asset("page.js"), _asset("page.css")
    script_hash = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode()
    policy = (
        f"default-src 'none'; script-src 'sha256-{script_hash}'; style-src 'unsafe-inline'; "
        "img-src data:"
    )
    conditions = [r for r in reports if r.extras.get("role") != "control"]
    verdicts = "".join(f"<li>{inline_markdown(verdict(report))}</li>" for report in conditions)
    inputs = ", ".join(f"<code>{html.escape(str(root))}</code>" for root in roots)
    tables = page_tables(reports)
    data = script_json(page_data(tables, per_feature, full_rows))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{policy}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Seed-stability report</title>
<style>{style}</style>
</head>
<body>
<header><h1>Seed-stability report</h1><p class="inputs">Inputs: {inputs}</p></header>
<section id="verdict"><h2>Verdict</h2><ul>{verdicts}</ul>
<p>{inline_markdown(matching_line(reports))}</p>
<p class="note">Each condition is judged against its strongest control: SAEs trained with the same
config and seeds on Gaussian data with the activations' mean and covariance, then on a randomly
initialised model, and only last against random unit-norm dictionaries. The numbers, tables and
figures are in report.md, summary.json and features.csv beside this page.</p></section>
{over_training_section(reports)}
{ground_truth_section(reports)}
<section id="features"><h2>Features across seeds</h2>
<div class="bar"><label>Group <select id="group"></select></label>
<span id="group-description"></span></div>
<div class="bar filters">
<label title="Best-match cosine above the geometry control's 95th percentile"><input type="checkbox"
 id="filter-beyond"> reproduced beyond geometry</label>
<label>fires on <select id="filter-frequency">
<option value="-1">any share of tokens</option><option value="0">&gt; 0 (live)</option>
<option value="0.0001">&gt; 0.01% of tokens</option>
<option value="0.001">&gt; 0.1% of tokens</option>
<option value="0.01">&gt; 1% of tokens</option></select></label>
<label>stability <select id="filter-stability"><option value="any">any</option>
<option value="stable">stable</option><option value="partial">partial</option>
<option value="unstable">unstable</option></select></label>
<label>near-duplicates <select id="filter-duplicates"><option value="any">shown</option>
<option value="hide">hidden</option><option value="only">only</option></select></label>
<input type="search" id="search" placeholder="search the contexts" aria-label="search the contexts">
<span id="count" role="status"></span></div>
<div id="table" role="grid"><div id="table-header" class="row header" role="row"></div>
<div id="viewport"><div id="spacer"></div></div></div>
<p id="table-note" class="note"></p>
<details id="figures"><summary>Figures of this group</summary>{_figures(tables, figures)}</details>
</section>
<div id="card" role="dialog" aria-modal="true" hidden><div class="card-frame">
<div class="card-head"><h3 id="card-title"></h3><span class="card-nav">
<button type="button" id="card-previous" title="previous feature (←)">←</button>
<button type="button" id="card-next" title="next feature (→)">→</button>
<button type="button" id="card-close" title="close (Esc)">close</button></span></div>
<div id="card-body"></div></div></div>
<script type="application/json" id="page-data">{data}</script>
<script>{script}</script>
</body>
</html>
"""
