"""What the server tests share, built on conftest.py's machinery.

- ``http_server(cmd, port, log_path, env)``: a WSGI/ASGI server on a free
  port, ready once ``/ping/`` answers 200;
- ``serve_under_load(...)``: such a server under wrk on each alias's view,
  server sessions sampled throughout: a ``Served`` (loads, peak sessions per
  alias, log alarms); ``assert_served`` holds the checks every server case
  makes of it;
- ``run_forking_case(...)``: the same for a server that forks workers from a
  master (gunicorn, uWSGI), plus which worker used which session and which
  sessions are alive afterwards: a ``Run``;
- ``peak_sleepers(...)``: how many sleeping queries run at once under load
  (whether a green-thread server yields to its hub while a query waits);
- ``pooler(...)`` and ``run_core_tests_through(...)``: a server-side pooler
  (PgBouncer, Pgpool-II) on a free port, and the nested pytest of the core
  ORM and pooling tests with ``default`` pointed at it;
- ``pooler_port_and_log``, ``fresh_pools``, ``session_requests``: for the
  ``*_cases.py`` modules that nested run collects.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connections

from djpoolapp.pool import registry
from tests.conftest import monitor_connection
from tests.integration.conftest import (
    LOAD_CONNECTIONS,
    ROOT,
    Load,
    Monitor,
    Server,
    SessionSampler,
    free_port,
    get,
    http_ready,
    record,
    run_wrk,
    serve,
    server_env,
)

#: Label of each alias's view in the requests/second table.
VIEWS = {"default": "postgres", "mysql": "mariadb"}


def base_url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def mode_env(mode: str, **extra: str) -> dict[str, str]:
    """A server's environment; *mode* "stock" sets ``DJPOOL_DISABLE=1``."""
    return server_env(**({"DJPOOL_DISABLE": "1"} if mode == "stock" else {}), **extra)


@contextmanager
def http_server(
    cmd: Sequence[str], port: int, log_path: Path, env: dict[str, str] | None = None
) -> Iterator[Server]:
    """Run the HTTP server *cmd* (listening on *port*) until the block ends,
    once ``/ping/`` answers; *env* defaults to ``server_env()``."""
    with serve(
        cmd, log_path, env=server_env() if env is None else env,
        ready=http_ready(f"{base_url(port)}/ping/"),
    ) as server:  # fmt: skip
        yield server


def load_views(
    base: str, aliases: Sequence[str], path: str = "orm", *, server: Server
) -> tuple[dict[str, Load], dict[str, int]]:
    """wrk on ``{base}/{path}/{alias}/`` for each alias in turn, the sessions
    of *server*'s processes sampled throughout: (load per alias, peak
    sessions per alias)."""
    sampler = SessionSampler(aliases, group=server.process.pid)
    loads = {}
    with sampler.running():
        for alias in aliases:
            loads[alias] = run_wrk(f"{base}/{path}/{alias}/")
    return loads, dict(sampler.peak)


@dataclass
class Served:
    """What one server case showed under load."""

    loads: dict[str, Load]
    peak: dict[str, int]
    alarms: list[str]
    log: str


def serve_under_load(
    cmd: Sequence[str],
    port: int,
    log_path: Path,
    env: dict[str, str],
    aliases: Sequence[str],
    *,
    path: str = "orm",
    before: Callable[[str], None] | None = None,
) -> Served:
    """Serve *cmd*, call ``before(base_url)`` if given, then load each
    alias's view (``load_views``)."""
    base = base_url(port)
    with http_server(cmd, port, log_path, env) as server:
        if before is not None:
            before(base)
        loads, peak = load_views(base, aliases, path, server=server)
        alarms = server.alarms()
        log = server.log
    return Served(loads=loads, peak=peak, alarms=alarms, log=log)


def record_served(server: str, case: str, mode: str, served: Served) -> None:
    """The case's cells of the requests/second table."""
    for alias, load in served.loads.items():
        record(server, case, VIEWS[alias], mode, load, served.peak[alias])


def assert_served(
    served: Served, aliases: Sequence[str], bound: int | None = None
) -> None:
    """Every request answered, a clean log and, given a *bound*, between 1
    and *bound* server sessions per alias at the peak."""
    for load in served.loads.values():
        assert load.requests > 0, load.output
        assert load.failed == 0, load.output
    assert served.alarms == [], served.log
    if bound is not None:
        for alias in aliases:
            assert 1 <= served.peak[alias] <= bound, served.peak


def sessions_seen(base: str, alias: str, requests: int = 40) -> set[tuple[int, int]]:
    """(worker pid, server session id) pairs of a few requests."""
    seen = set()
    for _ in range(requests):
        status, body = get(f"{base}/session/{alias}/")
        assert status == 200, body
        answer = json.loads(body)
        seen.add((answer["pid"], answer["session"]))
    return seen


