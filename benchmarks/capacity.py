"""Capacity of ``pool_mode="transaction"`` against ``"request"``:
``python benchmarks/capacity.py [--seconds 30] [--server all] [--database all]``.

A view runs a query, waits ``--sleep`` seconds (0.2: the stand-in for a call
to an external API), and runs another query, against a pool of
``pool_size=4, max_overflow=0, timeout=5``, for ``--seconds``:

- ``gthread``: ``--threads`` threads (64, like gunicorn's gthread worker with
  ``--threads 64``) send requests through Django's real ``WSGIHandler``
  (request_started / request_finished, so Django closes its connections at
  request end as in production); the view sleeps with ``time.sleep``;
- ``uvicorn``: a real uvicorn server (one worker, Django's ``ASGIHandler``)
  answers ``--concurrency`` (100) keep-alive connections of ``wrk``; the view
  is async: ``await sync_to_async(query)()`` (what the async ORM does),
  ``await asyncio.sleep()``, ``await sync_to_async(query)()``.

Each (database, mode) run is a fresh interpreter (``--worker``).  A monitor
connection, opened straight with the driver, samples every 50 ms how many
server sessions the worker holds: PostgreSQL by ``application_name``
(``pg_stat_activity``), MariaDB/MySQL by database (a ``djpool_capacity``
database of its own, created if missing, ``information_schema.PROCESSLIST``).

Figures: requests answered 200, errors (any other status, e.g. the 500 of a
``PoolTimeout``; for uvicorn also wrk's socket errors and timeouts),
requests per second, latency p50/p99, peak server sessions, distinct server
sessions that answered (gthread only: wrk does not keep the bodies).  With ``--json FILE`` the results are
written there too.  The servers are private ones started for the
invocation and removed at its end, as for ``run.py`` (``--servers``,
``benchmarks/servers.py``); ``DJPOOL_BENCH_POSTGRES_URL`` /
``DJPOOL_BENCH_MYSQL_URL`` name external ones instead.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import servers  # noqa: E402

MYSQL_DATABASE = "djpool_capacity"
SESSION_ID = {
    "postgresql": "SELECT pg_backend_pid()",
    "mysql": "SELECT CONNECTION_ID()",
}

#: Seconds the view waits between its queries (set by the worker).
SLEEP = 0.2


# -- the view (this module is the worker's ROOT_URLCONF) ----------------------
def view(request: Any) -> Any:
    from django.db import connection
    from django.http import HttpResponse

    sql = SESSION_ID[connection.vendor]
    queries = int(request.GET.get("queries", "2"))  # --cost: 1 or 3, no sleep
    seen = []
    for number in range(queries):
        if number == 1 and queries == 2:
            time.sleep(SLEEP)
        with connection.cursor() as cursor:
            cursor.execute(sql)
            seen.append(str(cursor.fetchone()[0]))
    return HttpResponse(" ".join(seen))


def _query() -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(SESSION_ID[connection.vendor])
        return str(cursor.fetchone()[0])


async def async_view(request: Any) -> Any:
    """uvicorn's view: async query, awaited sleep, async query."""
    from asgiref.sync import sync_to_async
    from django.http import HttpResponse

    first = await sync_to_async(_query)()
    await asyncio.sleep(SLEEP)
    second = await sync_to_async(_query)()
    return HttpResponse(f"{first} {second}")


def _urlpatterns() -> list[Any]:
    from django.urls import path

    return [path("", view), path("async/", async_view)]


def __getattr__(name: str) -> Any:  # Django reads urlpatterns after setup
    if name == "urlpatterns":
        return _urlpatterns()
    raise AttributeError(name)


# -- one run -------------------------------------------------------------------
def _database(database: str, application_name: str) -> dict[str, Any]:
    import dj_database_url

    if database == "postgres":
        entry = dj_database_url.parse(servers.url("postgres"), conn_max_age=0)
        entry["OPTIONS"] = {"application_name": application_name}
    else:
        entry = dj_database_url.parse(servers.url("mysql"), conn_max_age=0)
        entry["NAME"] = MYSQL_DATABASE
        entry["OPTIONS"] = {"charset": "utf8mb4"}
    return dict(entry)


