"""The README, CONTRIBUTING.md and the documentation site in docs/ hold together.

Fast checks without building the site (CI runs `mkdocs build --strict` for that): every relative
link resolves to a file and, where it names one, to a heading's anchor; every page is in the
nav; the README's two commands stay word for word; the README's study file is a valid one.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT

DOCS = ROOT / "docs"
# The README's two commands, word for word (the issue that moved the reference into docs/).
QUICK_START = "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/hpsearch run studies/digits.toml"
TEST_COMMAND = "bash .ci/run"
README_MAX_LINES = 300  # a newcomer's page: the reference belongs in docs/

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")


def _prose(text: str) -> list[str]:
    """The lines outside fenced code blocks (a `# comment` in a bash block is no heading)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.lstrip()):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def _plain(heading: str) -> str:
    return re.sub(r"[`*_]|<[^>]+>", "", heading).strip().lower()


def _anchors(page: Path) -> tuple[set[str], set[str]]:
    """The anchors of a page's headings on a code host (GitHub) and in MkDocs (Python-Markdown's
    toc): a link must work in both, so its anchor has to be in both sets."""
    headings = [
        _plain(m.group(1)) for line in _prose(page.read_text()) if (m := re.match(r"#+ (.+)", line))
    ]
    github = {re.sub(r"[^\w\- ]", "", h).replace(" ", "-") for h in headings}
    mkdocs = {re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", h).strip()) for h in headings}
    return github, mkdocs


def _broken_links(page: Path, root: Path = ROOT) -> list[str]:
    broken = []
    for line in _prose(page.read_text()):
        for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...: not ours to check
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(root)}: ({target})"
            if not dest.exists():
                broken.append(f"{where}: no file {dest.relative_to(root)}")
            elif anchor and dest.suffix == ".md":
                github, mkdocs = _anchors(dest)
                if anchor not in github or anchor not in mkdocs:
                    broken.append(f"{where}: no heading with the anchor #{anchor}")
    return broken


def _nav_pages(nav: list[object]) -> list[str]:
    pages: list[str] = []
    for entry in nav:
        values = entry.values() if isinstance(entry, dict) else [entry]
        for value in values:
            pages += _nav_pages(value) if isinstance(value, list) else [str(value)]
    return pages


PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted(DOCS.rglob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert not _broken_links(page)


def test_a_broken_link_or_anchor_is_found(tmp_path: Path) -> None:
    """The check above catches what it is for: a missing file, a missing anchor."""
    (tmp_path / "a.md").write_text(
        "# Title\n\n## Checking the storage: `db check`\n\n```bash\n# not a heading\n```\n\n"
        "[ok](b.md) [ok](#checking-the-storage-db-check) [bad](c.md) [bad](#not-a-heading) "
        "[ok](https://example.org) `[not a link](d.md)`\n"
    )
    (tmp_path / "b.md").write_text("# B\n")
    assert _broken_links(tmp_path / "a.md", tmp_path) == [
        "a.md: (c.md): no file c.md",
        "a.md: (#not-a-heading): no heading with the anchor #not-a-heading",
    ]


def test_every_page_is_in_the_nav() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["docs_dir"] == "docs"
    nav = _nav_pages(config["nav"])
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert sorted(nav) == pages
    assert len(nav) == len(set(nav)), "a page is in the nav twice"


def test_the_readme_keeps_its_two_commands_and_stays_short() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    assert any(QUICK_START in block.splitlines() for block in blocks)
    assert any(TEST_COMMAND in block.splitlines() for block in blocks)
    assert len(readme.splitlines()) <= README_MAX_LINES


def test_the_readme_study_file_is_valid(tmp_path: Path) -> None:
    from hpsearch.search import load_spec_file

    readme = (ROOT / "README.md").read_text()
    studies = [b for b in re.findall(r"```toml\n(.*?)```", readme, flags=re.S) if "[study]" in b]
    assert len(studies) == 1
    path = tmp_path / "study.toml"
    path.write_text(studies[0])
    spec = load_spec_file(str(path))
    assert spec.name == "digits-small"


def test_the_benchmark_suite_writes_its_block_into_the_docs() -> None:
    from bench.suite import BEGIN, BENCHMARKS_PAGE, END

    assert BENCHMARKS_PAGE == DOCS / "benchmarks.md"
    text = BENCHMARKS_PAGE.read_text()
    assert text.count(BEGIN) == text.count(END) == 1
    assert BEGIN not in (ROOT / "README.md").read_text()
