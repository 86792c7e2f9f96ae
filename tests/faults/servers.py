"""Fault injection against the real servers: kill sessions, restart servers.

Everything here acts only on the sessions of *this run's* test database
(``connections[alias].settings_dict["NAME"]``): other people run tests against
the same servers at the same time.  Restarts, stops and kills of a whole server
act only on the private server this test process owns (tests/harness.py:
one per process, also per pytest-xdist worker); the tests that use them are
marked ``restart`` and skip on external servers.

Admin work goes through connections opened straight with the driver
(unpooled, see ``tests.conftest.monitor_connection``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from django.db import connections

from tests import harness
from tests.conftest import monitor_connection
from tests.harness import Server

#: How long a kill or a restart may take before the test gives up.
KILL_TIMEOUT = 10.0
RESTART_TIMEOUT = 60.0

SESSION_ID_SQL = {
    "postgresql": "SELECT pg_backend_pid()",
    "mysql": "SELECT CONNECTION_ID()",
}


def database_name(alias: str) -> str:
    return connections[alias].settings_dict["NAME"]


def session_id(alias: str) -> int:
    """The server session id behind ``connections[alias]`` (opens it if needed)."""
    connection = connections[alias]
    with connection.cursor() as cursor:
        cursor.execute(SESSION_ID_SQL[connection.vendor])
        (session,) = cursor.fetchone()
    return int(session)


class Admin:
    """An unpooled admin connection to the server behind *alias*."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.vendor = connections[alias].vendor
        self.database = database_name(alias)
        self.conn = monitor_connection(alias)

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:
            pass

    def rows(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        cursor = self.conn.cursor()
        try:
            cursor.execute(sql, list(params) or None)
            return list(cursor.fetchall()) if cursor.description else []
        finally:
            cursor.close()

    def execute(self, sql: str, params: Iterable[Any] = ()) -> None:
        self.rows(sql, params)

    # -- sessions of this run's test database ---------------------------------
    def sessions(self) -> list[int]:
        """Server session ids on the test database (the admin's own excluded)."""
        if self.vendor == "postgresql":
            sql = (
                "SELECT pid FROM pg_stat_activity WHERE datname = %s "
                "AND pid <> pg_backend_pid() AND backend_type = 'client backend' "
                "ORDER BY pid"
            )
        else:
            sql = (
                "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s "
                "AND ID <> CONNECTION_ID() AND COMMAND <> 'Killed' ORDER BY ID"
            )
        return [int(row[0]) for row in self.rows(sql, [self.database])]

    def kill(self, ids: Iterable[int] | None = None) -> list[int]:
        """Terminate the given sessions (default: all) of the test database from
        the server side, and wait until the server has let them go."""
        current = self.sessions()
        targets = [i for i in current if ids is None or i in set(ids)]
        for session in targets:
            if self.vendor == "postgresql":
                self.execute("SELECT pg_terminate_backend(%s, 5000)", [session])
            else:
                try:
                    self.execute(f"KILL CONNECTION {int(session)}")
                except Exception as error:  # already gone: fine
                    if "Unknown thread id" not in str(error):
                        raise
        self.wait_gone(targets)
        return targets

    def wait_gone(self, ids: Iterable[int], timeout: float = KILL_TIMEOUT) -> None:
        wanted = set(ids)
        deadline = time.monotonic() + timeout
        while wanted & set(self.sessions()):
            if time.monotonic() > deadline:
                raise AssertionError(f"sessions {sorted(wanted)} still alive")
            time.sleep(0.02)

    def open_transactions(self) -> list[tuple[Any, ...]]:
        """Sessions of the test database with a transaction open on the server."""
        if self.vendor == "postgresql":
            return self.rows(
                "SELECT pid, state, backend_xid FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid() "
                "AND backend_type = 'client backend' "
                "AND (state <> 'idle' OR backend_xid IS NOT NULL "
                "OR xact_start IS NOT NULL)",
                [self.database],
            )
        return self.rows(
            "SELECT t.trx_mysql_thread_id, t.trx_state FROM "
            "information_schema.innodb_trx t JOIN information_schema.PROCESSLIST p "
            "ON p.ID = t.trx_mysql_thread_id WHERE p.DB = %s",
            [self.database],
        )


# -- server restarts -----------------------------------------------------------
# Only the private servers this test run started (tests/harness.py) are ever
# stopped or started; the tests marked ``restart`` skip on external servers.
VENDOR_SERVER = {"postgresql": "postgres", "mysql": "mysql"}


def private_server(vendor: str) -> Server:
    """This process's private server of *vendor* ("postgresql" / "mysql")."""
    server = harness.private_server(VENDOR_SERVER[vendor])
    if server is None:
        raise RuntimeError(
            f"no private {vendor} server in this run (external server or none): "
            "the suite never stops a server it did not start"
        )
    return server


def server_accepts(alias: str) -> bool:
    try:
        monitor_connection(alias).close()
    except Exception:
        return False
    return True


def wait_accepting(alias: str, timeout: float = RESTART_TIMEOUT) -> float:
    """Wait until the server of *alias* accepts connections; return that time."""
    deadline = time.monotonic() + timeout
    while not server_accepts(alias):
        if time.monotonic() > deadline:
            raise AssertionError(f"server of {alias!r} not back after {timeout} s")
        time.sleep(0.05)
    return time.monotonic()


def stop_server(vendor: str) -> None:
    """Stop this run's server: PostgreSQL's "fast" shutdown (sessions are told
    "terminating connection due to administrator command"), MariaDB's normal
    shutdown; killed if it takes longer than ``RESTART_TIMEOUT``."""
    private_server(vendor).stop(timeout=RESTART_TIMEOUT)


def start_server(vendor: str) -> None:
    """Start this run's server again (same port, data and socket directory);
    nothing to do if it runs."""
    server = private_server(vendor)
    if server.pid() is None:
        server.start()


def kill_server(vendor: str) -> None:
    """SIGKILL this run's server (a crash, no shutdown protocol)."""
    private_server(vendor).kill()


def restart_server(alias: str) -> None:
    """Stop and start the server of *alias*; it is running again on return,
    whatever happened in between."""
    vendor = connections[alias].vendor
    try:
        stop_server(vendor)
    finally:
        start_server(vendor)
        wait_accepting(alias)


def park_idle(alias: str, count: int) -> list[int]:
    """Check out *count* connections of *alias* at once (each through its own
    Django wrapper), then return them all to the pool, where they sit idle;
    return their server session ids."""
    wrappers = [connections.create_connection(alias) for _ in range(count)]
    sessions = []
    cursors = []  # open until all are checked out (pool_mode="transaction")
    try:
        for wrapper in wrappers:
            cursor = wrapper.cursor()
            cursors.append(cursor)
            cursor.execute(SESSION_ID_SQL[wrapper.vendor])
            sessions.append(int(cursor.fetchone()[0]))
    finally:
        for cursor in cursors:
            cursor.close()
        for wrapper in wrappers:
            wrapper.close()
    return sessions
