"""Machinery of the integration suite: real servers on 127.0.0.1.

- ``serve(cmd, ...)``: start a server process (gunicorn, uvicorn, pgbouncer)
  in its own process group, wait until it answers, and always stop it.
- ``run_wrk(url, ...)``: a bounded load (fixed connections, fixed duration,
  per-request timeout) from Debian's ``wrk``; its counts of failed requests.
- ``SessionSampler``: counts the server sessions on this run's test databases
  every few milliseconds while a load runs, keeping the peak.
- ``THROUGHPUT``: requests/second per case, printed as a table at the end.

A missing tool (wrk, pgbouncer, gunicorn, ...) skips its tests locally and
fails them under ``CI=true``, as unreachable database servers do.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connections

from djpoolapp.pool import registry
from tests.conftest import IN_CI, count_sessions, monitor_connection
from tests.harness import free_port
from tests.testapp.models import Item

ROOT = Path(__file__).resolve().parents[2]
#: Seconds of wrk load per view and case (~6 s per server case): thousands
#: of requests per cell, and the pool bound is reached in the first
#: milliseconds (5 s until 0.2.0, which made the README's test command
#: longer and found nothing more).
LOAD_SECONDS = 3
LOAD_CONNECTIONS = 8
STOP_TIMEOUT = 20.0
READY_TIMEOUT = 60.0
#: Lines that mean a connection was shared across processes or misused.
LOG_ALARMS = (
    "SSL error",
    "SSL SYSCALL error",
    "decryption failed or bad record mac",
    "server closed the connection unexpectedly",
    "Commands out of sync",
    "Lost connection to",
    "MySQL server has gone away",
    "Traceback",
)


def require_tool(name: str) -> str:
    """Path of a command-line tool, or skip (fail in CI) when missing."""
    found = shutil.which(name) or (
        f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None
    )
    if found is None:
        message = f"{name} is not installed (.ci/run installs it with apt-get)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


def require_module(name: str) -> None:
    if importlib.util.find_spec(name) is None:
        message = f"Python package {name!r} is missing (setup.cfg extra 'test')"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def server_env(**extra: str) -> dict[str, str]:
    """Environment of a server: this run's test databases and driver."""
    env = dict(os.environ)
    env.pop("DJPOOL_DISABLE", None)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.integration.server_settings",
        DJPOOL_TEST_RUN_ID=settings.RUN_ID,
        DJPOOL_TEST_DRIVER=settings.DRIVER,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alarms(self) -> list[str]:
        return [
            line for line in self.log.splitlines() if any(a in line for a in LOG_ALARMS)
        ]


def _stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop a process we started, and the workers in its process group."""
    if process.poll() is None:
        os.kill(process.pid, sig)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # leftovers of a crashed master
    except ProcessLookupError:
        pass
    process.wait(STOP_TIMEOUT)


@contextmanager
def serve(
    cmd: Sequence[str],
    log_path: Path,
    *,
    env: dict[str, str] | None = None,
    ready: Callable[[], bool],
    user: str | None = None,
) -> Iterator[Server]:
    """Run *cmd* until the block ends; ``ready()`` says when it serves."""
    if user is not None:
        cmd = ["runuser", "-u", user, "--", *cmd]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            list(cmd), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    server = Server(process, log_path)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not ready():
            if process.poll() is not None:
                pytest.fail(f"{cmd[0]} exited with {process.returncode}:\n{server.log}")
            if time.monotonic() > deadline:
                pytest.fail(f"{cmd[0]} not ready in {READY_TIMEOUT} s:\n{server.log}")
            time.sleep(0.1)
        yield server
    finally:
        _stop(process)


def http_ready(url: str) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            return get(url, timeout=2)[0] == 200
        except OSError:
            return False

    return ready


@dataclass
class Load:
    """What wrk reports for one bounded load."""

    url: str
    requests: int
    seconds: float
    rps: float
    socket_errors: dict[str, int]
    non_2xx: int
    output: str

    @property
    def failed(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())


def run_wrk(
    url: str, seconds: int = LOAD_SECONDS, connections: int = LOAD_CONNECTIONS
) -> Load:
    wrk = require_tool("wrk")
    result = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", url],
        capture_output=True, text=True, timeout=seconds + 30, check=False,
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    done = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert done and rps, out
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    socket_errors = dict(
        zip(
            ("connect", "read", "write", "timeout"),
            map(int, errors.groups()),
            strict=True,
        )
        if errors
        else {}
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    scale = 1000 if done.group(3) == "ms" else 1
    return Load(
        url=url,
        requests=int(done.group(1)),
        seconds=float(done.group(2)) / scale,
        rps=float(rps.group(1)),
        socket_errors=socket_errors,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        output=out,
    )


SESSION_IDS_SQL = {
    "postgresql": "SELECT pid FROM pg_stat_activity WHERE datname = %s "
    "AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
    "mysql": "SELECT ID FROM information_schema.PROCESSLIST "
    "WHERE DB = %s AND ID <> CONNECTION_ID()",
}


class Monitor:
    """An unpooled connection that counts the sessions on an alias's test DB."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.vendor = connections[alias].vendor
        self.database = connections[alias].settings_dict["NAME"]
        self.conn = monitor_connection(alias)

    def _column(self, sql: str) -> list[int]:
        cursor = self.conn.cursor()
        try:
            cursor.execute(sql, [self.database])
            return [int(row[0]) for row in cursor.fetchall()]
        finally:
            cursor.close()

    def count(self, group: int | None = None) -> int:
        """Sessions on the alias's database; with *group*, only those of that
        process group's processes (``count_sessions``)."""
        return count_sessions(self.conn, self.vendor, self.database, group)

    def session_ids(self) -> set[int]:
        return set(self._column(SESSION_IDS_SQL[self.vendor]))

    def wait_until_at_most(self, sessions: int, timeout: float = 10.0) -> int:
        """Wait for closed sessions to leave the server (backends exit lazily)."""
        deadline = time.monotonic() + timeout
        while (found := self.count()) > sessions and time.monotonic() < deadline:
            time.sleep(0.05)
        return found

    def close(self) -> None:
        self.conn.close()


