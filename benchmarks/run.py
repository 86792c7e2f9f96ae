"""djpoolapp benchmark suite: ``python benchmarks/run.py [--requests N] [--quick]``.

Compares, in one invocation, the per-request cost of Django's database
connection strategies through Django's real ``WSGIHandler`` (one query per
request, ``CONN_MAX_AGE = 0`` unless stated):

``none``        stock Django, a new server connection per request;
``persistent``  stock Django, ``CONN_MAX_AGE = None``: the limit, a thread-owned
                connection that never leaves;
``native``      Django's own psycopg pool (``OPTIONS["pool"]``; psycopg 3 only);
``dbcp``        django-db-connection-pool (its ENGINE swap), default options;
``djpoolapp``   this app, default options (the fast path, ``park=True``);
``djpoolapp-nopark``  this app with ``park=False`` (as before issue 12);
``djpoolapp-tx``    this app with ``pool_mode="transaction"`` (issue 13).

on PostgreSQL without TLS, PostgreSQL over TLS (turned on in the private
server, see ``tls.py``) and MariaDB; with one thread, and with 8 threads
sharing pools of ``pool_size=4`` (``max_overflow=0``).

The servers are private ones by default, started for this invocation by the
test harness and removed at its end (``servers.py``; ``--servers``): the
machine's own servers are neither used nor reconfigured.

Then the contention scenario (``contention.py``, issue 12): 64 threads on
``pool_size=4, max_overflow=0, timeout=2`` holding each connection 50 ms,
on PostgreSQL and MariaDB, for ``persistent``, ``native``, ``djpoolapp`` and
``barging`` (djpoolapp with SQLAlchemy's own queue, as before issue 12):
successes, timeouts, successes per thread, checkout wait.

The workers run under ``--python`` (default: ``$DJPOOL_BENCH_PYTHON``, else
this interpreter).  The reference figures are for Django 6.1
(``report.REFERENCE_DJANGO``), which needs Python 3.12 or later: point
``--python`` at a virtualenv with ``django==6.1.*``; the report names the
Django version the workers actually ran.

Each run is a fresh interpreter (``benchmarks/worker.py``), so strategies
never share a patched backend or a pool; the rounds interleave strategies
and the reports take medians over rounds (``report.py`` says why).  Only
127.0.0.1 is contacted unless ``DJPOOL_BENCH_POSTGRES_URL`` /
``DJPOOL_BENCH_MYSQL_URL`` say otherwise (then those servers are used
instead of private ones, and left as they are).
"""

from __future__ import annotations

import argparse
import functools
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

