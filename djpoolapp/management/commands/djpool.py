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

from djpoolapp.bench import BenchError, BenchResult, CheckReport, check_alias, run_bench
from djpoolapp.pool import pooled_backends
from djpoolapp.status import pool_status

STATUS_COLUMNS = (
    ("alias", "alias"),
    ("vendor", "vendor"),
    ("database", "database"),
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
            self.status(options["database"], options["json"])
        elif action == "check":
            self.check_pools(options["database"])
        else:
            self.bench(
                options["database"], options["requests"], options["threads"],
                options["verbosity"],
            )  # fmt: skip

    # -- status ----------------------------------------------------------------
    def status(self, alias: str | None, as_json: bool) -> None:
        try:
            statuses = pool_status(alias)
        except ValueError as error:
            raise CommandError(str(error)) from None
        if as_json:
            data = {name: status.as_dict() for name, status in statuses.items()}
            self.stdout.write(json.dumps(data, indent=2))
            return
        if not statuses:
            self.stdout.write("No database alias is pooled by djpoolapp.")
            return
        rows = [[title for _, title in STATUS_COLUMNS]]
        for status in statuses.values():
            values = status.as_dict()
            rows.append(
                [
                    str(values[key] if values[key] != "" else "-")
                    for key, _ in STATUS_COLUMNS
                ]
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            cells = [
                cell.ljust(width) if i < 3 else cell.rjust(width)
                for i, (cell, width) in enumerate(zip(row, widths, strict=True))
            ]
            self.stdout.write("  ".join(cells).rstrip())
        self.stdout.write(
            "(This process's pools. A running site's pools live in its server "
            "processes: read pool_status() or the Prometheus metrics there.)"
        )

    # -- check -----------------------------------------------------------------
    def check_pools(self, alias: str | None) -> None:
        if alias is not None and alias not in connections.settings:
            raise CommandError(f"database alias '{alias}' is not in DATABASES")
        aliases = [alias] if alias else list(pooled_backends())
        if not aliases:
            raise CommandError("no database alias is pooled by djpoolapp")
        failures = []
        for name in aliases:
            try:
                report = check_alias(name)
            except BenchError as error:
                failures.append(str(error))
                self.stderr.write(f"{name}: FAILED: {error}")
                continue
            self._print_report(report)
        if failures:
            raise CommandError("djpool check failed: " + "; ".join(failures))
        self.stdout.write(
            self.style.SUCCESS(
                f"OK: {len(aliases)} alias(es) reachable through the pool."
            )
        )

    def _print_report(self, report: CheckReport) -> None:
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
             "TCP, TLS, authentication)"),
            ("checkout", f"{report.checkout_ms:8.3f} ms  (Django gets a pooled "
             "connection)"),
            ("checkin", f"{report.checkin_ms:8.3f} ms  (Django closes it: reset, "
             "back to the pool)"),
            ("round trip", f"{report.round_trip_ms:8.3f} ms  (SELECT 1 on the "
             "pooled connection)"),
            ("capacity", f"pool_size {report.pool_size} + max_overflow "
             f"{report.max_overflow} = {capacity} per process{limit}"),
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
        def progress(label: str, done: int, total: int) -> None:
            if verbosity:
                self.stderr.write(f"  {label}: {done}/{total} requests")

        try:
            result = run_bench(alias, requests, threads, progress)
        except BenchError as error:
            raise CommandError(f"djpool bench: {error}") from None
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
