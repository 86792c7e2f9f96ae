"""README.rst and the docs/ pages say what the code does.

The options table is the OPTIONS table; every Python block runs; every
console command names real extras and nox sessions.  The pages are read from
the files, so a page another part of the project adds is covered too.
"""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

from djpoolapp import conf

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.rst").read_text()
#: README.rst and every page of the documentation site, by file name.
PAGES = {
    path.relative_to(ROOT).as_posix(): path.read_text()
    for path in [ROOT / "README.rst", *sorted((ROOT / "docs").glob("*.rst"))]
}
OPTIONS_PAGE = PAGES["docs/options.rst"]


def options_table() -> dict[str, str]:
    """Option name -> default, as the README's list-table states them."""
    table = OPTIONS_PAGE.split("   * - Option", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"   \* - ``(\w+)``\n     - ``(.+?)``", table)
    return dict(rows)


def test_readme_options_table__lists_every_option_with_its_default():
    table = options_table()
    assert set(table) == {*conf.OPTIONS, "aliases"}
    for name, option in conf.OPTIONS.items():
        assert ast.literal_eval(table[name]) == option.default, name


def test_readme_options_table__meanings_come_from_the_help_texts():
    for name, option in conf.OPTIONS.items():
        first_words = " ".join(option.help.split()[:4]).replace(
            "djpoolapp.PoolTimeout", ""
        )
        row = OPTIONS_PAGE.split(f"   * - ``{name}``", 1)[1].split("   * - ", 1)[0]
        assert " ".join(row.split())  # the row exists
        assert first_words.split()[0] in row, (name, first_words)


def code_blocks(language: str, text: str | None = None) -> list[str]:
    """The ``.. code-block:: <language>`` bodies of *text* (default: README
    and every docs page), dedented (also when the directive itself is
    indented, e.g. inside a list item)."""
    if text is None:
        return [
            block for page in PAGES.values() for block in code_blocks(language, page)
        ]
    blocks = []
    lines = text.split("\n")
    for number, line in enumerate(lines):
        if line.strip() != f".. code-block:: {language}":
            continue
        indent = len(line) - len(line.lstrip())
        body = []
        for following in lines[number + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            body.append(following)
        blocks.append(textwrap.dedent("\n".join(body)).strip())
    return blocks


def test_readme_python_blocks__all_run():
    """Every Python snippet runs as shown (settings snippets are validated)."""
    blocks = code_blocks("python")
    assert len(blocks) >= 5
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, "README.rst", "exec"), namespace)  # noqa: S102
        if "DJPOOL_OPTIONS" in namespace:
            options = namespace["DJPOOL_OPTIONS"]
            aliases = list(options.get("aliases", {})) + ["default"]
            assert conf.problems(options, aliases) == [], block
        if "INSTALLED_APPS" in namespace:
            assert "djpoolapp" in namespace["INSTALLED_APPS"]


def test_readme_console_blocks__name_real_extras_and_sessions():
    root = Path(__file__).resolve().parents[2]
    setup_cfg = (root / "setup.cfg").read_text()
    noxfile = (root / "noxfile.py").read_text()
    ci = (root / ".ci" / "run").read_text()
    commands = [
        line[2:]
        for block in code_blocks("console")
        for line in block.splitlines()
        if line.startswith("$ ")
    ]
    for command in commands:
        for extras in re.findall(r"(?:djpoolapp|\.)\[([\w,-]+)\]", command):
            for extra in extras.split(","):
                assert f"\n{extra} =" in setup_cfg, command
        for session in re.findall(r"nox -s ([\w-]+)", command):
            assert f'"{session}"' in noxfile or f"def {session}(" in noxfile, command
    test_command = "python3 -m pip install nox && python3 -m nox"
    assert test_command in commands
    assert f"\n{test_command}\n" in ci  # CI runs exactly the README's command
