"""uWSGI (PyPI ``uwsgi``, built from source) with 2 worker processes.

- ``prefork``: uWSGI's default: the app is loaded in the master, which
  queries both databases (the master holds a PostgreSQL connection and has a
  MariaDB one idle in its pool), then forks the workers.  Every worker must
  drop what it inherited without a byte to the master's sessions;
- ``lazy-apps``: the app is loaded in each worker after the fork;
- ``threads``: ``--enable-threads --threads 4`` per worker;
- ``--harakiri``: a worker stuck in a long query is killed by the master;
  its server session ends and the other worker goes on serving.

Bounded load as in test_gunicorn.py: no failed request, at most workers x
(pool_size + max_overflow) server sessions per database (+1 for a master
that queried), a clean log; the same cases under stock Django
(``DJPOOL_DISABLE=1``) give the baseline of the requests/second table.
"""

from __future__ import annotations

import re
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.integration import BOTH_DATABASES, MAX_OVERFLOW, POOL_SIZE
from tests.integration.conftest import IN_CI, Monitor, get, require_tool, run_wrk
from tests.integration.servers import (
    Run,
    assert_master_sessions_untouched,
    assert_served,
    base_url,
    http_server,
    run_forking_case,
    sessions_seen,
)

pytestmark = BOTH_DATABASES

WORKERS = 2
CASES = {
    "prefork": [],
    "lazy-apps": ["--lazy-apps"],
    "threads": ["--enable-threads", "--threads", "4"],
}


def uwsgi_binary() -> str:
    """The ``uwsgi`` of this environment (pip installs it next to python)."""
    found = Path(sys.executable).parent / "uwsgi"
    if found.exists():
        return str(found)
    if shutil.which("uwsgi") is None:
        message = "uwsgi is not installed (setup.cfg extra 'test')"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return str(shutil.which("uwsgi"))


def uwsgi(port: int, *extra: str) -> list[str]:
    require_tool("wrk")
    return [
        uwsgi_binary(), "--http11-socket", f"127.0.0.1:{port}",
        "--module", "tests.integration.uwsgi_wsgi:application",
        # The interpreter uWSGI embeds is the base one: point it at this
        # environment's site-packages.
        "--home", sys.prefix,
        "--master", "--processes", str(WORKERS), "--die-on-term", "--need-app",
        "--disable-logging", "--listen", "64", "--buffer-size", "8192",
        *extra,
    ]  # fmt: skip


def run_case(
    case: str, mode: str, aliases: list[str], tmp_path: Path, port: int
) -> Run:
    return run_forking_case(
        "uwsgi", uwsgi(port, *CASES[case]), case, mode, aliases, tmp_path, port,
        master_queries=case == "prefork",
    )  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_uwsgi__load_without_failures_within_pool_bounds(case, seeded, tmp_path, port):
    run = run_case(case, "djpoolapp", seeded, tmp_path, port)
    processes = WORKERS + (1 if run.master else 0)
    assert_served(run, seeded, processes * (POOL_SIZE + MAX_OVERFLOW))
    if run.master:
        # No worker used the master's session, nor closed it.
        assert_master_sessions_untouched(run, seeded)
        dropped = re.findall(r"forked: dropped \d+ inherited pooled", run.log)
        assert len(dropped) >= WORKERS, run.log
        # The project's own @postfork hook still runs, after the reset.
        assert run.log.count("project postfork hook ran") >= WORKERS, run.log


@pytest.mark.stock_baseline
@pytest.mark.parametrize("case", list(CASES))
def test_uwsgi__stock_django_baseline(case, seeded, tmp_path, port):
    """The same load with DJPOOL_DISABLE=1: the table's other column."""
    run = run_case(case, "stock", seeded, tmp_path, port)
    assert_served(run, seeded)


SLEEPER_SQL = {
    "postgresql": "SELECT pid FROM pg_stat_activity WHERE datname = %s "
    "AND query LIKE 'SELECT pg_sleep%%' AND pid <> pg_backend_pid()",
    "mysql": "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s "
    "AND INFO LIKE 'SELECT SLEEP%%' AND ID <> CONNECTION_ID()",
}
HARAKIRI = 2  # seconds
STUCK = 6  # seconds the stuck request sleeps on the server


@pytest.mark.parametrize("alias", ["default", "mysql"])
def test_uwsgi__harakiri_kills_a_stuck_worker_and_its_session_ends(
    alias, seeded, tmp_path, port
):
    if alias not in seeded:
        pytest.skip(f"no {alias} database")
    base = base_url(port)
    monitor = Monitor(alias)
    stuck: list[object] = []
    try:
        with http_server(
            uwsgi(port, "--harakiri", str(HARAKIRI)), port, tmp_path / "uwsgi.log"
        ) as server:
            before = sessions_seen(base, alias, requests=20)
            request = threading.Thread(
                target=lambda: stuck.append(
                    _get_or_error(f"{base}/sleep/{alias}/?seconds={STUCK}")
                )
            )
            request.start()
            sleeper = _wait_for_sleeper(monitor)
            # Meanwhile the other worker serves (and keeps serving while the
            # master kills and replaces the stuck one).
            load = run_wrk(f"{base}/orm/{alias}/", seconds=HARAKIRI + 2, connections=4)
            request.join(30)
            gone = _wait_until_gone(monitor, sleeper, timeout=STUCK + 15)
            after = sessions_seen(base, alias, requests=20)
            alive = monitor.session_ids()
            log = server.log
            alarms = server.alarms()
    finally:
        monitor.close()
    assert re.search(r"HARAKIRI ON WORKER \d+ \(pid: \d+", log), log
    assert stuck and not (isinstance(stuck[0], tuple) and stuck[0][0] == 200), stuck
    assert gone, f"session {sleeper} of the killed worker still on the server"
    assert load.failed == 0, load.output
    assert load.requests > 0, load.output
    killed = int(re.search(r"HARAKIRI ON WORKER \d+ \(pid: (\d+)", log).group(1))
    # The survivor kept its pooled sessions: those it used before are alive.
    survivors = {session for pid, session in before if pid != killed}
    assert survivors <= alive | {sleeper}, (before, alive, killed)
    assert len(alive) <= WORKERS * (POOL_SIZE + MAX_OVERFLOW), alive
    assert after and all(pid != killed for pid, _ in after)
    assert [line for line in alarms if "Traceback" in line] == [], log


def _get_or_error(url: str) -> object:
    try:
        return get(url, timeout=30)
    except OSError as error:  # the connection dies with the worker
        return error


def _wait_for_sleeper(monitor: Monitor, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cursor = monitor.conn.cursor()
        cursor.execute(SLEEPER_SQL[monitor.vendor], [monitor.database])
        row = cursor.fetchone()
        cursor.close()
        if row:
            return int(row[0])
        time.sleep(0.05)
    pytest.fail("the stuck request never reached the server")


def _wait_until_gone(monitor: Monitor, session: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if session not in monitor.session_ids():
            return True
        time.sleep(0.1)
    return False
