"""The supported versions are stated once (djpoolapp/_support.py): setup.cfg,
the nox matrix and the README's compatibility table agree with that list."""

from __future__ import annotations

import ast
import configparser
import importlib.util
import os
import re
import runpy
from pathlib import Path

from djpoolapp import _support

ROOT = Path(__file__).resolve().parents[2]


def setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return parser


def classifiers(prefix: str) -> list[str]:
    lines = setup_cfg()["metadata"]["classifiers"].strip().splitlines()
    return [
        line.strip()[len(prefix) :] for line in lines if line.strip().startswith(prefix)
    ]


def test_setup_cfg_classifiers__name_every_supported_django_and_python():
    assert classifiers("Framework :: Django :: ") == list(_support.DJANGO)
    versions = [
        v for v in classifiers("Programming Language :: Python :: ") if "." in v
    ]
    assert versions == list(_support.PYTHONS)


def test_setup_cfg_requirements__start_at_the_oldest_supported_release():
    options = setup_cfg()["options"]
    assert options["python_requires"].strip() == f">={_support.PYTHONS[0]}"
    requires = options["install_requires"].split()
    assert f"django>={next(iter(_support.DJANGO))}" in requires


def test_support_list__each_django_runs_on_listed_pythons_only():
    for django in _support.DJANGO:
        assert _support.pythons(django), django
        assert set(_support.pythons(django)) <= set(_support.PYTHONS), django
    assert set(_support.CORNERS) <= set(_support.matrix())
    assert _support.CORNERS[-1] == (_support.PYTHONS[-1], "6.1", "psycopg3")


def test_noxfile_matrix__is_the_support_list(monkeypatch):
    source = (ROOT / "noxfile.py").read_text()
    assignments = {
        node.targets[0].id: ast.get_source_segment(source, node.value)
        for node in ast.parse(source).body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
    }
    for name in ("DJANGO_PYTHONS", "MATRIX", "CORNERS"):
        assert "SUPPORT[" in assignments[name], (name, assignments[name])
    if importlib.util.find_spec("nox") is None:
        return  # nox's own test environments do not install nox
    # The noxfile puts pyenv's interpreters on PATH when it is loaded.
    monkeypatch.setenv("PATH", os.environ.get("PATH", ""))
    noxfile = runpy.run_path(str(ROOT / "noxfile.py"))
    assert noxfile["MATRIX"] == _support.matrix()
    assert noxfile["CORNERS"] == _support.CORNERS
    assert list(noxfile["DJANGO_PYTHONS"]) == list(_support.DJANGO)
    assert set(noxfile["DRIVER_EXTRAS"]) == set(_support.DRIVERS)


def test_readme_compatibility_table__rows_come_from_the_support_list():
    readme = (ROOT / "README.rst").read_text()
    table = readme.split("Compatibility\n=============\n", 1)[1].split("\n\n", 1)[0]
    rows = dict(
        re.match(r"(\S+(?: \S+)*)\s{2,}(.+)", line).groups()  # type: ignore[union-attr]
        for line in table.splitlines()
        if re.match(r"(Django|Python)\s", line)
    )
    assert rows == _support.readme_rows()
    assert "6.1" in rows["Django"] and "end of life, best effort" in rows["Django"]