def _monitor(entry: dict[str, Any], database: str) -> tuple[Any, str, list[Any]]:
    """An unpooled connection and the query counting the worker's sessions."""
    if database == "postgres":
        try:
            import psycopg as module
        except ImportError:  # pragma: no cover - psycopg2-only installs
            import psycopg2 as module  # type: ignore[no-redef]
        conn = module.connect(
            host=entry["HOST"], port=int(entry["PORT"] or 5432), user=entry["USER"],
            password=entry["PASSWORD"], dbname=entry["NAME"],
        )  # fmt: skip
        conn.autocommit = True
        # djpoolapp appends its tag to the alias's own application_name.
        query = (
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
            "OR application_name LIKE %s"
        )
        name = entry["OPTIONS"]["application_name"]
        return conn, query, [name, name + " %"]
    import MySQLdb

    conn = MySQLdb.connect(
        host=entry["HOST"], port=int(entry["PORT"] or 3306), user=entry["USER"],
        password=entry["PASSWORD"],
    )  # fmt: skip
    conn.autocommit(True)
    cursor = conn.cursor()
    cursor.execute(f"CREATE DATABASE IF NOT EXISTS {MYSQL_DATABASE}")
    cursor.close()
    query = (
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = %s "
        "AND ID <> CONNECTION_ID()"
    )
    return conn, query, [MYSQL_DATABASE]


class SessionPeak:
    """Samples every 50 ms, in a thread, how many server sessions the
    worker holds (the monitor connection of ``_monitor``)."""

    def __init__(self, entry: dict[str, Any], database: str) -> None:
        self.monitor, self.sql, self.params = _monitor(entry, database)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch)

    def _watch(self) -> None:
        cursor = self.monitor.cursor()
        while not self._stop.wait(0.05):
            cursor.execute(self.sql, self.params)
            self.peak = max(self.peak, int(cursor.fetchone()[0]))
        cursor.close()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.monitor.close()
        return self.peak


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """Run one (server, database, mode) load in this interpreter; return its
    figures."""
    if args.server == "uvicorn":
        return uvicorn_worker(args)
    from benchmarks import capacity  # the ROOT_URLCONF module, not __main__

    capacity.SLEEP = args.sleep
    application_name = f"djpool-capacity-{os.getpid()}"
    entry = _database(args.database, application_name)
    monitor, count_sql, count_params = _monitor(entry, args.database)

    _configure(args, entry)
    from django.core.handlers.wsgi import WSGIHandler
    from django.db import connections

    handler = WSGIHandler()
    environ_base = {
        "REQUEST_METHOD": "GET", "PATH_INFO": "/", "SERVER_NAME": "bench",
        "SERVER_PORT": "80", "wsgi.url_scheme": "http", "wsgi.input": None,
        "wsgi.errors": sys.stderr,
    }  # fmt: skip
    lock = threading.Lock()
    latencies: list[float] = []
    errors: dict[str, int] = {}
    sessions: set[str] = set()
    peak = 0
    stop = threading.Event()
    start_gate = threading.Barrier(args.threads + 1)

    def client() -> None:
        start_gate.wait()
        while not stop.is_set():
            environ = dict(environ_base, **{"wsgi.input": io.BytesIO()})
            statuses: list[str] = []
            began = time.perf_counter()
            response = handler(
                environ, lambda s, h, e=None, seen=statuses: seen.append(s)
            )
            try:
                body = b"".join(response)
            finally:
                response.close()
            elapsed = time.perf_counter() - began
            with lock:
                if statuses[0].startswith("200"):
                    latencies.append(elapsed)
                    sessions.update(body.decode().split())
                else:
                    errors[statuses[0]] = errors.get(statuses[0], 0) + 1
        connections.close_all()

    def watch() -> None:
        nonlocal peak
        cursor = monitor.cursor()
        while not stop.wait(0.05):
            cursor.execute(count_sql, count_params)
            peak = max(peak, int(cursor.fetchone()[0]))
        cursor.close()

    threads = [threading.Thread(target=client) for _ in range(args.threads)]
    for thread in threads:
        thread.start()
    watcher = threading.Thread(target=watch)
    watcher.start()
    start_gate.wait()
    began = time.perf_counter()
    cpu = time.process_time()
    time.sleep(args.seconds)
    stop.set()
    for thread in threads:
        thread.join()
    duration = time.perf_counter() - began
    cpu = time.process_time() - cpu
    watcher.join()
    monitor.close()
    from djpoolapp import pool_status

    status = pool_status("default")["default"]
    latencies.sort()
    return {
        "server": "gthread",
        "database": args.database,
        "mode": args.mode,
        "threads": args.threads,
        "sleep": args.sleep,
        "pool_size": args.pool_size,
        "seconds": round(duration, 2),
        "ok": len(latencies),
        "errors": sum(errors.values()),
        "error_statuses": errors,
        "req_per_s": round(len(latencies) / duration, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1)
        if latencies
        else None,
        "cpu_ms_per_req": round(cpu * 1000 / max(len(latencies), 1), 2),
        "peak_server_sessions": peak,
        "distinct_sessions": len(sessions),
        "opened": status.opened,
        "invalidated": status.invalidated,
        "recycled": status.recycled,
        "timeouts": status.timeouts,
        "pins": status.pins,
    }


