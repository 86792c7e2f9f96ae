"""Where a pooled request's time goes: ``python benchmarks/hotpath.py``.

The benchmark says *how much* slower a pooled request is than one on a
persistent connection; this says *where*, in microseconds per request, for
djpoolapp (``CONN_MAX_AGE = 0``) and for stock Django with
``CONN_MAX_AGE = None``, in one process against the same server:

- ``request``: the whole ``WSGIHandler`` cycle, no instrumentation;
- one *inclusive* figure per function on the connection path (Django's
  ``ensure_connection``/``connect``/``close``, djpoolapp's checkout,
  ``check_on_checkout`` and checkin, SQLAlchemy's ``Pool.connect`` and
  ``_ConnectionFairy.close``, the query itself).  Each function is timed in
  a pass of its own (only one timer at a time, so timers never nest) and
  the timer's own cost, calibrated first, is subtracted;
- server round trips per request, counted by a small TCP relay on 127.0.0.1
  (a "round trip" is each time the client speaks after the server did);
- system calls per request (with ``strace`` installed), Python function
  calls per request (cProfile), and context switches, CPU and throughput
  with threads sharing a small pool: figures that noise barely moves.

Every timing is a median over requests (of the summed calls of a
request), then the median over ``--rounds`` passes: medians shrug off the
preemptions a shared two-core machine inflicts, means do not.  Compare rows
of one run.

The server is a private one started for the invocation unless
``DJPOOL_BENCH_POSTGRES_URL`` / ``DJPOOL_BENCH_MYSQL_URL`` or ``--servers``
say otherwise (as for ``run.py``, ``benchmarks/servers.py``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(ROOT))

from benchmarks import servers  # noqa: E402

#: (label, "module:qualified.name") timed one at a time; "backend:" means the
#: alias's DatabaseWrapper class (the attribute Django actually calls).
TARGETS = (
    ("Django ensure_connection() (whole connect path)", "backend:ensure_connection"),
    ("  djpoolapp Lease.claim() (fast path)", "djpoolapp.lease:Lease.claim"),
    ("  Django connect()", "backend:connect"),
    ("    get_new_connection() (djpoolapp-wrapped)", "backend:get_new_connection"),
    ("      djpoolapp AliasPool.checkout()", "djpoolapp.pool:AliasPool.checkout"),
    ("        SQLAlchemy Pool.connect()", "sqlalchemy.pool.base:Pool.connect"),
    ("          djpoolapp check_on_checkout()", "djpoolapp.pool:AliasPool.check_on_checkout"),
    ("    set_autocommit()", "backend:set_autocommit"),
    ("    init_connection_state()", "backend:init_connection_state"),
    ("Django close() (whole close path)", "backend:close"),
    ("  djpoolapp Lease.checkin() (parks or returns)", "djpoolapp.lease:Lease.checkin"),
    ("    djpoolapp FairQueue.park()", "djpoolapp.queue:FairQueue.park"),
    ("    SQLAlchemy _ConnectionFairy.close()", "sqlalchemy.pool.base:_ConnectionFairy.close"),
    ("close_old_connections() (signals, incl. close)",
     "backend:close_if_unusable_or_obsolete"),
    ("the query (cursor.execute + fetchone)", "django.db.backends.utils:CursorWrapper.execute"),
)  # fmt: skip


def _resolve(spec: str, backend: type) -> tuple[Any, str]:
    module_name, _, path = spec.partition(":")
    if module_name == "backend":
        return backend, path
    owner: Any = __import__(module_name, fromlist=["_"])
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    return owner, name


def _timed(function: Callable[..., Any], totals: list[float]) -> Callable[..., Any]:
    clock = time.perf_counter

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = clock()
        try:
            return function(*args, **kwargs)
        finally:
            totals.append(clock() - started)

    return timed


def _timer_cost() -> float:
    """Seconds a ``_timed`` wrapper adds to one call (beyond what it measures)."""

    def nothing() -> None:
        return None

    samples = []
    for _ in range(5):
        totals: list[float] = []
        wrapped = _timed(nothing, totals)
        started = time.perf_counter()
        for _ in range(20000):
            wrapped()
        outer = (time.perf_counter() - started) / 20000
        started = time.perf_counter()
        for _ in range(20000):
            nothing()
        bare = (time.perf_counter() - started) / 20000
        samples.append(outer - bare - statistics.mean(totals))
    return max(0.0, statistics.median(samples))


def _requests(
    handler: Any, count: int, totals: list[float] | None = None, cost: float = 0.0
) -> float:
    """Median seconds per request, or, given the *totals* a timer appends to,
    the median per request of the timed function's calls (less the timer's
    *cost*).  Medians shrug off the preemptions of a shared machine."""
    from djpoolapp.bench import _request

    clock, times = time.perf_counter, []
    for _ in range(count):
        if totals is None:
            started = clock()
            _request(handler, "/djpool-bench/default/")
            times.append(clock() - started)
        else:
            seen = len(totals)
            _request(handler, "/djpool-bench/default/")
            calls = totals[seen:]
            times.append(sum(calls) - cost * len(calls))
    return statistics.median(times)


#: persistent: stock Django, CONN_MAX_AGE=None; no-park: djpoolapp with
#: ``park=False`` (as before issue 12); djpoolapp: as shipped (``park=True``).
MODES = ("persistent", "no-park", "djpoolapp")


def _mode(name: str) -> None:
    """Switch this process to djpoolapp (with or without parking) or stock
    persistent connections."""
    from django.db import connections

    from djpoolapp import patch
    from djpoolapp import pool as pool_module

    connections["default"].close()
    pool_module.registry.dispose()  # new pools: AliasPool.parking is read anew
    if name in ("djpoolapp", "no-park"):
        pool_module.PARK_OVERRIDE = name == "djpoolapp"
        connections.settings["default"]["CONN_MAX_AGE"] = 0
        patch.install_for_databases()
    else:
        patch.uninstall()
        connections.settings["default"]["CONN_MAX_AGE"] = None
    connections["default"].settings_dict = connections.settings["default"]


def profile(requests: int, rounds: int) -> dict[str, dict[str, float]]:
    from django.db import connections

    from djpoolapp.bench import BenchHandler

    handler = BenchHandler()
    backend = type(connections["default"])
    cost = _timer_cost()
    figures: dict[str, dict[str, list[float]]] = {mode: {} for mode in MODES}
    for _ in range(rounds):
        for mode in MODES:
            _mode(mode)
            _requests(handler, 200)  # warm up
            figures[mode].setdefault("request", []).append(_requests(handler, requests))
            for label, spec in TARGETS:
                owner, name = _resolve(spec, backend)
                original = owner.__dict__.get(name)
                current = getattr(owner, name)
                totals: list[float] = []
                setattr(owner, name, _timed(current, totals))
                try:
                    per_request = _requests(handler, requests, totals, cost)
                finally:
                    if original is None:
                        delattr(owner, name)
                    else:
                        setattr(owner, name, original)
                figures[mode].setdefault(label, []).append(per_request)
    _mode("djpoolapp")
    return {
        mode: {label: statistics.median(values) * 1e6 for label, values in rows.items()}
        for mode, rows in figures.items()
    } | {"timer_cost_us": {"": cost * 1e6}}


def round_trips(requests: int) -> dict[str, float]:
    """Client turns per request through the relay, for both modes."""
    from django.db import connections

    from benchmarks import monitor  # after main() has set the environment
    from djpoolapp.bench import BenchHandler

    handler = BenchHandler()
    settings = connections.settings["default"]
    relay = monitor.Relay(settings["HOST"] or "127.0.0.1", int(settings["PORT"]))
    host, port = settings["HOST"], settings["PORT"]
    settings["HOST"], settings["PORT"] = "127.0.0.1", str(relay.port)
    found = {}
    try:
        for mode in MODES:
            _mode(mode)
            _requests(handler, 20)
            before = relay.turns
            _requests(handler, requests)
            found[mode] = (relay.turns - before) / requests
    finally:
        settings["HOST"], settings["PORT"] = host, port
        _mode("djpoolapp")
        relay.close()
    return found


PACKAGES = ("djpoolapp", "sqlalchemy", "django", "psycopg", "MySQLdb")


def call_counts(requests: int) -> dict[str, dict[str, float]]:
    """Python function calls per request, by package (cProfile): a figure the
    machine's noise cannot move, and a fair proxy of interpreter work."""
    import cProfile
    import pstats

    from djpoolapp.bench import BenchHandler

    handler = BenchHandler()
    found: dict[str, dict[str, float]] = {}
    for mode in MODES:
        _mode(mode)
        _requests(handler, 50)
        profiler = cProfile.Profile()
        profiler.runcall(_requests, handler, requests)
        counts = dict.fromkeys((*PACKAGES, "other", "total"), 0.0)
        for (filename, _, _), row in pstats.Stats(profiler).stats.items():
            package = next((p for p in PACKAGES if f"/{p}/" in filename), "other")
            counts[package] += row[0] / requests
            counts["total"] += row[0] / requests
        found[mode] = counts
    _mode("djpoolapp")
    return found