def alive_sessions(aliases: Sequence[str]) -> dict[str, set[int]]:
    """Server session ids on each alias's test database, now."""
    alive = {}
    for alias in aliases:
        monitor = Monitor(alias)
        try:
            alive[alias] = monitor.session_ids()
        finally:
            monitor.close()
    return alive


@dataclass
class Run(Served):
    """What one case of a forking server (gunicorn, uWSGI) showed."""

    workers: dict[str, set[tuple[int, int]]]
    alive: dict[str, set[int]]
    master: dict[str, int]


def run_forking_case(
    server: str,
    cmd: Sequence[str],
    case: str,
    mode: str,
    aliases: list[str],
    tmp_path: Path,
    port: int,
    *,
    master_queries: bool,
) -> Run:
    """Serve *case* with djpoolapp or stock Django; load each view in turn
    while sampling server sessions (in both modes, so that both pay the
    same sampling cost); then look at who served what.  With
    *master_queries*, the master writes its pid and sessions to a file
    (tests.integration.wsgi) before it forks."""
    base = base_url(port)
    env = mode_env(mode)
    master_file = tmp_path / "master.json"
    if master_queries:
        env["DJPOOL_IT_MASTER_FILE"] = str(master_file)
    with http_server(cmd, port, tmp_path / f"{server}.log", env) as process:
        loads, peak = load_views(base, aliases, server=process)
        workers = {alias: sessions_seen(base, alias) for alias in aliases}
        alive = alive_sessions(aliases)
        alarms = process.alarms()
    run = Run(
        loads=loads,
        peak=peak,
        alarms=alarms,
        log=process.log,
        workers=workers,
        alive=alive,
        master=json.loads(master_file.read_text()) if master_file.exists() else {},
    )
    record_served(server, case, mode, run)
    return run


def assert_master_sessions_untouched(run: Run, aliases: Sequence[str]) -> None:
    """No worker served from the master's pid or used the master's session,
    and none closed it."""
    for alias in aliases:
        pids = {pid for pid, _ in run.workers[alias]}
        sessions = {session for _, session in run.workers[alias]}
        assert run.master["pid"] not in pids
        assert run.master[alias] not in sessions, (alias, run.master, run.workers)
        assert run.master[alias] in run.alive[alias], (alias, run.master, run.alive)


SLEEPERS_SQL = {
    "postgresql": "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
    "AND state = 'active' AND query LIKE 'SELECT pg_sleep%%'",
    "mysql": "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = %s "
    "AND INFO LIKE 'SELECT SLEEP%%'",
}


def peak_sleepers(monitor: Monitor, url: str) -> int:
    """Run 2 s of load on a sleeping view; the peak of concurrent sleeps
    (the backlog the load leaves is drained before this returns).

    Each request holds a 0.2 s server-side sleep, so a load that served
    requests shows at least one sleep to a 20 ms sampler; a peak of 0 means
    the sampler was starved on a loaded machine, not that nothing slept, and
    the load is run once more."""
    for _attempt in range(2):
        peak, load = _peak_sleepers_once(monitor, url)
        _wait_drained(monitor)
        assert load.failed == 0, load.output
        assert load.requests > 0, load.output
        if peak > 0:
            break
    return peak


def _sleepers(monitor: Monitor) -> int:
    cursor = monitor.conn.cursor()
    try:
        cursor.execute(SLEEPERS_SQL[monitor.vendor], [monitor.database])
        return int(cursor.fetchone()[0])
    finally:
        cursor.close()


def _wait_drained(monitor: Monitor, quiet: float = 0.5, limit: float = 60) -> None:
    """Wait until no sleep of this load runs on the server for *quiet* s.

    wrk stops with a request outstanding on each of its connections, and the
    server still serves those: where one request blocks the whole process
    (mysqlclient, or psycopg 3's C wait, under eventlet) that backlog is
    16 x 0.2 s, and the next load (the next alias) would wait behind it and
    could serve nothing in its 2 s (seen under load in a CI corner)."""
    deadline = time.monotonic() + limit
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        if _sleepers(monitor):
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet:
            return
        time.sleep(0.02)
    raise AssertionError(f"sleeps still running {limit} s after the load ended")


def _peak_sleepers_once(monitor: Monitor, url: str) -> tuple[int, Load]:
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
            peak = max(peak, _sleepers(monitor))
            loader.join(0.02)
    finally:
        loader.join(60)
    (load,) = result
    return peak, load


def peak_sleepers_per_alias(base: str, aliases: Sequence[str]) -> dict[str, int]:
    """``peak_sleepers`` on ``{base}/sleep/{alias}/`` for each alias."""
    peaks = {}
    for alias in aliases:
        monitor = Monitor(alias)
        try:
            peaks[alias] = peak_sleepers(monitor, f"{base}/sleep/{alias}/")
        finally:
            monitor.close()
    return peaks