def _free_port() -> int:
    """The test harness's :func:`tests.harness.free_port` (imported here, as
    ``servers.py`` imports the harness only when it needs it)."""
    from tests.harness import free_port

    return free_port()


def parse_wrk(output: str) -> dict[str, Any]:
    """wrk's figures: requests, seconds, non-2xx responses, socket errors by
    kind, latency p50/p99 in ms (``--latency``)."""
    done = re.search(r"(\d+) requests in ([\d.]+)(m?s)", output)
    if done is None:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    found: dict[str, Any] = {
        "requests": int(done.group(1)),
        "seconds": float(done.group(2)) / (1000 if done.group(3) == "ms" else 1),
    }
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    found["non_2xx"] = int(non_2xx.group(1)) if non_2xx else 0
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
        output,
    )
    kinds = ("connect", "read", "write", "timeout")
    found["socket_errors"] = dict(
        zip(kinds, map(int, errors.groups()) if errors else (0,) * 4, strict=True)
    )
    units = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}
    for percentile in ("50", "99"):
        match = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s|m)\s*$",
                          output, re.MULTILINE)  # fmt: skip
        found[f"p{percentile}_ms"] = (
            round(float(match.group(1)) * units[match.group(2)], 1) if match else None
        )
    return found


def uvicorn_worker(args: argparse.Namespace) -> dict[str, Any]:
    """A real uvicorn server in this interpreter (Django's ``ASGIHandler``,
    the async view), loaded by ``wrk`` with ``--concurrency`` connections."""
    import uvicorn

    from benchmarks import capacity

    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("the uvicorn capacity run needs wrk on PATH")
    capacity.SLEEP = args.sleep
    entry = _database(args.database, f"djpool-capacity-{os.getpid()}")
    peak = SessionPeak(entry, args.database)
    _configure(args, entry)
    from django.core.asgi import get_asgi_application

    port = _free_port()
    config = uvicorn.Config(
        get_asgi_application(), host="127.0.0.1", port=port, lifespan="off",
        log_level="critical", access_log=False, backlog=2048,
    )  # fmt: skip
    server = uvicorn.Server(config)
    result: dict[str, Any] = {}

    def load() -> None:
        try:
            while not server.started:
                time.sleep(0.05)
            peak.start()
            result["cpu"] = time.process_time()
            done = subprocess.run(
                [wrk, "-t2", f"-c{args.concurrency}", f"-d{args.seconds:g}s",
                 "--timeout", f"{args.timeout + 5:g}s", "--latency",
                 f"http://127.0.0.1:{port}/async/"],
                capture_output=True, text=True, check=False,
                timeout=args.seconds + 60,
            )  # fmt: skip
            result["wrk"] = done.stdout + done.stderr
            result["cpu"] = time.process_time() - result["cpu"]
            # Requests wrk gave up on may still run: let them end.
            time.sleep(min(args.timeout, 5.0) + 1.0)
            result["peak"] = peak.stop()
        finally:
            server.should_exit = True

    loader = threading.Thread(target=load)
    loader.start()
    server.run()
    loader.join()
    from djpoolapp import pool_status

    status = pool_status("default")["default"]
    figures = parse_wrk(result["wrk"])
    errors = figures["non_2xx"] + sum(figures["socket_errors"].values())
    ok = figures["requests"] - figures["non_2xx"]
    return {
        "server": "uvicorn",
        "database": args.database,
        "mode": args.mode,
        "concurrency": args.concurrency,
        "sleep": args.sleep,
        "pool_size": args.pool_size,
        "seconds": figures["seconds"],
        "ok": ok,
        "errors": errors,
        "error_statuses": {"non_2xx": figures["non_2xx"]} | figures["socket_errors"],
        "req_per_s": round(ok / figures["seconds"], 1),
        "p50_ms": figures["p50_ms"],
        "p99_ms": figures["p99_ms"],
        "cpu_ms_per_req": round(result["cpu"] * 1000 / max(ok, 1), 2),
        "peak_server_sessions": result["peak"],
        "distinct_sessions": None,
        "opened": status.opened,
        "invalidated": status.invalidated,
        "recycled": status.recycled,
        "timeouts": status.timeouts,
        "pins": status.pins,
        "checked_out_after": status.checked_out,
    }


