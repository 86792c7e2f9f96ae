"""README.rst says what the code does: the options table is the OPTIONS table."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from djpoolapp import conf

README = (Path(__file__).resolve().parents[2] / "README.rst").read_text()


def options_table() -> dict[str, str]:
    """Option name -> default, as the README's list-table states them."""
    table = README.split("   * - Option", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"   \* - ``(\w+)``\n     - ``(.+?)``", table)
    return dict(rows)


def test_readme_options_table__lists_every_option_with_its_default():
    table = options_table()
    assert set(table) == {*conf.OPTIONS, "aliases"}
    for name, option in conf.OPTIONS.items():
        assert ast.literal_eval(table[name]) == option.default, name


def test_readme_options_table__meanings_come_from_the_help_texts():
    for name, option in conf.OPTIONS.items():
        first_words = " ".join(option.help.split()[:4]).replace("djpoolapp.PoolTimeout", "")
        row = README.split(f"   * - ``{name}``", 1)[1].split("   * - ", 1)[0]
        assert " ".join(row.split())  # the row exists
        assert first_words.split()[0] in row, (name, first_words)