# -- server-side poolers (PgBouncer, Pgpool-II) ------------------------------


def accepts(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:*port*."""
    try:
        with socket.create_connection(("127.0.0.1", port), 1):
            return True
    except OSError:
        return False


def run_as() -> str | None:
    """The user a pooler runs as: ``postgres`` under root (both refuse or
    should not run as root), else ourselves."""
    return "postgres" if os.geteuid() == 0 else None


@contextmanager
def pooler(
    name: str, tmp_path: Path, configure: Callable[[Path, int], list[str]]
) -> Iterator[tuple[int, Path]]:
    """A pooler on a free port until the block ends: (port, log file).

    ``configure(directory, port)`` writes its files into a fresh temporary
    directory (owned by ``run_as()``, removed afterwards) and returns the
    command line; the pooler is ready once it accepts connections."""
    directory = Path(tempfile.mkdtemp(prefix=f"djpool-{name}-"))
    port = free_port()
    log = tmp_path / f"{name}.log"
    try:
        cmd = configure(directory, port)
        if run_as():
            subprocess.run(["chown", "-R", "postgres", str(directory)], check=True)
        with serve(cmd, log, ready=lambda: accepts(port), user=run_as()):
            yield port, log
    finally:
        subprocess.run(["rm", "-rf", str(directory)], check=False)


def drop_test_databases(name: str) -> None:
    """Drop the test databases called *name* straight on the servers."""
    for alias in ("default", "mysql"):
        if alias not in settings.DATABASES:
            continue
        conn = monitor_connection(alias)
        try:
            cursor = conn.cursor()
            if settings.DATABASES[alias]["ENGINE"].endswith("postgresql"):
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            else:
                cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
            cursor.close()
        finally:
            conn.close()


def run_core_tests_through(
    name: str,
    label: str,
    port: int,
    log: Path,
    *,
    settings_module: str,
    deselected: Sequence[str],
    min_passed: int,
) -> None:
    """The nested pytest of test_orm.py, test_pooling.py and
    tests/integration/{name}_cases.py on PostgreSQL, with ``default`` through
    the pooler *name* on *port* (the cases read ``DJPOOL_IT_{NAME}_PORT`` and
    ``..._LOG``).  Its test database is kept (``--reuse-db``: the pooler's
    idle server connections would block DROP DATABASE) and dropped straight
    on the server afterwards.  Asserts that it passed at least *min_passed*
    tests, skipped none and deselected *deselected*."""
    run_id = f"{settings.RUN_ID}_{name}"
    env = dict(os.environ)
    env.update(
        {
            "DJPOOL_TEST_POSTGRES_URL": f"postgres://root@127.0.0.1:{port}/postgres",
            "DJPOOL_TEST_RUN_ID": run_id,
            "DJPOOL_TEST_DRIVER": settings.DRIVER,
            f"DJPOOL_IT_{name.upper()}_PORT": str(port),
            f"DJPOOL_IT_{name.upper()}_LOG": str(log),
        }
    )
    env.pop("DJPOOL_DISABLE", None)
    cmd = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
        "--ds", settings_module, "--reuse-db", "-m", "postgres",
        *(f"--deselect={node}" for node in deselected),
        "tests/test_orm.py", "tests/test_pooling.py",
        f"tests/integration/{name}_cases.py",
    ]  # fmt: skip
    try:
        process = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        try:
            output, _ = process.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
            pytest.fail(f"the run through {label} timed out:\n{output}")
    finally:
        drop_test_databases(f"test_djpool_{run_id}")
        lite = ROOT / "tests" / "tmp" / f"test_lite_{process.pid}.sqlite3"
        lite.unlink(missing_ok=True)
    summary = output.strip().splitlines()[-1] if output.strip() else ""
    print(f"\nthrough {label}: {summary}")
    assert process.returncode == 0, output
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= min_passed, output
    assert " skipped" not in summary and "deselected" in summary, output


# -- for the *_cases.py modules of the nested run -----------------------------


def pooler_port_and_log(name: str) -> tuple[int, Path]:
    """The pooler's port and log file, as run_core_tests_through passes them."""
    prefix = f"DJPOOL_IT_{name.upper()}"
    return (
        int(os.environ.get(f"{prefix}_PORT", "0")),
        Path(os.environ.get(f"{prefix}_LOG", "/nonexistent")),
    )


def fresh_pools() -> None:
    """Close this process's connections and empty djpoolapp's pools."""
    for connection in connections.all(initialized_only=True):
        connection.close()
    registry.dispose()


def session_requests(request_cycle: Callable, count: int) -> None:
    """*count* requests of ``/session/default/``, each answered 200."""
    for _ in range(count):
        status, body = request_cycle("/session/default/")
        assert status == 200, body
