"""The documentation site (docs/) and the short README (issue 15, item 18).

The code blocks of every page are tested in tests/unit/test_readme.py; here:
the site builds with warnings as errors, every page is in a toctree, the
README keeps to what a newcomer needs and links only to pages that exist,
and every measured figure names the command that regenerates it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = (ROOT / "README.rst").read_text()
CHANGELOG = (ROOT / "CHANGELOG.rst").read_text()


def sections(text: str) -> list[str]:
    """Titles of the sections underlined (not overlined) with ``=``."""
    return [
        match.group(1)
        for match in re.finditer(r"(?<!=\n)^(\S.*)\n=+\n", text, re.M)
        if not match.group(1).startswith("=")
    ]


def test_readme__short_and_in_the_order_a_newcomer_needs():
    assert len(README.splitlines()) <= 220
    assert sections(README) == [
        "Compatibility",
        "Install",
        "Quick start",
        "Check that it works",
        "Try the example project",
        "Documentation",
        "Running the tests",
        "License",
    ]
    for command in ("djpool check", "djpool bench", 'pip install ".[psycopg,mysql]"'):
        assert command in README


def test_version__is_the_changelogs_newest_release_per_pep_440():
    """``djpoolapp.__version__`` (setup.cfg and docs/conf.py read it) is the
    newest CHANGELOG entry: a development release of it while "unreleased"."""
    from packaging.version import Version

    import djpoolapp

    newest = re.search(r"^(\d+\.\d+\.\d+)( \(unreleased\))?\n=+\n", CHANGELOG, re.M)
    assert newest, "no release heading in CHANGELOG.rst"
    version = Version(djpoolapp.__version__)
    assert str(version) == djpoolapp.__version__  # normalized PEP 440
    assert version.base_version == newest[1]
    assert version.is_devrelease is bool(newest[2])
    for page in [README, *(path.read_text() for path in DOCS.glob("*.rst"))]:
        for since in re.findall(r"[Ss]ince (\d+\.\d+\.\d+)", page):
            assert Version(since) <= Version(version.base_version), since
    assert "version = attr: djpoolapp.__version__" in (ROOT / "setup.cfg").read_text()


def test_readme__links_to_pages_that_exist():
    links = re.findall(r"<((?:docs/)?[\w/.-]+\.rst)>`_", README)
    assert len(links) >= 7
    for link in links:
        assert (ROOT / link).is_file(), link


def test_docs__every_page_is_in_a_toctree():
    index = (DOCS / "index.rst").read_text()
    entries = re.findall(r"^   ([\w*]+)$", index, re.M)
    pages = sorted(path.stem for path in DOCS.glob("*.rst") if path.stem != "index")
    for page in pages:
        assert any(
            entry == page or (entry.endswith("*") and page.startswith(entry[:-1]))
            for entry in entries
        ), f"docs/{page}.rst is in no toctree of docs/index.rst"


def test_docs__every_measured_figure_names_its_command_and_set_up():
    """A block of measured figures (p50/p95 columns) follows a paragraph
    naming the command that regenerates it and the machine it ran on."""
    pages = {"README.rst": README} | {
        f"docs/{path.name}": path.read_text() for path in DOCS.glob("*.rst")
    }
    found = 0
    for name, text in pages.items():
        for match in re.finditer(r"p50 ms", text):
            found += 1
            before = text[max(0, match.start() - 900) : match.start()]
            assert re.search(r"djpool bench|benchmarks/run\.py", before), name
            assert re.search(r"PostgreSQL \d+|MariaDB \d+", before), name
            assert re.search(r"Django \d", before), name
    assert found >= 1
    # The example page measures where it runs instead of quoting a figure.
    example = (DOCS / "example.rst").read_text()
    assert not re.search(r"\d+(\.\d+)? ?ms", example)


def test_docs__build_with_warnings_as_errors(tmp_path):
    """What ``nox -s docs`` runs in CI (needs the ``docs`` extra)."""
    sphinx_build = pytest.importorskip("sphinx.cmd.build")
    out = tmp_path / "html"
    status = sphinx_build.build_main(
        ["-W", "--keep-going", "-q", "-b", "html", "-d", str(tmp_path / "doctrees"),
         str(DOCS), str(out)]
    )  # fmt: skip
    assert status == 0
    for page in ("index", "installation", "options", "tools", "example"):
        assert (out / f"{page}.html").is_file()
    assert "Every process, as the server sees it" in (out / "tools.html").read_text()
