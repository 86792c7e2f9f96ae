"""gunicorn with 2 workers in each worker class, under a bounded load.

Per case: wrk load on a PostgreSQL view, then on a MariaDB view
(``LOAD_SECONDS`` each) with server sessions sampled throughout.  Pooled runs must have no
failed request, never more than processes x (pool_size + max_overflow)
sessions per database, and a clean log; the same cases under stock Django
(``DJPOOL_DISABLE=1``) give the baseline of the requests/second table.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.integration import BOTH_DATABASES, MAX_OVERFLOW, POOL_SIZE
from tests.integration.conftest import require_module, require_tool
from tests.integration.servers import (
    Run,
    assert_master_sessions_untouched,
    assert_served,
    base_url,
    http_server,
    peak_sleepers_per_alias,
    run_forking_case,
)

pytestmark = BOTH_DATABASES

WORKERS = 2
CASES = {
    "sync": ["--worker-class", "sync"],
    "gthread": ["--worker-class", "gthread", "--threads", "4"],
    "gevent": ["--worker-class", "gevent", "--worker-connections", "100"],
    "sync-preload": ["--worker-class", "sync", "--preload"],
}


def gunicorn(case: str, port: int) -> list[str]:
    require_tool("wrk")
    require_module("gunicorn")
    if case == "gevent":
        require_module("gevent")
        require_module("psycogreen")
    return [
        sys.executable, "-m", "gunicorn", "tests.integration.wsgi:application",
        "--config", "python:tests.integration.gunicorn_conf",
        "--bind", f"127.0.0.1:{port}", "--workers", str(WORKERS),
        "--timeout", "60", "--graceful-timeout", "5", "--log-level", "info",
        *CASES[case],
    ]  # fmt: skip


def run_case(
    case: str, mode: str, aliases: list[str], tmp_path: Path, port: int
) -> Run:
    return run_forking_case(
        "gunicorn", gunicorn(case, port), case, mode, aliases, tmp_path, port,
        master_queries="preload" in case,
    )  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_gunicorn__load_without_failures_within_pool_bounds(
    case, seeded, tmp_path, port
):
    run = run_case(case, "djpoolapp", seeded, tmp_path, port)
    # Every process that uses the database (the workers, and a preloading
    # master that queried before the fork) has at most one pool per alias.
    processes = WORKERS + (1 if run.master else 0)
    assert_served(run, seeded, processes * (POOL_SIZE + MAX_OVERFLOW))
    if run.master:
        # No worker used the master's session, nor closed it.
        assert_master_sessions_untouched(run, seeded)
        forked = [
            line for line in run.log.splitlines()
            if "forked: dropped 2 inherited pooled connection(s)" in line
        ]  # fmt: skip
        assert len(forked) >= WORKERS, run.log


@pytest.mark.stock_baseline
@pytest.mark.parametrize("case", list(CASES))
def test_gunicorn__stock_django_baseline(case, seeded, tmp_path, port):
    """The same load with DJPOOL_DISABLE=1: the table's other column."""
    run = run_case(case, "stock", seeded, tmp_path, port)
    assert_served(run, seeded)


def test_gunicorn__gevent_workers_yield_to_the_hub_while_querying(
    seeded, tmp_path, port
):
    """psycopg (3.1.14+ by itself, psycopg2 through psycogreen) lets a gevent
    worker run other requests while a query waits; mysqlclient is blocking C
    and holds the whole worker (documented in the README's deployment notes).
    Seen from the server: how many sleeping queries run at once."""
    with http_server(
        gunicorn("gevent", port), port, tmp_path / "gunicorn.log"
    ) as server:
        peaks = peak_sleepers_per_alias(base_url(port), seeded)
        alarms = server.alarms()
        log = server.log
    assert alarms == [], log
    bound = WORKERS * (POOL_SIZE + MAX_OVERFLOW)
    assert WORKERS < peaks["default"] <= bound, peaks
    if "mysql" in peaks:
        # One query at a time per worker: the hub is blocked meanwhile.
        assert 1 <= peaks["mysql"] <= WORKERS, peaks
