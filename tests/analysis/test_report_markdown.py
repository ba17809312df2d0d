"""report.md rendered as a Markdown viewer renders it: contexts that hold markup stay text, and
the firing token stays visible, for folders written with the earlier ``<<``/``>>`` marker too."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.analysis.run_folders import random_directions, write_run_folder
from tests.helpers import run_app

MARKUP = '<script>alert(1)</script> <img src=x onerror="alert(2)"> *not bold* [link](x) |'


class Rendered(HTMLParser):
    """The tags and the visible text of an HTML fragment."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def render(markdown: str) -> Rendered:
    """CommonMark with GitHub's tables and raw HTML passed through, as most viewers do."""
    markdown_it = pytest.importorskip("markdown_it", reason="markdown-it-py is a dev dependency")
    parser = Rendered()
    parser.feed(
        markdown_it.MarkdownIt("commonmark", {"html": True}).enable("table").render(markdown)
    )
    return parser


def test_contexts_in_report_md_render_as_text_with_the_token_visible(tmp_path: Path):
    base = random_directions(8, 8, seed=0)
    examples = {
        feature: [
            {
                "activation": 3.0,
                "text": f"{MARKUP} the <<ing{feature}>> word",
                "token": f"ing{feature}",
            }
        ]
        for feature in range(8)
    }
    for seed in (1, 2):
        write_run_folder(
            tmp_path / "sweep" / f"seed={seed}", base, seed=seed, top_examples=examples
        )
    result = run_app(
        "analyze.py", f"sweep_dir={tmp_path / 'sweep'}", f"hydra.run.dir={tmp_path / 'report'}",
        "logger=none", "report.figures=false", "baseline.n_samples=3", "bootstrap.n_samples=50",
        "progress=false", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]

    rendered = render((tmp_path / "report" / "report.md").read_text())
    assert "script" not in rendered.tags and "img" not in rendered.tags
    assert "a" not in rendered.tags and "em" not in rendered.tags
    text = "".join(rendered.text)
    assert MARKUP + " the ⟦ing" in text  # the markup as text, the marked token visible
    assert (tmp_path / "report" / "report.html").is_file()
