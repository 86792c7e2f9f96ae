"""Smoke test of the benchmark suite (``benchmarks/run.py --quick``).

Runs the real command, as a user would, for two strategies on PostgreSQL
and MariaDB, one thread and two, and checks what it produces: the
per-database tables with one row per strategy and thread count, the CSV and
JSON files, and the targets section.  No timing is asserted: on a shared
machine the figures mean nothing in a test.

The benchmark gets the suite's own servers through
``DJPOOL_BENCH_POSTGRES_URL`` / ``DJPOOL_BENCH_MYSQL_URL``, so it starts no
private pair of its own (``benchmarks/servers.py``); to the benchmark they
are external servers, which it never reconfigures (postgres-tls is skipped
when their TLS is off, see the last test).
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
from django.conf import settings

from tests import harness

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
            "--contention-threads", "0",
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAILED" not in done.stdout, done.stdout
    assert "private server" not in done.stdout, done.stdout  # the URLs given
    assert "postgres: external server" in done.stdout, done.stdout

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
    assert "Targets (issues 5 and 12)" in done.stdout
    assert "Contention:" not in done.stdout  # --contention-threads 0

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
    assert set(document) == {"meta", "summary", "targets", "runs", "contention"}
    assert document["contention"] == []
    assert len(document["runs"]) == 8
    assert all(run["error"] is None for run in document["runs"])
    if find_spec("matplotlib") is not None:
        assert (tmp_path / "benchmark.png").stat().st_size > 0


def test_run__contention_scenario_reports_fairness(tmp_path):
    """The contention scenario, scaled down (12 threads on pool_size=2, 20 ms
    per request, 2 s): the table and contention.csv have one row per
    database and strategy with the fairness columns; djpoolapp (FIFO
    hand-off) has no timeout and never more server connections than
    pool_size.  The figures themselves are not asserted beyond that."""
    env = {
        **os.environ,
        "DJPOOL_BENCH_POSTGRES_URL": settings.POSTGRES_URL,
        "DJPOOL_BENCH_MYSQL_URL": settings.MYSQL_URL,
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    done = subprocess.run(
        [
            sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick",
            "--requests", "20", "--warmup", "1", "--threads", "0",
            "--databases", "postgres,mysql", "--strategies", "djpoolapp",
            "--contention-threads", "12", "--contention-pool-size", "2",
            "--contention-seconds", "2", "--hold-ms", "20",
            "--contention-strategies", "barging,djpoolapp",
            "--output", str(tmp_path),
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAILED" not in done.stdout, done.stdout
    assert "Contention: 12 threads on pool_size=2, max_overflow=0" in done.stdout
    assert "contention djpoolapp timeouts == 0" in done.stdout

    with (tmp_path / "contention.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["database"], r["strategy"]) for r in rows] == [
        ("postgres", "barging"), ("postgres", "djpoolapp"),
        ("mysql", "barging"), ("mysql", "djpoolapp"),
    ]  # fmt: skip
    for row in rows:
        assert int(row["successes"]) > 0
        assert int(row["min_per_thread"]) <= int(row["max_per_thread"])
        assert int(row["server_conns"]) <= 2, row
        assert float(row["wait_p99_ms"]) >= float(row["wait_p50_ms"])
    fair = [row for row in rows if row["strategy"] == "djpoolapp"]
    assert all(row["timeouts"] == "0" and row["never_served"] == "0" for row in fair)

    document = json.loads((tmp_path / "benchmark.json").read_text())
    assert len(document["contention"]) == 4
    assert all(len(run["per_thread"]) == 12 for run in document["contention"])
    if find_spec("matplotlib") is not None:
        assert (tmp_path / "benchmark.png").stat().st_size > 0


def _show_ssl() -> str:
    from benchmarks import monitor

    conn = monitor.connect("postgres")
    try:
        with conn.cursor() as cursor:
            cursor.execute("SHOW ssl")
            return str(cursor.fetchone()[0])
    finally:
        conn.close()


@pytest.mark.postgres
def test_run__leaves_tls_of_an_external_server_alone(tmp_path, monkeypatch):
    """postgres-tls on a server the benchmark did not start (here the
    suite's, given by URL) with ssl off: skipped with a note saying why,
    and the server's ssl setting is unchanged (no ALTER SYSTEM, no reload)."""
    monkeypatch.setenv("DJPOOL_BENCH_POSTGRES_URL", settings.POSTGRES_URL)
    if _show_ssl() != "off":
        pytest.skip("TLS is already on in the suite's PostgreSQL server")
    env = {**os.environ}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    done = subprocess.run(
        [
            sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick",
            "--databases", "postgres-tls", "--strategies", "persistent",
            "--threads", "0", "--contention-threads", "0", "--no-plot",
            "--output", str(tmp_path),
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "postgres: external server" in done.stdout, done.stdout
    assert (
        "skipped postgres-tls: ssl is off in a server this benchmark did not start"
        in done.stdout
    ), done.stdout
    assert "0 runs" in done.stdout, done.stdout
    assert _show_ssl() == "off"


@pytest.mark.skipif(
    harness.postgres_bindir() is None, reason=harness.missing_message("postgres")
)
def test_run__private_server_gets_tls_and_is_removed(tmp_path):
    """``--servers private``: the benchmark starts its own PostgreSQL (only
    that one: no MariaDB database is asked for), turns TLS on in it, runs
    over TLS, and at the end no process of it and not its directory is
    left."""
    env = {**os.environ}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    done = subprocess.run(
        [
            sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick",
            "--requests", "20", "--warmup", "1", "--servers", "private",
            "--databases", "postgres-tls", "--strategies", "persistent",
            "--threads", "0", "--contention-threads", "0", "--no-plot",
            "--output", str(tmp_path),
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAILED" not in done.stdout, done.stdout
    found = re.search(r"postgres: private server \S+ in (\S+)/data", done.stdout)
    assert found, done.stdout
    assert "mysql:" not in done.stdout, done.stdout
    assert "enabled it in the private server" in done.stdout, done.stdout
    assert "-- private PostgreSQL" in done.stdout, done.stdout
    assert "TLS yes" in done.stdout, done.stdout
    root = Path(found.group(1)).parent  # the harness's own directory
    assert root.name.startswith(harness.DIR_PREFIX), root
    assert not root.exists()
    assert harness.processes_in(root) == []


def test_servers__auto_starts_private_ones_only_where_no_url_is_given(monkeypatch):
    """``--servers``: auto keeps a server named by URL (external), private
    ignores the URLs, machine starts none; a URL's password never reaches
    the output."""
    from benchmarks import servers

    monkeypatch.delenv("DJPOOL_BENCH_POSTGRES_URL", raising=False)
    monkeypatch.setenv("DJPOOL_BENCH_MYSQL_URL", "mysql://me:secret@127.0.0.1:1/x")
    names = ["mysql", "postgres"]
    assert servers.wanted_private("auto", names) == ["postgres"]
    assert servers.wanted_private("private", names) == names
    assert servers.wanted_private("machine", names) == []
    with servers.chosen_servers("machine", names) as choice:
        assert choice.private == {} and choice.external == names
        assert choice.describe() == [
            "mysql: external server mysql://me@127.0.0.1:1/x",
            "postgres: external server " + servers.MACHINE_URL["postgres"],
        ]
        assert choice.label("postgres") == "external"
