"""``manage.py djpool status | check | bench``: is the pool working, is it
sized right, and what does it save?

Only argument parsing and formatting live here; the measurements are in
:mod:`djpoolapp.bench` and the figures in :func:`djpoolapp.pool_status`.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from djpoolapp.bench import (
    BenchError,
    BenchResult,
    CheckReport,
    LineProgress,
    check_alias,
    run_bench,
)
from djpoolapp.pool import pooled_backends
from djpoolapp.status import (
    ServerView,
    nothing_pooled_reason,
    pool_status,
    server_sessions,
)

STATUS_COLUMNS = (
    ("alias", "alias"),
    ("vendor", "vendor"),
    ("database", "database"),
    ("pool_mode", "pool_mode"),
    ("pool_size", "size"),
    ("max_overflow", "max_overflow"),
    ("checked_out", "checked_out"),
    ("idle", "idle"),
    ("overflow", "overflow"),
    ("opened", "opened"),
    ("recycled", "recycled"),
    ("invalidated", "invalidated"),
    ("timeouts", "timeouts"),
)

#: What ``djpool check`` says each ``pool_mode`` means.
POOL_MODES = {
    "request": "a connection per request, from its first query to its end",
    "transaction": "a connection only while a transaction, a cursor or pinned "
    "session state needs it",
}


class Command(BaseCommand):
    help = (
        "Inspect djpoolapp's connection pools: 'status' prints pool_status(), "
        "'check' connects through each pool and times it, 'bench' compares "
        "requests without and with the pool."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(
            dest="action", required=True, metavar="{status,check,bench}"
        )
        status = actions.add_parser(
            "status", help="Pool figures of this process (pool_status())."
        )
        status.add_argument("--database", help="Only this alias.")
        status.add_argument("--json", action="store_true", help="Print JSON.")
        status.add_argument(
            "--all", action="store_true", dest="all_processes",
            help="Also show what the database server sees of every process's "
            "pool (sessions per process, idle/active/idle in transaction, "
            "oldest transaction).",
        )  # fmt: skip
        check = actions.add_parser(
            "check",
            help="Connect through each pooled alias: server version, TLS, "
            "connect, checkout and round-trip times.",
        )
        check.add_argument("--database", help="Only this alias.")
        bench = actions.add_parser(
            "bench",
            help="Time N requests through Django's request cycle without, then "
            "with, the pool; read-only.",
        )
        bench.add_argument("--database", default="default", help="Alias to use.")
        bench.add_argument(
            "--requests", type=int, default=500, metavar="N",
            help="Requests per pass (default 500).",
        )  # fmt: skip
        bench.add_argument(
            "--threads", type=int, default=1, metavar="T",
            help="Client threads sending them, each with its own Django "
            "connection (default 1).",
        )  # fmt: skip
        for sub in (status, check, bench):
            # Accept Django's common options after the action name too; the
            # suppressed defaults leave the main parser's values alone.
            sub.add_argument(
                "--traceback", action="store_true", default=argparse.SUPPRESS,
                help="Raise on CommandError exceptions.",
            )  # fmt: skip
            sub.add_argument(
                "-v", "--verbosity", type=int, choices=[0, 1, 2, 3],
                default=argparse.SUPPRESS, help="Verbosity level.",
            )  # fmt: skip

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "status":
            self.status(options["database"], options["json"], options["all_processes"])
        elif action == "check":
            self.check_pools(options["database"])
        else:
            self.bench(
                options["database"], options["requests"], options["threads"],
                options["verbosity"],
            )  # fmt: skip

    # -- status ----------------------------------------------------------------
    def status(self, alias: str | None, as_json: bool, all_processes: bool) -> None:
        try:
            statuses = pool_status(alias)
        except ValueError as error:
            raise CommandError(str(error)) from None
        views = (
            {name: server_sessions(name) for name in statuses} if all_processes else {}
        )
        if as_json:
            data: dict[str, Any] = {
                name: status.as_dict() for name, status in statuses.items()
            }
            for name, view in views.items():
                data[name]["server"] = view.as_dict()
            self.stdout.write(json.dumps(data, indent=2))
            return
        if not statuses:
            self.stdout.write(
                f"No database alias is pooled by djpoolapp: {nothing_pooled_reason()}."
            )
            return
        self._table(
            [[title for _, title in STATUS_COLUMNS]]
            + [
                [
                    str(values[key] if values[key] != "" else "-")
                    for key, _ in STATUS_COLUMNS
                ]
                for values in (status.as_dict() for status in statuses.values())
            ],
            left=4,
        )
        fresh = [name for name, status in statuses.items() if not status.pool_created]
        if fresh:
            self.stdout.write(
                f"{', '.join(fresh)}: no pool created yet in this process (pools "
                "open at the first connection; database and sizes are the "
                "settings')."
            )
        self.stdout.write(
            "(This process's pools. A running site's pools live in its server "
            "processes: 'djpool status --all' shows what the database server "
            "sees of all of them.)"
        )
        for view in views.values():
            self._print_server_view(view)

    def _table(self, rows: list[list[str]], left: int) -> None:
        """Print *rows* in aligned columns, the first *left* ones left-aligned."""
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            cells = [
                cell.ljust(width) if i < left else cell.rjust(width)
                for i, (cell, width) in enumerate(zip(row, widths, strict=True))
            ]
            self.stdout.write("  ".join(cells).rstrip())

    def _print_server_view(self, view: ServerView) -> None:
        self.stdout.write("")
        self.stdout.write(
            self.style.MIGRATE_HEADING(
                f"{view.alias}: sessions the {view.vendor} server has open on this "
                "database, per process"
            )
        )
        if view.error:
            self.stdout.write(f"  {view.error}")
            return
        rows = [
            [
                "host", "pid", "alias", "sessions", "active", "idle",
                "idle_in_tx", "unknown", "oldest_tx_s", "",
            ]
        ]  # fmt: skip
        for row in view.processes:
            rows.append(
                [
                    row.host or "-",
                    "?" if row.pid is None else str(row.pid),
                    row.alias or "?",
                    str(row.sessions),
                    str(row.active),
                    str(row.idle),
                    str(row.idle_in_transaction),
                    str(row.unknown),
                    "-"
                    if row.oldest_transaction is None
                    else f"{row.oldest_transaction:.1f}",
                    "this process" if row.this_process else "",
                ]
            )
        self._table(rows, left=3)
        if not view.processes:
            self.stdout.write("  (no session of a djpoolapp pool)")
        self.stdout.write(
            f"  other sessions on this database (not opened by djpoolapp): "
            f"{view.other_sessions}"
        )
        if view.vendor == "mysql":
            self.stdout.write(
                "  (MySQL/MariaDB: sessions of other processes are grouped by client "
                "host; mysqlclient cannot tag them with their pid.)"
            )

    # -- check -----------------------------------------------------------------
    def check_pools(self, alias: str | None) -> None:
        if alias is not None and alias not in connections.settings:
            raise CommandError(f"database alias '{alias}' is not in DATABASES")
        aliases = [alias] if alias else list(pooled_backends())
        if not aliases:
            raise CommandError(
                f"no database alias is pooled by djpoolapp: {nothing_pooled_reason()}"
            )
        failures = []
        for name in aliases:
            try:
                report = check_alias(name)
            except BenchError as error:
                failures.append(str(error))
                self.stderr.write(f"{name}: FAILED: {error}")
                continue
            self._print_report(report, pool_status(name)[name].pool_mode)
            if report.over_capacity:
                problem = (
                    f"database alias '{name}': pool_size {report.pool_size} + "
                    f"max_overflow {report.max_overflow} = {report.capacity} "
                    "connections per process exceed the server's max_connections "
                    f"{report.max_connections}; lower them in DJPOOL_OPTIONS"
                )
                failures.append(problem)
                self.stderr.write(f"{name}: FAILED: {problem}")
        if failures:
            raise CommandError("djpool check failed: " + "; ".join(failures))
        self.stdout.write(
            self.style.SUCCESS(
                f"OK: {len(aliases)} alias(es) reachable through the pool, "
                "sized within the server's max_connections."
            )
        )

    def _print_report(self, report: CheckReport, pool_mode: str) -> None:
        capacity = report.pool_size + report.max_overflow
        limit = (
            f"; server max_connections {report.max_connections}"
            if report.max_connections is not None
            else ""
        )
        lines = [
            ("server", report.server),
            ("TLS", report.tls),
            ("new connection", f"{report.connect_ms:8.3f} ms  (driver connect: "
             f"{report.connect_steps})"),
            ("checkout", f"{report.checkout_ms:8.3f} ms  (Django gets a pooled "
             "connection)"),
            ("checkin", f"{report.checkin_ms:8.3f} ms  (Django closes it: reset, "
             "back to the pool)"),
            ("round trip", f"{report.round_trip_ms:8.3f} ms  (SELECT 1 on the "
             "pooled connection)"),
            ("pool_mode", f"{pool_mode}  ({POOL_MODES[pool_mode]})"),
            ("capacity", f"pool_size {report.pool_size} + max_overflow "
             f"{report.max_overflow} = {capacity} per process{limit}"
             f"{'  EXCEEDS max_connections' if report.over_capacity else ''}"),
        ]  # fmt: skip
        self.stdout.write(
            self.style.MIGRATE_HEADING(
                f"{report.alias} ({report.vendor}, {report.database})"
            )
        )
        for label, value in lines:
            self.stdout.write(f"  {label:<15} {value}")

    # -- bench -----------------------------------------------------------------
    def bench(self, alias: str, requests: int, threads: int, verbosity: int) -> None:
        # Progress only on a terminal, on one line erased before the table.
        progress = (
            LineProgress(
                lambda text: self.stderr.write(text, str, ending=""),
                self.stderr.flush,
            )
            if verbosity and self.stderr.isatty()
            else None
        )
        try:
            result = run_bench(alias, requests, threads, progress)
        except BenchError as error:
            raise CommandError(f"djpool bench: {error}") from None
        finally:
            if progress is not None:
                progress.clear()
        self._print_bench(result)

    def _print_bench(self, result: BenchResult) -> None:
        run = result.unpooled
        self.stdout.write(
            self.style.MIGRATE_HEADING(
                f"djpool bench: alias '{result.alias}' ({result.vendor}, "
                f"{result.database})"
            )
        )
        self.stdout.write(
            f"  {run.requests} requests, {run.threads} thread(s), through Django's "
            "WSGIHandler, CONN_MAX_AGE=0"
        )
        self.stdout.write(
            f"  {'':<14}{'p50 ms':>9}{'p95 ms':>9}{'requests/s':>13}"
            f"{'server sessions':>17}"
        )
        for run in (result.unpooled, result.pooled):
            sessions = "n/a" if run.sessions is None else str(run.sessions)
            self.stdout.write(
                f"  {run.label:<14}{run.p50:>9.3f}{run.p95:>9.3f}"
                f"{run.requests_per_second:>13.1f}{sessions:>17}"
            )
        self.stdout.write(
            self.style.SUCCESS(
                f"  with the pool: {result.speedup_p50:.1f}x faster at p50, "
                f"{result.speedup_p95:.1f}x at p95, {result.throughput_ratio:.1f}x "
                "the requests/s"
            )
        )