def contention(requests: int, threads: int, rounds: int) -> dict[str, dict[str, float]]:
    """Context switches, CPU and throughput per request under *threads* threads.

    Each voluntary context switch is a thread giving up the CPU, mostly a
    GIL handoff: a pool that releases the GIL on its hot path (a syscall, a
    contended lock) makes every request pay several of them.
    """
    import resource

    from djpoolapp.bench import BenchHandler, drive

    handler = BenchHandler()
    found: dict[str, dict[str, list[float]]] = {mode: {} for mode in MODES}
    for _ in range(rounds):
        for mode in MODES:
            _mode(mode)
            drive(handler, "/djpool-bench/default/", 200, threads, warmup_per_thread=20)
            before = resource.getrusage(resource.RUSAGE_SELF)
            result = drive(
                handler,
                "/djpool-bench/default/",
                requests,
                threads,
                warmup_per_thread=0,
            )
            after = resource.getrusage(resource.RUSAGE_SELF)
            figures = {
                "voluntary context switches": (after.ru_nvcsw - before.ru_nvcsw)
                / result.requests,
                "involuntary context switches": (after.ru_nivcsw - before.ru_nivcsw)
                / result.requests,
                "CPU µs (all threads)": result.cpu_seconds / result.requests * 1e6,
                "requests/s": result.requests_per_second,
            }
            for name, value in figures.items():
                found[mode].setdefault(name, []).append(value)
    _mode("djpoolapp")
    return {
        mode: {name: statistics.median(values) for name, values in rows.items()}
        for mode, rows in found.items()
    }