from benchmarks import monitor, report, servers  # noqa: E402
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
    parser.add_argument("--threads", default="8",
                        help="Comma-separated thread counts of the concurrent "
                        "runs (0: skip them).")  # fmt: skip
    parser.add_argument("--pool-size", type=int, default=4,
                        help="pool_size of the concurrent runs (max_overflow 0).")  # fmt: skip
    parser.add_argument("--python", default=os.environ.get("DJPOOL_BENCH_PYTHON")
                        or sys.executable, help="Interpreter of the workers, "
                        "e.g. a virtualenv with Django 6.1 (default %(default)s).")  # fmt: skip
    parser.add_argument("--contention-threads", type=int, default=64,
                        help="Threads of the contention scenario (0: skip it).")  # fmt: skip
    parser.add_argument("--contention-pool-size", type=int, default=4)
    parser.add_argument("--contention-timeout", type=float, default=2.0,
                        help="Pool timeout (s) of the contention scenario.")  # fmt: skip
    parser.add_argument("--hold-ms", type=float, default=50.0,
                        help="Contention: ms each request holds its connection.")  # fmt: skip
    parser.add_argument("--contention-seconds", type=float, help="Length of "
                        "each contention run (default 20; 4 with --quick).")  # fmt: skip
    parser.add_argument("--contention-strategies",
                        default=",".join(report.CONTENTION_DEFAULT),
                        help="Comma-separated subset of "
                        f"{','.join(report.CONTENTION_STRATEGIES)}.")  # fmt: skip
    parser.add_argument("--output", type=Path, default=RESULTS,
                        help="Directory for benchmark.csv/.json/.png.")  # fmt: skip
    parser.add_argument("--plot", type=Path, help="Where to write the plot "
                        "(default: OUTPUT/benchmark.png; the docs' figure is "
                        "docs/benchmark.png).")  # fmt: skip
    parser.add_argument("--no-plot", action="store_true")
    servers.add_argument(parser)
    parser.add_argument("--enable-tls-on-server", action="store_true",
                        help="postgres-tls on a server this run did not start "
                        "with ssl off: turn TLS on there (ALTER SYSTEM, reload; "
                        "it stays on).  Without it that database is skipped.")  # fmt: skip
    args = parser.parse_args(argv)
    quick = args.quick
    args.requests = args.requests or (200 if quick else 2000)
    args.rounds = args.rounds or (1 if quick else 3)
    args.warmup = args.warmup if args.warmup is not None else (10 if quick else 100)
    args.max_seconds = args.max_seconds or (2.0 if quick else 6.0)
    args.databases = _subset(parser, args.databases, report.DATABASES)
    args.strategies = _subset(parser, args.strategies, report.STRATEGIES)
    args.contention_strategies = _subset(
        parser, args.contention_strategies, report.CONTENTION_STRATEGIES
    )
    args.contention_seconds = args.contention_seconds or (4.0 if quick else 20.0)
    try:
        args.threads = sorted({int(n) for n in args.threads.split(",") if n.strip()})
    except ValueError:
        parser.error(f"--threads: not a list of integers: {args.threads!r}")
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
        if not _worker_django_has_pool():
            return "Django's pool needs Django 5.1 or later"
        if not database.startswith("postgres"):
            return "Django's pool exists for PostgreSQL only"
        if not _worker_has("psycopg"):
            return "Django's pool needs psycopg 3"
        if not _worker_has("psycopg_pool"):
            return "psycopg-pool is not installed (pip install 'djpoolapp[bench]')"
    if strategy == "dbcp" and not _worker_has("dj_db_conn_pool"):
        return "django-db-connection-pool is not installed (pip install 'djpoolapp[bench]')"
    return None


_WORKER_PYTHON = sys.executable


def runnable(
    databases: list[str], strategies: list[str], notes: list[str], prefix: str = ""
) -> list[tuple[str, str]]:
    """The (database, strategy) pairs that can run here; each one that
    cannot is noted (``notes``, printed) with :func:`unavailable`'s reason."""
    plan = []
    for database in databases:
        for strategy in strategies:
            why = unavailable(strategy, database)
            if why:
                notes.append(f"{prefix}skipped {strategy} on {database}: {why}")
                print(notes[-1])
            else:
                plan.append((database, strategy))
    return plan