@dataclass
class SessionSampler:
    """Peak server sessions per alias, sampled in a thread while a block runs;
    with *group* (a server's process group: ``Server.process.pid``), only the
    sessions of that server's processes."""

    aliases: Sequence[str]
    group: int | None = None
    interval: float = 0.02
    peak: dict[str, int] = field(default_factory=dict)
    samples: int = 0

    @contextmanager
    def running(self) -> Iterator[SessionSampler]:
        monitors = [Monitor(alias) for alias in self.aliases]
        stop = threading.Event()
        failure: list[BaseException] = []

        def sample() -> None:
            try:
                while not stop.wait(self.interval):
                    for monitor in monitors:
                        count = monitor.count(self.group)
                        self.peak[monitor.alias] = max(
                            self.peak.get(monitor.alias, 0), count
                        )
                    self.samples += 1
            except BaseException as error:  # reported in the test's thread
                failure.append(error)

        thread = threading.Thread(target=sample, name="session-sampler")
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(10)
            for monitor in monitors:
                monitor.close()
        assert not failure, failure
        assert self.samples > 0


#: (server, case, view) -> {mode: (requests/second, peak server sessions)}
THROUGHPUT: dict[tuple[str, str, str], dict[str, tuple[float, int | None]]] = {}


def record(
    server: str, case: str, view: str, mode: str, load: Load, peak: int | None
) -> None:
    """Keep a cell of the table; *mode* is "djpoolapp" or "stock"."""
    THROUGHPUT.setdefault((server, case, view), {})[mode] = (load.rps, peak)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not THROUGHPUT:
        return
    write = terminalreporter.write_line
    terminalreporter.section("requests/second: djpoolapp vs stock Django")
    write(
        f"wrk, {LOAD_CONNECTIONS} connections, {LOAD_SECONDS} s per cell; "
        f"driver {settings.DRIVER}, Python {sys.version.split()[0]}, "
        f"Django {__import__('django').get_version()}"
    )
    header = (
        f"{'server':<9} {'case':<13} {'view':<9} {'djpoolapp':>10} {'stock':>8} "
        f"{'ratio':>6}   peak sessions djpoolapp/stock"
    )
    write(header)
    write("-" * len(header))
    rows = sorted(THROUGHPUT.items(), key=lambda row: row[0][0] != "gunicorn")
    for (server, case, view), modes in rows:
        pooled, pooled_peak = modes.get("djpoolapp", (0.0, None))
        stock, stock_peak = modes.get("stock", (0.0, None))
        ratio = f"{pooled / stock:.2f}" if pooled and stock else "-"
        write(
            f"{server:<9} {case:<13} {view:<9} {pooled:>10.0f} {stock:>8.0f} "
            f"{ratio:>6}   {pooled_peak if pooled_peak is not None else '-'}"
            f"/{stock_peak if stock_peak is not None else '-'}"
        )


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def seeded() -> Iterator[list[str]]:
    """Rows for the views to read, committed in both server databases; no
    connection of this process left open (the servers count sessions)."""
    aliases = [a for a in ("default", "mysql") if a in settings.DATABASES]
    for alias in aliases:
        Item.objects.using(alias).bulk_create(
            Item(name=f"item-{n}", value=n) for n in range(20)
        )
    for connection in connections.all(initialized_only=True):
        connection.close()
    registry.dispose()
    yield aliases
