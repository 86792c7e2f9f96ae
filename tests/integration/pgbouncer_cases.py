"""Pooling through PgBouncer, seen from PgBouncer.

Not collected by itself (no ``test_`` prefix): test_pgbouncer.py runs it in
a nested pytest whose ``default`` alias goes through PgBouncer in transaction
mode, next to the core ORM and pooling tests.  There, pg_stat_activity shows
PgBouncer's server connections, not Django's: what djpoolapp pools are the
*client* connections to PgBouncer, counted by ``SHOW CLIENTS`` and by the
"login attempt" lines of PgBouncer's log.
"""

from __future__ import annotations

import re
import time
from typing import Any

from django.db import connections
from django.test import override_settings

from tests.conftest import driver_module, peak_while
from tests.integration import POOLER_CASES
from tests.integration.servers import (
    fresh_pools,
    pooler_port_and_log,
    session_requests,
)

pytestmark = POOLER_CASES

PGBOUNCER_PORT, LOG = pooler_port_and_log("pgbouncer")


def test_default_alias__goes_through_pgbouncer():
    settings_dict = connections["default"].settings_dict
    assert int(settings_dict["PORT"]) == PGBOUNCER_PORT
    assert settings_dict["DISABLE_SERVER_SIDE_CURSORS"] is True


def show(command: str) -> list[dict[str, Any]]:
    """A command of PgBouncer's admin console (simple query protocol only)."""
    module = driver_module("default")
    kwargs = {"host": "127.0.0.1", "port": PGBOUNCER_PORT, "user": "root"}
    if module.__name__ == "psycopg":
        conn = module.connect(
            dbname="pgbouncer", autocommit=True, cursor_factory=module.ClientCursor,
            **kwargs,
        )  # fmt: skip
    else:
        conn = module.connect(dbname="pgbouncer", **kwargs)
        conn.autocommit = True
    try:
        cursor = conn.cursor()
        cursor.execute(command)
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    finally:
        conn.close()


def clients_of_test_database() -> int:
    name = connections["default"].settings_dict["NAME"]
    return sum(1 for row in show("SHOW CLIENTS") if row["database"] == name)


def logins() -> int:
    """Client logins to this run's test database, from PgBouncer's log."""
    name = connections["default"].settings_dict["NAME"]
    pattern = re.compile(rf"login attempt: db={re.escape(name)} ")
    return len(pattern.findall(LOG.read_text(errors="replace")))


def wait_for_clients(expected: int, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    while (
        found := clients_of_test_database()
    ) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def test_pgbouncer__pooled_requests_log_in_once(request_cycle):
    fresh_pools()
    before = logins()
    session_requests(request_cycle, 50)
    assert logins() - before <= 1
    assert wait_for_clients(1) == 1  # kept open, idle in djpoolapp's pool


def test_pgbouncer__stock_django_logs_in_once_per_request(request_cycle, unpatched):
    before = logins()
    session_requests(request_cycle, 20)
    assert logins() - before == 20
    assert wait_for_clients(0) == 0


def test_pgbouncer__threads_never_exceed_pool_size(request_cycle):
    """8 threads share a pool of 4: PgBouncer never sees more than 4 clients
    of the test database, and at most 4 of them log in."""
    fresh_pools()
    errors: list[BaseException] = []

    def client() -> None:
        try:
            session_requests(request_cycle, 50)
        except BaseException as error:  # reported below
            errors.append(error)
        finally:
            for connection in connections.all(initialized_only=True):
                connection.close()

    options = {"pool_size": 4, "max_overflow": 0, "timeout": 30}
    with override_settings(DJPOOL_OPTIONS={"aliases": {"default": options}}):
        before = logins()
        peak = peak_while([client] * 8, clients_of_test_database)
        fresh_pools()
    assert not errors, errors[:3]
    assert 1 <= peak <= 4
    assert logins() - before <= 4