MARKS = (b"djpool-hotpath-start\n", b"djpool-hotpath-end\n")


def syscalls(database: str, requests: int) -> dict[str, dict[str, float]] | None:
    """System calls per request under ``strace -f`` (None without strace).

    Exact, whatever the noise.  In CPython each one also releases the GIL:
    under threads, a syscall between checkout and checkin can hand the GIL
    (and the time) to another thread while this one holds a connection.
    """
    strace = shutil.which("strace")
    if strace is None:
        return None
    found = {}
    for mode in MODES:
        with tempfile.NamedTemporaryFile("r", suffix=".strace") as trace:
            command = [strace, "-f", "-qq", "-o", trace.name, sys.executable,
                       __file__, "--database", database, "--requests", str(requests),
                       "--syscall-child", mode]  # fmt: skip
            subprocess.run(command, check=True, capture_output=True, timeout=300)
            lines = trace.read().splitlines()
        marks = [i for i, line in enumerate(lines) if "djpool-hotpath-" in line]
        counts: dict[str, float] = {}
        for line in lines[marks[-2] + 1 : marks[-1]]:
            match = re.match(r"\d+\s+(\w+)\(", line)
            if match:
                counts[match[1]] = counts.get(match[1], 0) + 1 / requests
        found[mode] = counts
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database", choices=("postgres", "mysql"), default="postgres")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=8, help="For the contention "
                        "figures, with pool_size --pool-size (max_overflow 0).")  # fmt: skip
    parser.add_argument("--pool-size", type=int, default=4)
    parser.add_argument("--syscall-child", help=argparse.SUPPRESS)
    servers.add_argument(parser)
    args = parser.parse_args(argv)
    os.environ.update(
        DJANGO_SETTINGS_MODULE="benchmarks.settings",
        DJPOOL_BENCH_STRATEGY="djpoolapp",
        DJPOOL_BENCH_POOL_SIZE=str(args.pool_size),
        DJPOOL_BENCH_DATABASE=args.database,
        DJPOOL_BENCH_APPLICATION_NAME="djpool-bench-profile",
    )
    if args.syscall_child:  # traced by syscalls(): the parent's servers
        return _syscall_child(args)
    return servers.run_on_servers(
        args.servers, [args.database], lambda _choice: _measure(args)
    )


