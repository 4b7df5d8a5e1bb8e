"""`hpsearch report`: one HTML file with every plot, and nothing in it that reaches the network."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from hpsearch.search.cli import main

SINGLE_PLOTS = ["history", "intermediate", "importances", "parallel", "slice"]


class _Page(HTMLParser):
    """Collects ids, the attributes of every tag, scripts and styles."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self.missing: list[str] = []
        self.table_rows = 0
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if attributes.get("id"):
            self.ids.add(str(attributes["id"]))
        if tag in ("script", "style") or (tag == "p" and attributes.get("class") == "missing"):
            self._in = tag
            if tag == "script":
                self.scripts.append("")
            elif tag == "style":
                self.styles.append("")
            else:
                self.missing.append("")
        if tag == "tr":
            self.table_rows += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == self._in:
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "script":
            self.scripts[-1] += data
        elif self._in == "style":
            self.styles[-1] += data
        elif self._in == "p":
            self.missing[-1] += data


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def _assert_offline(page: _Page) -> None:
    """Nothing the browser would fetch: no remote src/href, no script or stylesheet by URL."""
    for tag, attributes in page.tags:
        for name in ("src", "href", "data", "action", "poster", "srcset"):
            value = (attributes.get(name) or "").strip().lower()
            assert not value.startswith(("http:", "https:", "//", "ftp:")), (tag, name, value)
        if tag == "script":
            assert "src" not in attributes, attributes
        assert tag not in ("link", "iframe", "object", "embed", "base"), (tag, attributes)
    for style in page.styles:
        assert "url(" not in style and "@import" not in style
    # plotly.js itself is inlined exactly once; the figures only call it.
    library = [s for s in page.scripts if len(s) > 1_000_000]
    assert len(library) == 1 and "plotly" in library[0][:2000].lower()


def _report(url: str, study: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> _Page:
    output = tmp_path / "report.html"
    assert main(["report", "--study", study, "--storage", url, "--output", str(output)]) == 0
    assert "wrote" in capsys.readouterr().err
    return _parse(output)


@pytest.mark.slow
def test_report_has_every_plot_and_works_offline(
    tmp_path: Path, write_study: Any, study_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    path = write_study(
        n_trials=8,
        body="[training]\nsteps = 4\n",
        extra_space='[space.kind]\ntype = "categorical"\nchoices = ["a", "b"]\n',
    )
    assert main(["run", str(path), "--storage", url, "--workers", "1"]) == 0
    page = _report(url, study_name, tmp_path, capsys)
    for plot in SINGLE_PLOTS:
        assert plot in page.ids, plot  # the section
        assert f"plot-{plot}" in page.ids, plot  # the figure's div
    assert "pareto" not in page.ids  # one objective: no front
    assert not page.missing
    assert "trials-table" in page.ids
    assert page.table_rows == 1 + 8  # header + one row per trial
    _assert_offline(page)


@pytest.mark.slow
def test_report_of_two_objectives_has_the_pareto_front(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'mo.db'}"
    (tmp_path / "two.py").write_text(
        "def two(trial, params):\n    x = params['x']\n    return x ** 2, (x - 2) ** 2 + params['y']\n"
    )
    path = tmp_path / "mo.toml"
    path.write_text(
        '[study]\nname = "mo"\nobjective = "two.py:two"\ndirections = ["minimize", "minimize"]\n'
        'metrics = ["a", "b"]\n[budget]\nn_trials = 10\n[sampler]\nname = "random"\nseed = 0\n'
        '[pruner]\nname = "none"\n[space.x]\ntype = "float"\nlow = -1.0\nhigh = 3.0\n'
        '[space.y]\ntype = "float"\nlow = 0.0\nhigh = 1.0\n'
    )
    assert main(["run", str(path), "--storage", url, "--workers", "1"]) == 0
    page = _report(url, "mo", tmp_path, capsys)
    assert "plot-pareto" in page.ids
    for plot in ("history", "importances", "parallel", "slice"):
        assert {f"plot-{plot}-0", f"plot-{plot}-1"} <= page.ids, plot
    # Optuna does not let multi-objective trials report intermediate values: said, not drawn.
    assert "intermediate" in page.ids and "plot-intermediate" not in page.ids
    assert any("intermediate values" in text for text in page.missing)
    _assert_offline(page)


@pytest.mark.slow
def test_report_says_why_a_plot_is_missing(
    tmp_path: Path, write_study: Any, study_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'one.db'}"
    assert main(["run", str(write_study(n_trials=1)), "--storage", url, "--workers", "1"]) == 0
    page = _report(url, study_name, tmp_path, capsys)
    assert "plot-history" in page.ids
    assert "plot-importances" not in page.ids
    assert any("at least 2 completed trials; 1 so far" in text for text in page.missing)
    _assert_offline(page)


def test_report_of_an_unknown_study_is_one_line(
    tmp_path: Path, write_study: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    assert main(["create", str(write_study()), "--storage", url]) == 0
    capsys.readouterr()
    output = tmp_path / "report.html"
    assert main(["report", "--study", "nope", "--storage", url, "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'nope' not found" in err
    assert not output.exists()
