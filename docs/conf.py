"""Sphinx configuration of djpoolapp's documentation.

Build it with ``python3 -m nox -s docs`` (warnings are errors), or by hand::

    python -m pip install -e ".[docs]"
    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import djpoolapp  # noqa: E402  (after the path is set)

project = "djpoolapp"
author = "djpoolapp contributors"
copyright = "djpoolapp contributors"
release = djpoolapp.__version__
version = ".".join(release.split(".")[:2])

extensions = ["sphinx.ext.intersphinx"]
intersphinx_mapping = {}  # no network at build time: links are plain URLs
html_theme = "furo"
html_title = f"djpoolapp {release}"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
# Every page must be reachable from a toctree (checked with -W).
nitpicky = False
root_doc = "index"