def _syscall_child(args: argparse.Namespace) -> int:
    """Requests between two marks on stderr, for ``syscalls()``'s strace."""
    import django

    django.setup()
    from djpoolapp.bench import BenchHandler

    _mode(args.syscall_child)
    _requests(BenchHandler(), 100)
    os.write(2, MARKS[0])
    _requests(BenchHandler(), args.requests)
    os.write(2, MARKS[1])
    return 0


def _measure(args: argparse.Namespace) -> int:
    """Every figure of *args*, on the servers already chosen (Django is set
    up here: ``benchmarks.settings`` reads their URLs at import)."""
    import django

    django.setup()
    trips = round_trips(500)
    found = profile(args.requests, args.rounds)
    cost = found.pop("timer_cost_us")[""]
    print(f"{args.database}: µs per request, median of {args.rounds} passes of "
          f"{args.requests} requests (timer cost {cost:.2f} µs/call subtracted)")  # fmt: skip
    header = "".join(f"{mode:>11}" for mode in MODES)
    print(f"{'':<52}{header}{'delta':>9}")

    def row(label: str, values: dict[str, dict[str, float]], digits: int = 1) -> None:
        cells = [values[mode].get(label, 0.0) for mode in MODES]
        text = "".join(f"{cell:>11.{digits}f}" for cell in cells)
        print(f"{label:<52}{text}{cells[-1] - cells[0]:>+9.{digits}f}")

    for label in ["request"] + [label for label, _ in TARGETS]:
        row(label, found)
    row("server round trips per request",
        {mode: {"server round trips per request": trips[mode]} for mode in MODES}, 2)  # fmt: skip
    traced = syscalls(args.database, 1000)
    if traced is not None:
        print(f"\nsystem calls per request (strace -f){header}")
        for name in sorted({name for counts in traced.values() for name in counts}):
            row(
                f"  {name}",
                {m: {f"  {name}": traced[m].get(name, 0)} for m in MODES},
                2,
            )
    calls = call_counts(1000)
    print(f"\nPython function calls per request (cProfile), by package{header}")
    for name in calls["persistent"]:
        row(f"  {name}", {m: {f"  {name}": calls[m][name]} for m in MODES})
    shared = contention(args.requests, args.threads, args.rounds)
    print(f"\nper request, {args.threads} threads sharing pool_size {args.pool_size} "
          f"(persistent: {args.threads} connections){header}")  # fmt: skip
    for name in shared["persistent"]:
        row(name, shared)
    return 0


if __name__ == "__main__":
    sys.exit(main())
