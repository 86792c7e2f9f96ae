"""Runs in a fresh interpreter for test_interrupted_connect.py: a
``gevent.Timeout`` interrupts Django's ``ensure_connection()`` at one point
of opening a connection, with the cyclic garbage collector off, and the
server is asked which sessions of this process are left.

Usage: python -m tests.faults.interrupt_worker ALIAS pooled|stock, started in
a process group of its own (``start_new_session``).  Each point stalls the
connect there (a green sleep, the way a slow server, a slow log handler or a
busy hub stalls it); the Timeout around ``ensure_connection()`` fires during
that stall.  Then the request ends as a WSGI handler ends it (Django's
connections closed) and the pools are disposed: every session this process
still has on the server is one nobody can reach.  Prints one JSON line:
{point: {"interrupted", "left", "left_after_gc", "checked_out"}} and the
number of waits a connect makes inside the driver.
"""

from gevent import monkey

monkey.patch_all()

import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from typing import Any  # noqa: E402

DRIVER = os.environ.get("DJPOOL_TEST_DRIVER", "psycopg3")
if DRIVER == "psycopg2":
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()

import django  # noqa: E402
import gevent  # noqa: E402

#: The Timeout around ensure_connection(), and the stall it interrupts.
TIMEOUT, STALL = 0.3, 5.0

#: What the server lists of this process's sessions (the monitor's own
#: excluded): on the test database, or still starting up (no database yet).
SESSIONS_SQL = {
    "postgresql": "SELECT client_port FROM pg_stat_activity "
    "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() "
    "AND (datname = %s OR datname IS NULL)",
    "mysql": "SELECT HOST FROM information_schema.PROCESSLIST "
    "WHERE ID <> CONNECTION_ID() AND (DB = %s OR DB IS NULL) "
    "AND COMMAND <> 'Daemon'",
}


def stall() -> None:
    gevent.sleep(STALL)


class Points:
    """Where a connect can be stalled, each a context manager that stalls
    there while it is active."""

    def __init__(self, alias: str, pooled: bool) -> None:
        from django.db import connections

        self.alias = alias
        self.pooled = pooled
        self.vendor = connections[alias].vendor
        self.driver_waits = self._count_driver_waits()

    # -- inside the driver's connect (cooperative waits only) -----------------
    @contextmanager
    def _driver_wait(self, on_wait: Callable[[int], None]) -> Iterator[None]:
        """Call *on_wait(n)* before the n-th wait of a driver connect for
        the server (psycopg 3: its selector; psycopg2: psycogreen's wait)."""
        count = [0]

        def note() -> None:
            count[0] += 1
            on_wait(count[0])

        if DRIVER == "psycopg2":
            import psycogreen.gevent as green

            saved = green.wait_read, green.wait_write

            def wait_read(*args: Any, **kwargs: Any) -> Any:
                note()
                return saved[0](*args, **kwargs)

            def wait_write(*args: Any, **kwargs: Any) -> Any:
                note()
                return saved[1](*args, **kwargs)

            green.wait_read, green.wait_write = wait_read, wait_write
            try:
                yield
            finally:
                green.wait_read, green.wait_write = saved
        else:
            from psycopg import waiting

            selector = waiting.DefaultSelector

            class Noted(selector):  # type: ignore[misc,valid-type]
                def select(self, *args: Any, **kwargs: Any) -> Any:
                    note()
                    return super().select(*args, **kwargs)

            waiting.DefaultSelector = Noted
            try:
                yield
            finally:
                waiting.DefaultSelector = selector

    def _count_driver_waits(self) -> int:
        """How many cooperative waits one connect makes in the driver (0:
        mysqlclient, which blocks the process in C while it connects)."""
        if self.vendor != "postgresql":
            return 0
        from tests.conftest import monitor_connection

        waits: list[int] = []
        with self._driver_wait(waits.append):
            monitor_connection(self.alias).close()
        return len(waits)

    def driver(self, n: int) -> Any:
        return self._driver_wait(lambda count: stall() if count == n else None)

    # -- after the driver returned ---------------------------------------------
    @contextmanager
    def _wrapped(
        self, owners: list[Any], name: str, before: bool = False
    ) -> Iterator[None]:
        """Stall before or after *name* of each class in *owners*."""
        saved = [(owner, owner.__dict__[name]) for owner in owners]

        def wrap(original: Any) -> Any:
            def stalled(*args: Any, **kwargs: Any) -> Any:
                if before:
                    stall()
                result = original(*args, **kwargs)
                if not before:
                    stall()
                return result

            return stalled

        for owner, original in saved:
            setattr(owner, name, wrap(original))
        try:
            yield
        finally:
            for owner, original in saved:
                setattr(owner, name, original)

    def driver_returned(self) -> Any:
        """The driver connect returned; the pool has not recorded it yet."""
        from djpoolapp import drivers

        owners = [
            klass
            for klass in (
                drivers.PsycopgDriver,
                drivers.Psycopg2Driver,
                drivers.MySQLdbDriver,
            )
            if "connect" in klass.__dict__
        ]
        return self._wrapped(owners, "connect")

    @contextmanager
    def _pool_event(self, name: str) -> Iterator[None]:
        from sqlalchemy import event
        from sqlalchemy.pool import Pool

        def listener(*args: Any) -> None:
            stall()

        event.listen(Pool, name, listener)
        try:
            yield
        finally:
            event.remove(Pool, name, listener)

    def record_created(self) -> Any:
        """SQLAlchemy's record holds it; the pool's connect event runs."""
        return self._pool_event("connect")

    def checked_out(self) -> Any:
        """SQLAlchemy's checkout of the new connection (its checkout event,
        where the pre-ping runs for a reused one)."""
        return self._pool_event("checkout")

    @contextmanager
    def announced(self) -> Iterator[None]:
        """A ``connection_checked_out`` receiver (project code, which may
        wait on I/O) runs."""
        from djpoolapp.signals import connection_checked_out

        def receiver(**kwargs: Any) -> None:
            stall()

        connection_checked_out.connect(receiver, dispatch_uid="djpool-stall")
        try:
            yield
        finally:
            connection_checked_out.disconnect(dispatch_uid="djpool-stall")

    def handed_over(self) -> Any:
        """The pool handed it to Django's get_new_connection()."""
        from djpoolapp import drivers

        owners = [
            klass
            for klass in (drivers.Driver, drivers.Psycopg2Driver)
            if "prepare_for_setup" in klass.__dict__
        ]
        return self._wrapped(owners, "prepare_for_setup", before=True)

    def django_setup(self) -> Any:
        """Django's session set-up of the new connection (stock too)."""
        from django.db import connections

        klass = type(connections[self.alias])
        owner = next(k for k in klass.__mro__ if "init_connection_state" in k.__dict__)
        return self._wrapped([owner], "init_connection_state", before=True)

    def all(self) -> dict[str, Callable[[], Any]]:
        points: dict[str, Callable[[], Any]] = {}
        for n in range(1, self.driver_waits + 1):
            points[f"driver wait {n}"] = lambda n=n: self.driver(n)
        if self.pooled:
            points["driver returned"] = self.driver_returned
            points["record created"] = self.record_created
            points["checked out"] = self.checked_out
            points["announced"] = self.announced
            points["handed over"] = self.handed_over
            for n in range(1, self.driver_waits + 1):
                # The idle connection is dead: the pre-ping replaces it.
                points[f"replacing, driver wait {n}"] = lambda n=n: self.driver(n)
        points["django set-up"] = self.django_setup
        return points


