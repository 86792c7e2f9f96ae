"""Runs in a fresh interpreter for test_interrupted_checkin.py: a
``gevent.Timeout`` interrupts Django's ``close()`` while the pool's checkin
is in one of its own round trips (a stall injected right before it stands
in for a slow network): the rollback of a transaction the request left open
(with its locks), the reset of a changed session, the close of a server-side
cursor left open, MySQL's clear of the warnings a statement left.  Stock
Django's ``close()`` ends the session, and its transaction and locks, at
once.

Usage: ``python -m tests.faults.interrupted_checkin_worker ALIAS POINT
IDIOM`` (POINT: ``rollback``, ``reset``, ``cursors``, ``diagnostics``;
IDIOM: ``with`` -- ``with gevent.Timeout(...)`` --, or ``cycle`` -- gevent's
``timeout.start()`` / ``finally: timeout.close()`` idiom, whose local keeps
the traceback's frames alive until the collector runs, which this worker
turns off).  Prints one JSON line: whether the stall was reached and
interrupted, the pool's status and the worker's sessions on the server
right after the interrupted close, and again after ``gc.collect()``."""

from gevent import monkey

monkey.patch_all()

import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import django  # noqa: E402
import gevent  # noqa: E402

#: The driver method each point's stall goes before.
STALLED = {
    "rollback": "end_transaction",
    "reset": "reset_session",
    "cursors": "close_at_checkin",
    "diagnostics": "checkin_problem",
}


def main(alias: str, point: str, idiom: str) -> dict[str, Any]:
    gc.disable()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    django.setup()
    from tests.modes import apply_environment

    apply_environment()
    from django.db import connections
    from django.test.utils import override_settings

    import djpoolapp
    from djpoolapp.pool import registry
    from tests.conftest import monitor_connection

    db = connections.settings[alias]
    db["NAME"] = db["TEST"]["NAME"]
    override_settings(DJPOOL_OPTIONS={"aliases": {alias: {"pool_size": 2}}}).enable()
    monitor = monitor_connection(alias)
    postgres = connections[alias].vendor == "postgresql"
    stall = {"reached": False, "interrupted": False}
    kept: list[Any] = []  # (a cursor dropped would not be left open)

    def request() -> None:
        connection = connections[alias]
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE IF EXISTS interrupted_checkin")
            cursor.execute("CREATE TABLE interrupted_checkin (id int)")
            cursor.execute("INSERT INTO interrupted_checkin VALUES (1), (2)")

        def action() -> None:
            """What leaves the checkin a round trip (run under the timeout
            too: with pool_mode="transaction" an autocommit statement's
            release is the checkin)."""
            if point == "rollback":
                connection.set_autocommit(False)
                with connection.cursor() as cursor:
                    cursor.execute(
                        "LOCK TABLE interrupted_checkin IN ACCESS EXCLUSIVE MODE"
                        if postgres
                        else "SELECT * FROM interrupted_checkin FOR UPDATE"
                    )
            elif point == "reset":
                with connection.cursor() as cursor:
                    cursor.execute("SET work_mem = '8MB'")
            elif point == "cursors":
                cursor = connection.chunked_cursor()
                cursor.execute("SELECT id FROM interrupted_checkin")
                cursor.fetchone()  # left open: its CLOSE is the checkin's
                kept.append(cursor)
            elif point == "diagnostics":
                with connection.cursor() as cursor:
                    cursor.execute("SELECT CAST('x' AS SIGNED)")  # a warning

        driver = registry.pool_of(alias).driver
        original = getattr(driver, STALLED[point])

        def stalled(*args: Any, **kwargs: Any) -> Any:
            stall["reached"] = True
            try:
                gevent.sleep(2)
            except BaseException:
                stall["interrupted"] = True
                raise
            return original(*args, **kwargs)

        setattr(driver, STALLED[point], stalled)
        try:
            if idiom == "cycle":  # gevent's documented idiom
                timeout = gevent.Timeout(0.3)
                timeout.start()
                try:
                    action()
                    connection.close()
                except gevent.Timeout as interrupt:
                    if interrupt is not timeout:
                        raise
                finally:
                    timeout.close()
            else:
                try:
                    with gevent.Timeout(0.3):
                        action()
                        connection.close()
                except gevent.Timeout:
                    pass
        finally:
            delattr(driver, STALLED[point])

    def sessions() -> list[str]:
        """The worker's sessions (its test database, the monitor's aside),
        once a closed one has had time to leave the server's list."""
        cursor = monitor.cursor()
        rows: list[str] = []
        for _ in range(40):
            if postgres:
                cursor.execute(
                    "SELECT state FROM pg_stat_activity WHERE datname = %s "
                    "AND pid <> pg_backend_pid() "
                    "AND backend_type = 'client backend'",
                    [db["NAME"]],
                )
            else:
                cursor.execute(
                    "SELECT COALESCE(STATE, COMMAND) FROM "
                    "information_schema.PROCESSLIST WHERE DB = %s "
                    "AND ID <> CONNECTION_ID()",
                    [db["NAME"]],
                )
            rows = [str(row[0]) for row in cursor.fetchall()]
            if not rows:
                break
            time.sleep(0.05)
        cursor.close()
        return rows

    def state() -> dict[str, Any]:
        status = djpoolapp.pool_status(alias)[alias]
        return {
            "checked_out": status.checked_out,
            "idle": status.idle,
            "sessions": sessions(),
        }

    gevent.spawn(request).join()
    gevent.sleep(0.3)
    report: dict[str, Any] = {**stall, **state()}
    gc.collect()
    gevent.sleep(0.3)
    report["after_gc"] = state()
    djpoolapp.dispose()
    return report


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4])), flush=True)