def _worker_import(code: str) -> str:
    """Run *code* in the worker interpreter; its stdout, stripped ("" on error)."""
    done = subprocess.run([_WORKER_PYTHON, "-c", code], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    return done.stdout.strip() if done.returncode == 0 else ""


@functools.cache
def _worker_has(module: str) -> bool:
    """Whether the workers' interpreter can import *module*."""
    code = f"import importlib.util as u; print(u.find_spec({module!r}) is not None)"
    return _worker_import(code) == "True"


@functools.cache
def _worker_django_has_pool() -> bool:
    version = _worker_import("import django; print(*django.VERSION[:2])")
    return bool(version) and tuple(map(int, version.split())) >= (5, 1)


def prepare(
    databases: list[str], choice: servers.Choice, enable_tls_on_server: bool = False
) -> tuple[list[str], dict[str, str], list[str]]:
    """Reachable databases, a header per database ("private PostgreSQL
    15.20 ..."), and notes for the output.  A database whose private server
    could not be provided (``choice.missing``) is skipped, never sent to the
    machine's server instead."""
    ready, headers, notes = [], {}, []
    for database in databases:
        name = servers.server_name(database)
        if name in choice.missing:
            notes.append(f"skipped {database}: {choice.missing[name]}")
            continue
        for _attempt in range(3):  # a test suite may be restarting the server
            try:
                description = monitor.server_description(database)
                headers[database] = f"{choice.label(name)} {description}"
                break
            except Exception as error:
                reason = str(error)
                time.sleep(2)
        else:
            notes.append(f"skipped {database}: server unreachable ({reason})")
            continue
        if database == "postgres-tls":
            try:
                notes.append(
                    ensure_postgres_tls(
                        lambda: monitor.connect("postgres"),
                        owned_datadir=choice.private.get("postgres"),
                        enable_on_server=enable_tls_on_server,
                    )
                )
            except TLSUnavailable as error:
                notes.append(f"skipped postgres-tls: {error}")
                continue
            except Exception as error:  # openssl, file system, ALTER SYSTEM
                notes.append(f"skipped postgres-tls: {type(error).__name__}: {error}")
                continue
        ready.append(database)
    return ready, headers, notes


def run_one(args: argparse.Namespace, strategy: str, database: str,
            threads: int, pool_size: int, round_: int,
            contention: bool = False) -> dict[str, Any]:  # fmt: skip
    """One worker process, sampled by the server while it runs."""
    application_name = f"djpool-bench-{strategy}-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "benchmarks.settings",
        "DJPOOL_BENCH_STRATEGY": strategy,
        "DJPOOL_BENCH_DATABASE": database,
        "DJPOOL_BENCH_THREADS": str(threads),
        "DJPOOL_BENCH_POOL_SIZE": str(pool_size),
        "DJPOOL_BENCH_TIMEOUT": str(args.contention_timeout if contention else 0),
        "DJPOOL_BENCH_APPLICATION_NAME": application_name,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
        ),
    }
    env.pop("DJPOOL_DISABLE", None)
    # Nothing stays open between two unpooled requests: a short warm-up will do.
    warmup = min(args.warmup, 10) if strategy == "none" else args.warmup
    command = [
        args.python, "-m", "benchmarks.worker", "--requests", str(args.requests),
        "--warmup", str(warmup), "--max-seconds", str(args.max_seconds),
    ]  # fmt: skip
    base = {"round": round_, "strategy": strategy, "database": database,
            "threads": threads, "pool_size": pool_size or None}  # fmt: skip
    timeout = args.max_seconds + 60 + warmup * threads * 0.05
    if contention:
        command += ["--contention", str(args.contention_seconds),
                    "--hold-ms", str(args.hold_ms)]  # fmt: skip
        timeout = args.contention_seconds + args.contention_timeout + 60
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
    head = f"  round {run['round'] + 1} {run['database']:<12} {run['threads']}t {run['strategy']:<14}"
    if run["error"]:
        return f"{head} FAILED: {run['error']}"
    return (f"{head} p50 {run['p50_ms']:7.3f} ms  p99 {run['p99_ms']:7.3f} ms  "
            f"{run['rps']:7.0f} req/s  conns {run['server_conns']}")  # fmt: skip


def _contention_line(run: dict[str, Any]) -> str:
    head = f"  contention {run['database']:<12} {run['threads']}t {run['strategy']:<10}"
    if run["error"]:
        return f"{head} FAILED: {run['error']}"
    return (f"{head} served {run['successes']:5d}  timeouts {run['timeouts']:4d}  "
            f"per thread {run['min_per_thread']}-{run['max_per_thread']}  "
            f"p99 wait {run['wait_p99_ms']:7.1f} ms  conns {run['server_conns']}")  # fmt: skip


