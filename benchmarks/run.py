"""djpoolapp benchmark suite: ``python benchmarks/run.py [--requests N] [--quick]``.

Compares, in one invocation, the per-request cost of Django's database
connection strategies through Django's real ``WSGIHandler`` (one query per
request, ``CONN_MAX_AGE = 0`` unless stated):

``none``        stock Django, a new server connection per request;
``persistent``  stock Django, ``CONN_MAX_AGE = None``: the limit, a thread-owned
                connection that never leaves;
``native``      Django's own psycopg pool (``OPTIONS["pool"]``; psycopg 3 only);
``dbcp``        django-db-connection-pool (its ENGINE swap), default options;
``djpoolapp``   this app, default options.

on PostgreSQL without TLS, PostgreSQL over TLS (turned on in the local
server when it is off, see ``tls.py``) and MariaDB; with one thread, and
with 8 threads sharing pools of ``pool_size=4`` (``max_overflow=0``).

Each run is a fresh interpreter (``benchmarks/worker.py``), so strategies
never share a patched backend or a pool; the rounds interleave strategies
and the reports take medians over rounds (``report.py`` says why).  Only
127.0.0.1 is contacted unless ``DJPOOL_BENCH_POSTGRES_URL`` /
``DJPOOL_BENCH_MYSQL_URL`` say otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(ROOT))

from benchmarks import monitor, report  # noqa: E402
from benchmarks.tls import TLSUnavailable, ensure_postgres_tls  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark Django connection strategies against djpoolapp.",
        epilog="Figures are comparable only within one invocation.",
    )
    parser.add_argument("--requests", type=int, help="Timed requests per run "
                        "(default 2000; 200 with --quick).")  # fmt: skip
    parser.add_argument("--rounds", type=int, help="Runs per strategy, "
                        "interleaved (default 3; 1 with --quick).")  # fmt: skip
    parser.add_argument("--warmup", type=int, help="Untimed requests per thread "
                        "before the clock starts (default 100; 10 with --quick).")  # fmt: skip
    parser.add_argument("--max-seconds", type=float, help="Stop a run's timed "
                        "part after this long (default 6; 2 with --quick).")  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="A smoke run: few requests, one round.")  # fmt: skip
    parser.add_argument("--databases", default=",".join(report.DATABASES),
                        help="Comma-separated subset of %(default)s.")  # fmt: skip
    parser.add_argument("--strategies", default=",".join(report.STRATEGIES),
                        help="Comma-separated subset of %(default)s.")  # fmt: skip
    parser.add_argument("--threads", type=int, default=8,
                        help="Threads of the concurrent runs (0: skip them).")  # fmt: skip
    parser.add_argument("--pool-size", type=int, default=4,
                        help="pool_size of the concurrent runs (max_overflow 0).")  # fmt: skip
    parser.add_argument("--output", type=Path, default=RESULTS,
                        help="Directory for benchmark.csv/.json/.png.")  # fmt: skip
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    quick = args.quick
    args.requests = args.requests or (200 if quick else 2000)
    args.rounds = args.rounds or (1 if quick else 3)
    args.warmup = args.warmup if args.warmup is not None else (10 if quick else 100)
    args.max_seconds = args.max_seconds or (2.0 if quick else 6.0)
    args.databases = _subset(parser, args.databases, report.DATABASES)
    args.strategies = _subset(parser, args.strategies, report.STRATEGIES)
    return args


def _subset(parser: argparse.ArgumentParser, text: str, known: tuple) -> list[str]:
    chosen = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in chosen if item not in known]
    if unknown:
        parser.error(f"unknown {unknown}; choose from {', '.join(known)}")
    return [item for item in known if item in chosen]


def unavailable(strategy: str, database: str) -> str | None:
    """Why *strategy* cannot run on *database* with this interpreter, or None."""
    if strategy == "native":
        if not database.startswith("postgres"):
            return "Django's pool exists for PostgreSQL only"
        if monitor.postgres_driver() != "psycopg":
            return "Django's pool needs psycopg 3"
        if importlib.util.find_spec("psycopg_pool") is None:
            return "psycopg-pool is not installed (pip install 'djpoolapp[bench]')"
    if strategy == "dbcp" and importlib.util.find_spec("dj_db_conn_pool") is None:
        return "django-db-connection-pool is not installed (pip install 'djpoolapp[bench]')"
    return None


def prepare(databases: list[str]) -> tuple[list[str], dict[str, str], list[str]]:
    """Reachable databases, a header per database, and notes for the output."""
    ready, headers, notes = [], {}, []
    for database in databases:
        for _attempt in range(3):  # a test suite may be restarting the server
            try:
                headers[database] = monitor.server_description(database)
                break
            except Exception as error:
                reason = str(error)
                time.sleep(2)
        else:
            notes.append(f"skipped {database}: server unreachable ({reason})")
            continue
        if database == "postgres-tls":
            try:
                notes.append(ensure_postgres_tls(lambda: monitor.connect("postgres")))
            except TLSUnavailable as error:
                notes.append(f"skipped postgres-tls: {error}")
                continue
            except Exception as error:  # openssl, file system, ALTER SYSTEM
                notes.append(f"skipped postgres-tls: {type(error).__name__}: {error}")
                continue
        ready.append(database)
    return ready, headers, notes


def run_one(args: argparse.Namespace, strategy: str, database: str,
            threads: int, pool_size: int, round_: int) -> dict[str, Any]:  # fmt: skip
    """One worker process, sampled by the server while it runs."""
    application_name = f"djpool-bench-{strategy}-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "benchmarks.settings",
        "DJPOOL_BENCH_STRATEGY": strategy,
        "DJPOOL_BENCH_DATABASE": database,
        "DJPOOL_BENCH_THREADS": str(threads),
        "DJPOOL_BENCH_POOL_SIZE": str(pool_size),
        "DJPOOL_BENCH_APPLICATION_NAME": application_name,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
        ),
    }
    env.pop("DJPOOL_DISABLE", None)
    # Nothing stays open between two unpooled requests: a short warm-up will do.
    warmup = min(args.warmup, 10) if strategy == "none" else args.warmup
    command = [
        sys.executable, "-m", "benchmarks.worker", "--requests", str(args.requests),
        "--warmup", str(warmup), "--max-seconds", str(args.max_seconds),
    ]  # fmt: skip
    base = {"round": round_, "strategy": strategy, "database": database,
            "threads": threads, "pool_size": pool_size or None}  # fmt: skip
    timeout = args.max_seconds + 60 + warmup * threads * 0.05
    try:
        with monitor.SessionSampler(database, application_name) as sampler:
            done = subprocess.run(
                command, env=env, cwd=ROOT, capture_output=True, text=True,
                timeout=timeout,
            )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {**base, "error": f"timed out after {timeout:.0f} s"}
    except Exception as error:
        return {**base, "error": f"monitor: {type(error).__name__}: {error}"}
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {**base, "error": f"worker exited {done.returncode}: {tail}"}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(base)
    result["server_conns"] = sampler.peak(result["session_ids"])
    result["error"] = None
    if sampler.error:
        result["monitor_error"] = sampler.error
    return result


def _line(run: dict[str, Any]) -> str:
    head = f"  round {run['round'] + 1} {run['database']:<12} {run['threads']}t {run['strategy']:<10}"
    if run["error"]:
        return f"{head} FAILED: {run['error']}"
    return (f"{head} p50 {run['p50_ms']:7.3f} ms  p99 {run['p99_ms']:7.3f} ms  "
            f"{run['rps']:7.0f} req/s  conns {run['server_conns']}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    databases, headers, notes = prepare(args.databases)
    for note in notes:
        print(note)
    configs = [(1, 0)] + ([(args.threads, args.pool_size)] if args.threads > 1 else [])
    plan = []
    for database in databases:
        for strategy in args.strategies:
            why = unavailable(strategy, database)
            if why:
                notes.append(f"skipped {strategy} on {database}: {why}")
                print(notes[-1])
            else:
                plan.append((database, strategy))
    print(f"{len(plan) * len(configs) * args.rounds} runs: {args.rounds} round(s), "
          f"{args.requests} requests each (at most {args.max_seconds:g} s), "
          f"{args.warmup} warm-up requests per thread")  # fmt: skip
    runs = []
    for round_ in range(args.rounds):
        for database in databases:
            for threads, pool_size in configs:
                mine = [s for db, s in plan if db == database]
                shift = round_ % len(mine) if mine else 0
                for strategy in mine[shift:] + mine[:shift]:  # rotate the order
                    run = run_one(args, strategy, database, threads, pool_size, round_)
                    if run["error"]:  # e.g. a server restarted by a test: once more
                        print(_line(run), "- retrying", flush=True)
                        time.sleep(2)
                        run = run_one(
                            args, strategy, database, threads, pool_size, round_
                        )
                    runs.append(run)
                    print(_line(run), flush=True)
    rows = report.summarise(runs)
    found = report.targets(rows, runs)
    headers = {db: f"{text}; {_tls_of(rows, db)}" for db, text in headers.items()}
    print(report.tables(rows, headers))
    print(report.targets_text(found))
    meta = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "python": platform.python_version(),
        "versions": _versions(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "servers": headers,
        "notes": notes,
        "arguments": {k: str(v) for k, v in vars(args).items()},
    }
    paths = report.write_files(args.output, rows, runs, found, meta)
    if not args.no_plot:
        subtitle = (f"{meta['started']}, {os.cpu_count()} CPUs, median of "
                    f"{args.rounds} round(s) of {args.requests} requests")  # fmt: skip
        png = report.plot(args.output / "benchmark.png", rows, subtitle)
        if png is None:
            print(
                "no plot: matplotlib is not installed (pip install 'djpoolapp[bench]')"
            )
        else:
            paths.append(png)
    print("\nwrote " + ", ".join(str(path) for path in paths))
    failed = [run for run in runs if run["error"]]
    return 1 if failed and len(failed) == len(runs) else 0


def _tls_of(rows: list[dict[str, Any]], database: str) -> str:
    seen = {row["tls"] for row in rows if row["database"] == database}
    return "TLS " + "/".join(sorted(seen)) if seen else "not run"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("django", "sqlalchemy", "psycopg", "psycopg2-binary", "psycopg-pool",
                 "mysqlclient", "django-db-connection-pool", "djpoolapp"):  # fmt: skip
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


if __name__ == "__main__":
    sys.exit(main())
