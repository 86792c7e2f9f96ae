"""``manage.py demo [--requests N]``: pooling at work, seen from the servers.

Migrates both databases, adds a few rows if they are missing, then serves N
GETs of ``/api/summary/`` (queries on ``default`` and ``legacy``) through
Django's own ``WSGIHandler`` -- request_started/request_finished included, so
Django opens and closes its connections exactly as under a WSGI server with
``CONN_MAX_AGE = 0`` -- first as stock Django (djpoolapp's patches undone with
``djpoolapp.patch.uninstall()``), then with djpoolapp.  It prints each
request's time and the sessions each server has open on its database, then
how many distinct server sessions served the requests.

Safe to re-run: migrations and rows are idempotent, and an advisory lock on
the unpooled ``direct`` alias keeps two demos on one database from counting
each other's sessions.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from wsgiref.util import setup_testing_defaults

from crm.models import Customer
from django.core.handlers.wsgi import WSGIHandler
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections, transaction

import djpoolapp
from catalog.models import Product
from djpoolapp import patch

PATH = "/api/summary/"
ALIASES = ("default", "legacy")
LOCK_KEY = 0x6A70_6F6F  # "jpoo": any constant both demo runs agree on
PRODUCTS = [
    ("Espresso cup", "4.50", 120),
    ("Teapot", "24.00", 30),
    ("Tea towel", "6.00", 80),
]
CUSTOMERS = ["Ada Lovelace", "Grace Hopper", "Margaret Hamilton"]

COUNT_SQL = {
    "postgresql": "SELECT count(*) FROM pg_stat_activity WHERE datname = "
    "current_database() AND backend_type = 'client backend' "
    "AND pid <> pg_backend_pid() AND pid <> %s",
    "mysql": "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
    "WHERE DB = DATABASE() AND ID <> CONNECTION_ID() AND ID <> %s",
}

#: Whether one session (by pg_backend_pid() / CONNECTION_ID()) is listed.
LISTED_SQL = {
    "postgresql": "SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
    "mysql": "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %s",
}


class Monitor:
    """An unpooled driver connection counting the sessions on *alias*'s database."""

    def __init__(self, alias: str, exclude: int = 0) -> None:
        wrapper = connections[alias]
        self.vendor = wrapper.vendor
        database = type(wrapper).Database
        module = getattr(database, "djpool_driver_module", database)
        self.conn = module.connect(**wrapper.get_connection_params())
        if self.vendor == "mysql":
            self.conn.autocommit(True)
        else:
            self.conn.autocommit = True
        self.exclude = exclude  # e.g. the session holding the demo's lock

    def sessions(self) -> int:
        cursor = self.conn.cursor()
        try:
            cursor.execute(COUNT_SQL[self.vendor], [self.exclude])
            return int(cursor.fetchone()[0])
        finally:
            cursor.close()

    def wait_gone(self, session: Any, seconds: float = 2.0) -> None:
        """Wait until the server no longer lists *session*, which its client
        has closed: the server ends a session a moment after its client
        hangs up (longer on a busy machine), and it is not open any more."""
        deadline = time.monotonic() + seconds
        cursor = self.conn.cursor()
        try:
            while time.monotonic() < deadline:
                cursor.execute(LISTED_SQL[self.vendor], [session])
                if not int(cursor.fetchone()[0]):
                    return
                time.sleep(0.005)
        finally:
            cursor.close()

    def close(self) -> None:
        self.conn.close()


class Phase:
    """Per-request times and server sessions of one run of N requests."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.times: list[float] = []
        self.session_ids: dict[str, set[Any]] = {alias: set() for alias in ALIASES}
        self.open_after: dict[str, list[int]] = {alias: [] for alias in ALIASES}

    def ms(self, which: str) -> float:
        times = sorted(self.times)
        if which == "mean":
            return statistics.fmean(times) * 1000
        if which == "median":
            return statistics.median(times) * 1000
        return times[round(0.95 * (len(times) - 1))] * 1000  # p95


def serve(handler: WSGIHandler, path: str) -> tuple[int, bytes]:
    """One GET through Django's WSGI handler, as a WSGI server runs it."""
    environ: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        statuses.append(status)

    response = handler(environ, start_response)
    try:
        body = b"".join(response)
    finally:
        response.close()  # request_finished: Django closes its connections
    return int(statuses[0].split()[0]), body


def close_request_connections() -> None:
    for alias in ALIASES:
        connections[alias].close()


