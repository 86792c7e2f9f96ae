"""Smoke test of ``benchmarks/instructions.py`` (instructions per request
under valgrind).

On MariaDB only, which keeps it out of the psycopg2 session's cut (its
verdict does not depend on the PostgreSQL driver): valgrind's start-up of
Python and Django makes each run take about 15 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.mysql]


def test_instructions__counts_a_request_under_valgrind(tmp_path):
    """``benchmarks/instructions.py``: instructions per request counted by
    valgrind (one tiny pair of runs side by side, about 20 s: no figure is
    asserted beyond "positive"; valgrind's count is the product)."""
    env = {
        **os.environ,
        "DJPOOL_BENCH_MYSQL_URL": settings.MYSQL_URL,
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    output = tmp_path / "instructions.json"
    done = subprocess.run(
        [
            sys.executable, str(ROOT / "benchmarks" / "instructions.py"),
            "--database", "mysql", "--queries", "1", "--mode", "transaction",
            "--requests", "5", "15", "--jobs", "2", "--json", str(output),
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(output.read_text())
    assert [(r["database"], r["queries"], r["mode"]) for r in rows] == [
        ("mysql", 1, "transaction")
    ]
    assert all(row["instructions"] > 0 for row in rows), rows
    assert "instructions/request" in done.stdout


def test_instructions__a_run_repeats_its_count(monkeypatch):
    """Two runs of the same worker count the same instructions (within
    0.01 %): the figures are differences of such counts, so a count that
    moved between runs would move them (with Python's random hash seed two
    runs of 5 requests differed by 5.6 million instructions, 0.26 %, and
    this smoke test once read -33,081 instructions per request)."""
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks import instructions
    finally:
        sys.path.remove(str(ROOT))
    monkeypatch.setenv("DJPOOL_BENCH_MYSQL_URL", settings.MYSQL_URL)
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    with ThreadPoolExecutor(max_workers=2) as executor:
        first, second = executor.map(
            lambda _: instructions._instructions("transaction", "mysql", 1, 5),
            range(2),
        )
    assert abs(first - second) <= first / 10_000, (first, second)