def main(alias: str, mode: str) -> dict[str, Any]:
    gc.disable()  # nothing below may depend on when the collector runs
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    django.setup()
    from tests.modes import apply_environment

    apply_environment()  # DJPOOL_TEST_POOL_MODE (tests/modes.py)
    from django.db import connections
    from django.test.utils import override_settings

    import djpoolapp
    from djpoolapp import patch
    from tests.conftest import client_ports_of_group, monitor_connection

    db = connections.settings[alias]
    db["NAME"] = db["TEST"]["NAME"]  # the parent's test database
    pooled = mode == "pooled"
    if not pooled:
        patch.uninstall()
    # ping_after_idle=0: the "replacing" points' dead idle connection is
    # pinged at its checkout.
    override_settings(
        DJPOOL_OPTIONS={"aliases": {alias: {"pool_size": 2, "ping_after_idle": 0}}}
    ).enable()
    connection = connections[alias]
    vendor = connection.vendor
    monitor = monitor_connection(alias)
    group = os.getpgrp()

    def sessions() -> list[int]:
        """Client ports of this process's sessions that the server lists on
        the test database (or still starting up)."""
        cursor = monitor.cursor()
        cursor.execute(SESSIONS_SQL[vendor], [db["NAME"]])
        rows = cursor.fetchall()
        cursor.close()
        ours = client_ports_of_group(group)
        ports = []
        for (client,) in rows:
            port = str(client).rpartition(":")[2] if vendor == "mysql" else client
            if port is not None and int(port) in ours:
                ports.append(int(port))
        return ports

    def left(seconds: float = 3.0) -> int:
        """Sessions of this process still listed after *seconds* (a closed
        session leaves the server's list asynchronously)."""
        deadline = time.monotonic() + seconds
        while (found := sessions()) and time.monotonic() < deadline:
            time.sleep(0.02)
        return len(found)

    def kill_all() -> None:
        cursor = monitor.cursor()
        if vendor == "postgresql":
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                [db["NAME"]],
            )
        else:
            cursor.execute(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s "
                "AND ID <> CONNECTION_ID()",
                [db["NAME"]],
            )
            for (session,) in cursor.fetchall():
                try:
                    monitor.cursor().execute(f"KILL CONNECTION {int(session)}")
                except Exception:
                    pass
        cursor.close()

    points = Points(alias, pooled)
    results: dict[str, Any] = {}
    for name, point in points.all().items():
        connections.close_all()
        djpoolapp.dispose()
        if name.startswith("replacing"):
            connection.ensure_connection()  # one idle connection ...
            connection.close()
            kill_all()  # ... whose session the server ended
            left()
        interrupted = False
        try:
            with point(), gevent.Timeout(TIMEOUT):
                connection.ensure_connection()
        except gevent.Timeout:
            interrupted = True
        connection.close()  # the end of the request
        checked_out = djpoolapp.pool_status(alias)[alias].checked_out if pooled else 0
        djpoolapp.dispose()
        found = left()
        after_gc = found
        if found:
            gc.collect()
            after_gc = left()
            kill_all()
        results[name] = {
            "interrupted": interrupted,
            "left": found,
            "left_after_gc": after_gc,
            "checked_out": checked_out,
        }
    return {"driver_waits": points.driver_waits, "points": results}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])), flush=True)
