"""Instructions per request, counted by valgrind (deterministic):
``python benchmarks/instructions.py [--database all] [--queries 1 3]``.

Timings on a shared two-core machine move by 10-30 % between runs; the
number of instructions a request executes does not (``valgrind
--tool=callgrind`` counts them whatever else the machine does; repeated
runs agree within 0.1 %, with ``PYTHONHASHSEED`` fixed, which
:func:`_instructions` does).  So this is the figure to compare an A/B change
of the per-request path with, where ``run.py``'s ratios cannot tell 3 %
from noise.

A "request" here is the request cycle without HTTP: ``request_started``,
*N* times ``with connection.cursor() as c: c.execute("SELECT 1");
c.fetchone()``, ``request_finished`` (Django's own handlers of those
signals close or keep the connection, as in a real request).  Each (mode,
database, N) runs in a fresh interpreter under valgrind twice, with 150
and 450 requests; the difference divided by 300 is the cost of one
request, start-up and warm-up cancelled out.  Modes: ``persistent``
(stock Django, ``CONN_MAX_AGE=None``, no app), ``request`` (djpoolapp,
defaults), ``request-nopark`` (``park=False``), ``transaction``
(``pool_mode="transaction"``).

Needs ``valgrind`` (Debian package).  The servers are private ones started
for the invocation, as for ``run.py`` (``--servers``, ``servers.py``).
Python function calls are not told apart (valgrind sees the interpreter):
use ``hotpath.py`` or py-spy for where, this for how much.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import servers  # noqa: E402

MODES = ("persistent", "request", "request-nopark", "transaction")
#: Requests of the short and the long run; their difference is measured.
SHORT, LONG = 150, 450


def worker(mode: str, database: str, queries: int, requests: int) -> None:
    """The measured loop, in this interpreter (run under valgrind)."""
    import dj_database_url
    import django
    from django.conf import settings

    pooled = mode != "persistent"
    entry = dict(
        dj_database_url.parse(
            servers.url(servers.server_name(database)),
            conn_max_age=0 if pooled else None,
        )
    )
    options: dict[str, Any] = {"pool_size": 2}
    if mode == "transaction":
        options["pool_mode"] = "transaction"
    if mode == "request-nopark":
        options["park"] = False
    settings.configure(
        INSTALLED_APPS=["djpoolapp"] if pooled else [],
        DATABASES={"default": entry},
        DJPOOL_OPTIONS=options,
        USE_TZ=True,
    )
    django.setup()
    from django.core import signals
    from django.db import connection

    for _ in range(requests):
        signals.request_started.send(sender=None)
        for _ in range(queries):
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
                cursor.fetchone()
        signals.request_finished.send(sender=None)


def _instructions(mode: str, database: str, queries: int, requests: int) -> int:
    """Instructions of one whole worker run under valgrind."""
    command = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        sys.executable, str(Path(__file__).resolve()), "--worker", mode,
        database, str(queries), str(requests),
    ]  # fmt: skip
    # A fixed hash seed: with Python's random one, string hashing orders
    # sets and dicts differently in every run, and start-up alone moves by
    # millions of instructions (seen: 5.6 M between two runs of 5 requests,
    # 850 with the seed fixed), more than the requests being measured.
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    result = subprocess.run(
        command, capture_output=True, text=True, check=False, env=env
    )
    for line in result.stderr.splitlines():
        if "Collected :" in line:
            if result.returncode != 0:
                break
            return int(line.rsplit(":", 1)[1])
    raise RuntimeError(f"valgrind run failed ({mode}, {database}):\n{result.stderr}")


def measure(
    databases: list[str],
    queries: list[int],
    modes: list[str],
    requests: tuple[int, int] = (SHORT, LONG),
    jobs: int = 1,
) -> list[dict[str, Any]]:
    """Rows ``{database, queries, mode, instructions}``: instructions per
    request, from a short and a long run of *requests* requests.  *jobs*
    valgrind runs at a time (each is one single-threaded process; the
    counts do not depend on what runs beside it)."""
    short_run, long_run = requests
    figures = [
        (database, count, mode)
        for database in databases
        for count in queries
        for mode in modes
    ]
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as executor:
        runs = {
            ((database, count, mode), requests_): executor.submit(
                _instructions, mode, database, count, requests_
            )
            for database, count, mode in figures
            for requests_ in (short_run, long_run)
        }
        rows: list[dict[str, Any]] = []
        for figure in figures:
            database, count, mode = figure
            short = runs[figure, short_run].result()
            long = runs[figure, long_run].result()
            rows.append({
                "database": database, "queries": count, "mode": mode,
                "instructions": round((long - short) / (long_run - short_run)),
            })  # fmt: skip
            print(
                f"{database:9} {count} queries  {mode:15} "
                f"{rows[-1]['instructions']:>10,} instructions/request",
                flush=True,
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--worker"]:
        mode, database, queries, requests = argv[1:5]
        worker(mode, database, int(queries), int(requests))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", default="all",
                        choices=("all", "postgres", "mysql"))  # fmt: skip
    parser.add_argument("--queries", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--mode", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--requests", type=int, nargs=2, default=[SHORT, LONG],
                        metavar=("SHORT", "LONG"),
                        help="Requests of the two runs per figure.")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="valgrind runs at a time (default: one per CPU).")  # fmt: skip
    parser.add_argument("--json", type=Path, help="Also write the rows here.")
    servers.add_argument(parser)
    args = parser.parse_args(argv)
    if not 0 < args.requests[0] < args.requests[1]:
        parser.error("--requests SHORT LONG: 0 < SHORT < LONG")
    if shutil.which("valgrind") is None:
        print("instructions.py: valgrind is not installed", file=sys.stderr)
        return 2
    databases = ["postgres", "mysql"] if args.database == "all" else [args.database]

    def run(_choice: servers.Choice) -> int:
        started = time.monotonic()
        rows = measure(
            databases, args.queries, args.mode, tuple(args.requests), args.jobs
        )
        print(f"({time.monotonic() - started:.0f} s; {os.cpu_count()} CPUs)")
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
        return 0

    return servers.run_on_servers(args.servers, databases, run)


if __name__ == "__main__":
    sys.exit(main())
