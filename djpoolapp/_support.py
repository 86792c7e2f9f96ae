"""The supported Django and Python versions: the one list.

Everything that states which versions djpoolapp supports comes from here or
is tested against it (tests/unit/test_support.py):

- ``noxfile.py`` builds its ``matrix`` and ``corners`` sessions from
  :data:`DJANGO` and :data:`CORNERS` (it loads this file by path, without
  importing Django or djpoolapp);
- ``setup.cfg``'s ``Framework :: Django :: X`` and ``Programming Language ::
  Python :: X`` classifiers, ``python_requires`` and the Django requirement;
- the README's compatibility table (:func:`readme_rows`).

Standard library only: nox reads it before any environment exists.
"""

from __future__ import annotations

from typing import Any

#: Python feature releases djpoolapp is tested on (oldest first).
PYTHONS: tuple[str, ...] = ("3.10", "3.11", "3.12", "3.13")

#: Django feature release -> the Pythons of :data:`PYTHONS` it supports, and
#: the words the README puts after its number ("" for none).  Oldest first.
DJANGO: dict[str, dict[str, Any]] = {
    # Upstream support ended in April 2026: kept while it costs nothing.
    "4.2": {
        "pythons": ("3.10", "3.11", "3.12"),
        "note": "LTS (end of life, best effort)",
    },
    "5.2": {"pythons": ("3.10", "3.11", "3.12", "3.13"), "note": "LTS"},
    "6.0": {"pythons": ("3.12", "3.13"), "note": ""},
    "6.1": {"pythons": ("3.12", "3.13"), "note": ""},
}

#: The PostgreSQL drivers each matrix cell is run with (nox's names).
DRIVERS: tuple[str, ...] = ("psycopg3", "psycopg2")

#: (python, django, driver) of the oldest and the newest cell: what CI runs.
CORNERS: list[tuple[str, str, str]] = [
    (PYTHONS[0], next(iter(DJANGO)), "psycopg2"),
    (PYTHONS[-1], list(DJANGO)[-1], "psycopg3"),
]


def pythons(django: str) -> tuple[str, ...]:
    """The Pythons a Django feature release (``"6.1"``) is tested on."""
    return tuple(DJANGO[django]["pythons"])


def matrix() -> list[tuple[str, str, str]]:
    """Every (python, django, driver) cell, oldest Django first."""
    return [
        (python, django, driver)
        for django in DJANGO
        for python in pythons(django)
        for driver in DRIVERS
    ]


def readme_rows() -> dict[str, str]:
    """The Django and Python rows of the README's compatibility table."""
    releases = ", ".join(
        f"{django} {note}" if note else django
        for django, note in ((d, DJANGO[d]["note"]) for d in DJANGO)
    )
    newer = {
        django: pythons(django)[0]
        for django in DJANGO
        if pythons(django)[0] != PYTHONS[0]
    }
    by_minimum: dict[str, list[str]] = {}
    for django, minimum in newer.items():
        by_minimum.setdefault(minimum, []).append(django)
    limits = "; ".join(
        f"Django {', '.join(djangos)}: {minimum}+"
        for minimum, djangos in by_minimum.items()
    )
    python = f"{PYTHONS[0]} – {PYTHONS[-1]}" + (f" ({limits})" if limits else "")
    return {"Django": releases, "Python": python}
