"""gunicorn with 2 workers in each worker class, under a bounded load.

Per case: ~10 s of wrk load (5 s on a PostgreSQL view, 5 s on a MariaDB
view) with server sessions sampled throughout.  Pooled runs must have no
failed request, never more than processes x (pool_size + max_overflow)
sessions per database, and a clean log; the same cases under stock Django
(``DJPOOL_DISABLE=1``) give the baseline of the requests/second table.
"""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration import BOTH_DATABASES, MAX_OVERFLOW, POOL_SIZE
from tests.integration.conftest import (
    LOAD_CONNECTIONS,
    Load,
    Monitor,
    SessionSampler,
    get,
    http_ready,
    record,
    require_module,
    require_tool,
    run_wrk,
    serve,
    server_env,
)

pytestmark = BOTH_DATABASES

WORKERS = 2
CASES = {
    "sync": ["--worker-class", "sync"],
    "gthread": ["--worker-class", "gthread", "--threads", "4"],
    "gevent": ["--worker-class", "gevent", "--worker-connections", "100"],
    "sync-preload": ["--worker-class", "sync", "--preload"],
}
VIEWS = {"default": "postgres", "mysql": "mariadb"}


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


def sessions_seen(base: str, alias: str, requests: int = 40) -> set[tuple[int, int]]:
    """(worker pid, server session id) pairs of a few requests."""
    seen = set()
    for _ in range(requests):
        status, body = get(f"{base}/session/{alias}/")
        assert status == 200, body
        answer = json.loads(body)
        seen.add((answer["pid"], answer["session"]))
    return seen


@dataclass
class Run:
    """What one gunicorn case showed."""

    loads: dict[str, Load]
    peak: dict[str, int]
    workers: dict[str, set[tuple[int, int]]]
    alive: dict[str, set[int]]
    master: dict[str, int]
    alarms: list[str]
    log: str


def run_case(
    case: str, mode: str, aliases: list[str], tmp_path: Path, port: int
) -> Run:
    """Serve *case* with djpoolapp or stock Django; load each view in turn
    while sampling server sessions (in both modes, so that both pay the
    same sampling cost); then look at who served what."""
    base = f"http://127.0.0.1:{port}"
    env = server_env(**({"DJPOOL_DISABLE": "1"} if mode == "stock" else {}))
    master_file = tmp_path / "master.json"
    if "preload" in case:
        env["DJPOOL_IT_MASTER_FILE"] = str(master_file)
    sampler = SessionSampler(aliases)
    with serve(
        gunicorn(case, port), tmp_path / "gunicorn.log", env=env,
        ready=http_ready(f"{base}/ping/"),
    ) as server:  # fmt: skip
        loads = {}
        with sampler.running():
            for alias in aliases:
                loads[alias] = run_wrk(f"{base}/orm/{alias}/")
        workers = {alias: sessions_seen(base, alias) for alias in aliases}
        alive = {}
        for alias in aliases:
            monitor = Monitor(alias)
            try:
                alive[alias] = monitor.session_ids()
            finally:
                monitor.close()
        alarms = server.alarms()
    for alias, load in loads.items():
        record("gunicorn", case, VIEWS[alias], mode, load, sampler.peak[alias])
    return Run(
        loads=loads,
        peak=dict(sampler.peak),
        workers=workers,
        alive=alive,
        master=json.loads(master_file.read_text()) if master_file.exists() else {},
        alarms=alarms,
        log=server.log,
    )


@pytest.mark.parametrize("case", list(CASES))
def test_gunicorn__load_without_failures_within_pool_bounds(
    case, seeded, tmp_path, port
):
    run = run_case(case, "djpoolapp", seeded, tmp_path, port)
    for load in run.loads.values():
        assert load.requests > 0, load.output
        assert load.failed == 0, load.output
    # Every process that uses the database (the workers, and a preloading
    # master that queried before the fork) has at most one pool per alias.
    processes = WORKERS + (1 if run.master else 0)
    for alias in seeded:
        assert 1 <= run.peak[alias] <= processes * (POOL_SIZE + MAX_OVERFLOW), run.peak
    assert run.alarms == [], run.log
    if run.master:
        for alias in seeded:
            pids = {pid for pid, _ in run.workers[alias]}
            sessions = {session for _, session in run.workers[alias]}
            assert run.master["pid"] not in pids
            assert run.master[alias] not in sessions, (alias, run.master, run.workers)
            # The children never closed the master's session either.
            assert run.master[alias] in run.alive[alias], (alias, run.master, run.alive)
        forked = [
            line for line in run.log.splitlines()
            if "forked: dropped 2 inherited pooled connection(s)" in line
        ]  # fmt: skip
        assert len(forked) >= WORKERS, run.log


@pytest.mark.parametrize("case", list(CASES))
def test_gunicorn__stock_django_baseline(case, seeded, tmp_path, port):
    """The same load with DJPOOL_DISABLE=1: the table's other column."""
    run = run_case(case, "stock", seeded, tmp_path, port)
    for load in run.loads.values():
        assert load.requests > 0, load.output
        assert load.failed == 0, load.output
    assert run.alarms == [], run.log


def test_gunicorn__gevent_workers_yield_to_the_hub_while_querying(
    seeded, tmp_path, port
):
    """psycopg (3.1.14+ by itself, psycopg2 through psycogreen) lets a gevent
    worker run other requests while a query waits; mysqlclient is blocking C
    and holds the whole worker (documented in the README's deployment notes).
    Seen from the server: how many sleeping queries run at once."""
    base = f"http://127.0.0.1:{port}"
    with serve(
        gunicorn("gevent", port), tmp_path / "gunicorn.log", env=server_env(),
        ready=http_ready(f"{base}/ping/"),
    ) as server:  # fmt: skip
        peaks = {}
        for alias in seeded:
            monitor = Monitor(alias)
            try:
                peaks[alias] = _peak_sleepers(monitor, f"{base}/sleep/{alias}/")
            finally:
                monitor.close()
        alarms = server.alarms()
        log = server.log
    assert alarms == [], log
    bound = WORKERS * (POOL_SIZE + MAX_OVERFLOW)
    assert WORKERS < peaks["default"] <= bound, peaks
    if "mysql" in peaks:
        # One query at a time per worker: the hub is blocked meanwhile.
        assert 1 <= peaks["mysql"] <= WORKERS, peaks


SLEEPERS_SQL = {
    "postgresql": "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
    "AND state = 'active' AND query LIKE 'SELECT pg_sleep%%'",
    "mysql": "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = %s "
    "AND INFO LIKE 'SELECT SLEEP%%'",
}


def _peak_sleepers(monitor: Monitor, url: str) -> int:
    """Run 2 s of load on a sleeping view; the peak of concurrent sleeps."""
    result: list[Load] = []
    loader = threading.Thread(
        target=lambda: result.append(
            run_wrk(url, seconds=2, connections=LOAD_CONNECTIONS * 2)
        )
    )
    loader.start()
    peak = 0
    try:
        while loader.is_alive():
            cursor = monitor.conn.cursor()
            cursor.execute(SLEEPERS_SQL[monitor.vendor], [monitor.database])
            peak = max(peak, int(cursor.fetchone()[0]))
            cursor.close()
            loader.join(0.02)
    finally:
        loader.join(60)
    (load,) = result
    assert load.failed == 0, load.output
    return peak