def _configure(args: argparse.Namespace, entry: dict[str, Any]) -> None:
    from django.conf import settings

    settings.configure(
        SECRET_KEY="djpoolapp-capacity",
        DEBUG=False,
        USE_TZ=True,
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF="benchmarks.capacity",
        MIDDLEWARE=[],
        INSTALLED_APPS=["djpoolapp"],
        DATABASES={"default": entry},
        DJPOOL_OPTIONS={
            "pool_size": args.pool_size,
            "max_overflow": 0,
            "timeout": args.timeout,
            "pool_mode": args.mode,
        },
        LOGGING_CONFIG=None,
    )
    import django

    django.setup()
    logging.disable(logging.CRITICAL)  # a PoolTimeout's 500 is counted, not printed


def cost_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Single-thread median µs per request of views with 1 and 3 queries
    (no sleep), in *args.mode*: "persistent" (stock Django,
    ``CONN_MAX_AGE=None``), "request" or "transaction"."""
    entry = _database(args.database, f"djpool-cost-{os.getpid()}")
    if args.database == "mysql":
        _monitor(entry, args.database)[0].close()  # creates the database
    persistent = args.mode == "persistent"
    entry["CONN_MAX_AGE"] = None if persistent else 0
    from django.conf import settings

    settings.configure(
        SECRET_KEY="djpoolapp-capacity", DEBUG=False, USE_TZ=True,
        ALLOWED_HOSTS=["*"], ROOT_URLCONF="benchmarks.capacity", MIDDLEWARE=[],
        INSTALLED_APPS=[] if persistent else ["djpoolapp"],
        DATABASES={"default": entry},
        DJPOOL_OPTIONS={"pool_mode": "request" if persistent else args.mode},
        LOGGING_CONFIG=None,
    )  # fmt: skip
    import django

    django.setup()
    from django.core.handlers.wsgi import WSGIHandler

    handler = WSGIHandler()
    found: dict[str, Any] = {"database": args.database, "mode": args.mode}
    for queries in (1, 3):
        environ = {
            "REQUEST_METHOD": "GET", "PATH_INFO": "/", "SERVER_NAME": "bench",
            "SERVER_PORT": "80", "wsgi.url_scheme": "http",
            "QUERY_STRING": f"queries={queries}", "wsgi.errors": sys.stderr,
        }  # fmt: skip
        times = []
        for number in range(args.requests + 200):
            started = time.perf_counter()
            request_environ = dict(environ, **{"wsgi.input": io.BytesIO()})
            response = handler(request_environ, lambda s, h, e=None: None)
            b"".join(response)
            response.close()
            if number >= 200:  # warm-up first
                times.append(time.perf_counter() - started)
        found[f"{queries}_query_us"] = round(statistics.median(times) * 1e6, 1)
    return found


def run(database: str, mode: str, **options: Any) -> dict[str, Any]:
    """One run in a fresh interpreter; *options* are the command-line ones."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker",
               "--database", database, "--mode", mode]  # fmt: skip
    for name, value in options.items():
        flag = f"--{name.replace('_', '-')}"
        command += [flag] if value == "" else [flag, str(value)]
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, check=False, timeout=600
    )
    if done.returncode != 0:
        raise RuntimeError(f"capacity worker failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _table(results: list[dict[str, Any]]) -> str:
    columns = ("server", "database", "mode", "ok", "errors", "req_per_s", "p50_ms",
               "p99_ms", "cpu_ms_per_req", "peak_server_sessions",
               "distinct_sessions", "pins")  # fmt: skip
    rows = [columns] + [tuple(str(r[c]) for c in columns) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", default="all",
                        choices=("all", "postgres", "mysql"))  # fmt: skip
    parser.add_argument(
        "--mode",
        default="both",
        choices=("both", "transaction", "request", "persistent"),
    )
    parser.add_argument("--server", default="all",
                        choices=("all", "gthread", "uvicorn"))  # fmt: skip
    parser.add_argument("--threads", type=int, default=64,
                        help="gthread: client threads.")  # fmt: skip
    parser.add_argument("--concurrency", type=int, default=100,
                        help="uvicorn: concurrent connections.")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--sleep", type=float, default=0.2)
    parser.add_argument("--pool-size", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    parser.add_argument("--cost", action="store_true", help="Measure the "
                        "single-thread cost per request instead (persistent, "
                        "request and transaction mode; views of 1 and 3 "
                        "queries without sleep).")  # fmt: skip
    parser.add_argument("--requests", type=int, default=3000,
                        help="Timed requests per view with --cost.")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3, help="With --cost.")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    servers.add_argument(parser)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(cost_worker(args) if args.cost else worker(args)))
        return 0
    databases = ["postgres", "mysql"] if args.database == "all" else [args.database]
    return servers.run_on_servers(
        args.servers, databases, lambda _choice: _measure(args, databases)
    )


