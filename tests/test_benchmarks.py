"""Smoke test of the benchmark suite (``benchmarks/run.py --quick``).

Runs the real command, as a user would, for two strategies on PostgreSQL
(without TLS: the suite would otherwise reconfigure the server) and
MariaDB, one thread and two, and checks what it produces: the per-database
tables with one row per strategy and thread count, the CSV and JSON files,
and the targets section.  No timing is asserted: on a shared machine the
figures mean nothing in a test.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.mysql]


def test_run__quick_writes_tables_and_files(tmp_path):
    env = {
        **os.environ,
        "DJPOOL_BENCH_POSTGRES_URL": settings.POSTGRES_URL,
        "DJPOOL_BENCH_MYSQL_URL": settings.MYSQL_URL,
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    done = subprocess.run(
        [
            sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick",
            "--requests", "40", "--warmup", "2",
            "--databases", "postgres,mysql", "--strategies", "persistent,djpoolapp",
            "--threads", "2", "--pool-size", "1", "--output", str(tmp_path),
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAILED" not in done.stdout, done.stdout

    for title in ("PostgreSQL, TCP without TLS", "MariaDB"):
        assert title in done.stdout
    table_rows = [
        line.split()[:2] if not line.startswith("2 (pool") else ["2", line.split()[3]]
        for line in done.stdout.splitlines()
        if line.startswith(("1 ", "2 (pool"))
    ]
    expected = [["1", "persistent"], ["1", "djpoolapp"], ["2", "persistent"],
                ["2", "djpoolapp"]] * 2  # fmt: skip
    assert table_rows == expected, done.stdout
    assert "Targets (issue 5)" in done.stdout

    with (tmp_path / "benchmark.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["database"], r["threads"], r["strategy"]) for r in rows] == [
        (database, threads, strategy)
        for database in ("postgres", "mysql")
        for threads in ("1", "2")
        for strategy in ("persistent", "djpoolapp")
    ]
    assert all(float(row["p50_ms"]) > 0 and float(row["rps"]) > 0 for row in rows)
    pooled = [r for r in rows if r["strategy"] == "djpoolapp" and r["threads"] == "2"]
    assert all(int(row["server_conns"]) <= 1 for row in pooled), pooled

    document = json.loads((tmp_path / "benchmark.json").read_text())
    assert set(document) == {"meta", "summary", "targets", "runs"}
    assert len(document["runs"]) == 8
    assert all(run["error"] is None for run in document["runs"])
    if find_spec("matplotlib") is not None:
        assert (tmp_path / "benchmark.png").stat().st_size > 0