class Command(BaseCommand):
    help = (
        "Migrate both databases, then serve N requests that query both through "
        "Django's WSGIHandler without and with djpoolapp, printing per-request "
        "time and server-side session counts."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--requests", type=int, default=200, help="requests per run (default 200)"
        )

    def handle(self, *args: Any, requests: int, verbosity: int, **options: Any) -> None:
        if requests < 1:
            raise CommandError("--requests must be at least 1")
        self.verbosity = verbosity
        for alias in ALIASES:
            call_command("migrate", database=alias, verbosity=0, interactive=False)
        self.seed()
        with self.demo_lock() as lock_pid:
            monitors = {
                alias: Monitor(alias, exclude=lock_pid if alias == "default" else 0)
                for alias in ALIASES
                if connections[alias].vendor in COUNT_SQL
            }
            try:
                self.run(requests, monitors)
            finally:
                for monitor in monitors.values():
                    monitor.close()

    def seed(self) -> None:
        with transaction.atomic(using="default"):
            for name, price, stock in PRODUCTS:
                Product.objects.get_or_create(
                    name=name, defaults={"price": price, "stock": stock}
                )
        with transaction.atomic(using="legacy"):
            for name in CUSTOMERS:
                Customer.objects.get_or_create(name=name)

    @contextmanager
    def demo_lock(self) -> Iterator[int]:
        """A session-level advisory lock, on the unpooled ``direct`` alias.

        Session state like this is what the opt-out is for: a pooled
        connection would be handed to other requests with the lock held.
        """
        connection = connections["direct"]
        if connection.vendor != "postgresql":
            yield 0
            return
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_try_advisory_lock(%s), pg_backend_pid()", [LOCK_KEY]
            )
            locked, pid = cursor.fetchone()
        if not locked:
            connection.close()
            raise CommandError(
                "Another `demo` is running against this database; its server "
                "sessions would be counted with this one's. Try again later."
            )
        try:
            yield pid
        finally:
            connection.close()  # ends the session, and with it the lock

    def run(self, requests: int, monitors: dict[str, Monitor]) -> None:
        handler = WSGIHandler()
        pooled = patch.is_installed()
        self.header(requests, pooled)
        serve(handler, PATH)  # warm-up: URLconf, imports (not measured)
        close_request_connections()
        try:
            patch.uninstall()
            without = self.phase(
                handler, "without djpoolapp", requests, monitors, closed=True
            )
        finally:
            close_request_connections()
            if pooled:
                patch.install_for_databases()
        djpoolapp.dispose()  # start from empty pools: the first request connects
        with_pool = self.phase(
            handler, "with djpoolapp" if pooled else "again (djpoolapp not active)",
            requests, monitors, closed=not pooled,
        )  # fmt: skip
        self.summary(without, with_pool, monitors)

    def header(self, requests: int, pooled: bool) -> None:
        from config.databases import describe

        self.stdout.write(
            f"djpoolapp demo: {requests} x GET {PATH} through Django's WSGIHandler "
            "(CONN_MAX_AGE=0), each querying both databases"
        )
        for alias in ALIASES:
            self.stdout.write(
                f"  {alias:<8} {describe(connections[alias].settings_dict)}"
            )
        if not pooled:
            self.stdout.write(
                self.style.WARNING(
                    "  djpoolapp is not active (DJPOOL_DISABLE set?): both runs are unpooled"
                )
            )

    def phase(
        self,
        handler: WSGIHandler,
        label: str,
        requests: int,
        monitors: dict[str, Monitor],
        closed: bool = False,
    ) -> Phase:
        """*requests* requests; *closed*: Django closes each request's
        sessions (no pool), which are counted once the server has ended
        them."""
        result = Phase(label)
        self.stdout.write(f"\n--- {label} ---")
        columns = "".join(f"  {alias + ' open/new':>16}" for alias in monitors)
        self.stdout.write(f"{'request':>8}  {'ms':>7}{columns}")
        for number in range(1, requests + 1):
            started = time.perf_counter()
            status, body = serve(handler, PATH)
            result.times.append(time.perf_counter() - started)
            if status != 200:
                raise CommandError(f"GET {PATH} answered {status}: {body[:300]!r}")
            sessions = json.loads(body)["sessions"]
            for alias, session in sessions.items():
                result.session_ids[alias].add(session)
            cells = []
            for alias, monitor in monitors.items():
                if closed and alias in sessions:
                    monitor.wait_gone(sessions[alias])
                open_now = monitor.sessions()
                result.open_after[alias].append(open_now)
                cells.append(
                    f"  {f'{open_now} / {len(result.session_ids[alias])}':>16}"
                )
            if (
                self.verbosity >= 2
                or number <= 5
                or number % 50 == 0
                or number == requests
            ):
                self.stdout.write(
                    f"{number:>8}  {result.times[-1] * 1000:>7.2f}{''.join(cells)}"
                )
            elif number == 6:
                self.stdout.write(f"{'...':>8}  (every 50th shown; -v 2 shows all)")
        return result

    def summary(
        self, without: Phase, with_pool: Phase, monitors: dict[str, Monitor]
    ) -> None:
        out = self.stdout.write
        out(
            f"\nSummary of {len(without.times)} requests each{'':>9}without djpoolapp  with djpoolapp"
        )
        for which in ("mean", "median", "p95"):
            label = f"time per request, {which} (ms)"
            out(f"  {label:<42}{without.ms(which):>17.2f}{with_pool.ms(which):>16.2f}")
        for alias in monitors:
            label = f"{alias}: server sessions used"
            used = len(without.session_ids[alias]), len(with_pool.session_ids[alias])
            out(f"  {label:<42}{used[0]:>17}{used[1]:>16}")
            # The median: another client's session may come and go (the
            # unpooled run waits for each session Django closed to end).
            label = f"{alias}: sessions open between requests"
            typical = [
                round(statistics.median(phase.open_after[alias]))
                for phase in (without, with_pool)
            ]
            out(f"  {label:<42}{typical[0]:>17}{typical[1]:>16}")
        for alias in ALIASES:
            if alias not in monitors:
                out(
                    f"  {alias}: {connections[alias].vendor}, no server sessions to count"
                )
        status = djpoolapp.pool_status()
        if status:
            out("\npool_status() after the pooled run (counters since start-up):")
            for alias, pool in status.items():
                out(
                    f"  {alias}: pool_size={pool.pool_size} checked_out={pool.checked_out} "
                    f"idle={pool.idle} opened={pool.opened} invalidated={pool.invalidated} "
                    f"timeouts={pool.timeouts}"
                )
        out(
            "\nWithout the pool every request opens and closes a server session per "
            "database; with it the same sessions serve every request."
        )