def _measure(args: argparse.Namespace, databases: list[str]) -> int:
    """The runs of *args* on *databases*, on the servers already chosen."""
    if args.cost:
        return _cost(args, databases)
    modes = ["transaction", "request"] if args.mode == "both" else [args.mode]
    servers = ["gthread", "uvicorn"] if args.server == "all" else [args.server]
    options = {"threads": args.threads, "concurrency": args.concurrency,
               "seconds": args.seconds, "sleep": args.sleep,
               "pool_size": args.pool_size, "timeout": args.timeout}  # fmt: skip
    results = [run(db, mode, server=server, **options)
               for server in servers for db in databases for mode in modes]  # fmt: skip
    print(
        f"gthread: {args.threads} threads (WSGIHandler); uvicorn: "
        f"{args.concurrency} connections (ASGIHandler, async view); view: "
        f"query, sleep {args.sleep} s, query; pool_size={args.pool_size}, "
        f"max_overflow=0, timeout={args.timeout}; {args.seconds} s per run"
    )
    print(_table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _cost(args: argparse.Namespace, databases: list[str]) -> int:
    modes = ("persistent", "request", "transaction")
    rows = []
    for database in databases:
        runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
        for _ in range(args.rounds):  # interleaved: drift hits every mode
            for mode in modes:
                runs[mode].append(run(database, mode, cost="", requests=args.requests))
        for mode in modes:
            rows.append(
                {"database": database, "mode": mode}
                | {
                    key: statistics.median(r[key] for r in runs[mode])
                    for key in ("1_query_us", "3_query_us")
                }
            )
    print(f"single thread, median µs per request (median of {args.rounds} "
          f"interleaved runs of {args.requests} requests)")  # fmt: skip
    for database in databases:
        base = {r["mode"]: r for r in rows if r["database"] == database}
        for mode in modes:
            row = base[mode]
            print(
                f"{database:<9}{mode:<12}"
                + "".join(
                    f"{key.split('_')[0]} query: {row[key]:8.1f} µs "
                    f"(x{row[key] / base['persistent'][key]:.3f} persistent, "
                    f"x{row[key] / base['request'][key]:.3f} request)   "
                    for key in ("1_query_us", "3_query_us")
                )
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