def run_contention(args: argparse.Namespace, databases: list[str],
                   notes: list[str]) -> list[dict[str, Any]]:  # fmt: skip
    """The contention scenario, once per (database, strategy)."""
    if args.contention_threads < 1:
        return []
    runs = []
    chosen = [db for db in databases if db in report.CONTENTION_DATABASES]
    plan = runnable(chosen, args.contention_strategies, notes, "contention: ")
    print(f"contention: {len(plan)} runs of {args.contention_seconds:g} s, "
          f"{args.contention_threads} threads on pool_size="
          f"{args.contention_pool_size}, max_overflow=0, "
          f"timeout={args.contention_timeout:g} s, {args.hold_ms:g} ms per request")  # fmt: skip
    for database, strategy in plan:
        run = run_one(args, strategy, database, args.contention_threads,
                      args.contention_pool_size, 0, contention=True)  # fmt: skip
        if run["error"]:
            print(_contention_line(run), "- retrying", flush=True)
            time.sleep(2)
            run = run_one(args, strategy, database, args.contention_threads,
                          args.contention_pool_size, 0, contention=True)  # fmt: skip
        run["timeout"] = args.contention_timeout
        runs.append(run)
        print(_contention_line(run), flush=True)
    return runs


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark on the servers ``--servers`` chooses; the exit
    status: 0, 1 when every run failed, 2 when a private server could not
    start."""
    global _WORKER_PYTHON
    args = parse_args(argv)
    _WORKER_PYTHON = args.python
    return servers.run_on_servers(
        args.servers,
        args.databases,
        lambda choice: benchmark(args, choice),
        skip_missing=True,  # prepare() skips their databases with a note
    )


def benchmark(args: argparse.Namespace, choice: servers.Choice) -> int:
    """Every run of *args* on the servers of *choice*, then the reports."""
    started = time.time()
    databases, headers, notes = prepare(
        args.databases, choice, args.enable_tls_on_server
    )
    for note in notes:
        print(note)
    configs = [(1, 0)] + [(n, args.pool_size) for n in args.threads if n > 1]
    plan = runnable(databases, args.strategies, notes)
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
    contended = run_contention(args, databases, notes)
    rows = report.summarise(runs)
    found = report.targets(rows, runs) + report.contention_targets(contended)
    headers = {db: f"{text}; {_tls_of(rows, db)}" for db, text in headers.items()}
    django_version = next((run["django"] for run in runs + contended
                           if run.get("django")), None)  # fmt: skip
    print(f"\nDjango {django_version} (workers: {args.python})")
    if django_version and not django_version.startswith(report.REFERENCE_DJANGO):
        notes.append(f"workers ran Django {django_version}; the reference "
                     f"figures are for Django {report.REFERENCE_DJANGO}")  # fmt: skip
        print(notes[-1])
    print(report.tables(rows, headers))
    print(report.contention_table(contended))
    print(report.targets_text(found))
    meta = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "python": _worker_import("import platform; print(platform.python_version())")
        or platform.python_version(),
        "django": django_version,
        "worker_python": args.python,
        "versions": _versions(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "servers": headers,
        "server_choice": {"mode": args.servers, "lines": choice.describe()},
        "notes": notes,
        "arguments": {k: str(v) for k, v in vars(args).items()},
    }
    paths = report.write_files(args.output, rows, runs, found, meta, contended)
    if not args.no_plot:
        subtitle = report.subtitle(meta, args.rounds, args.requests)
        png = report.plot(
            args.plot or args.output / "benchmark.png", rows, subtitle, contended
        )
        if png is None:
            print(
                "no plot: matplotlib is not installed (pip install 'djpoolapp[bench]')"
            )
        else:
            paths.append(png)
    print("\nwrote " + ", ".join(str(path) for path in paths))
    everything = runs + contended
    failed = [run for run in everything if run["error"]]
    return 1 if failed and len(failed) == len(everything) else 0


def _tls_of(rows: list[dict[str, Any]], database: str) -> str:
    seen = {row["tls"] for row in rows if row["database"] == database}
    return "TLS " + "/".join(sorted(seen)) if seen else "not run"


PACKAGES = ("django", "sqlalchemy", "psycopg", "psycopg2-binary", "psycopg-pool",
            "mysqlclient", "django-db-connection-pool", "djpoolapp")  # fmt: skip


def _versions() -> dict[str, str]:
    """Versions of the packages the workers import (their interpreter's)."""
    code = (
        "import json\nfrom importlib.metadata import version\nfound = {}\n"
        f"for name in {PACKAGES!r}:\n"
        "    try: found[name] = version(name)\n"
        "    except Exception: pass\n"
        "print(json.dumps(found))"
    )
    output = _worker_import(code)
    return json.loads(output) if output else {}


if __name__ == "__main__":
    sys.exit(main())
