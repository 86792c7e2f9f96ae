"""Cost of a re-checkout in ``pool_mode="transaction"``:
``python benchmarks/recheckout.py [--database all] [--rounds 5]``.

In transaction mode each autocommit statement group (a Django cursor opened,
used, closed) checks a driver connection out of the pool and back in; in
request mode the connection stays for the whole request.  One process, one
thread, one alias: the same ``with connection.cursor(): SELECT 1`` runs in
batches of ``--batch`` inside one "request" (Django's connection is closed
between batches), alternately in request and transaction mode.  The
difference of the two medians (µs per statement) is what one re-checkout
plus its checkin cost.  With ``--profile`` a cProfile of the transaction
mode batches shows where that time goes (cumulative µs per statement of the
functions on the path).

The servers are private ones started for the invocation, unless
``DJPOOL_BENCH_POSTGRES_URL`` / ``DJPOOL_BENCH_MYSQL_URL`` or ``--servers``
say otherwise (the same as run.py and capacity.py, ``servers.py``).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import servers  # noqa: E402

MODES = ("request", "transaction")


def _batch(connection: Any, statements: int) -> float:
    """µs per statement group over one batch (one "request")."""
    began = time.perf_counter()
    for _ in range(statements):
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    elapsed = time.perf_counter() - began
    connection.close()  # the end of the request
    return elapsed * 1e6 / statements


def worker(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks import capacity

    entry = capacity._database(args.database, f"djpool-recheckout-{os.getpid()}")
    if args.database == "mysql":
        capacity._monitor(entry, "mysql")[0].close()  # creates the database
    from django.conf import settings

    settings.configure(
        SECRET_KEY="djpoolapp-recheckout", DEBUG=False, USE_TZ=True,
        INSTALLED_APPS=["djpoolapp"], DATABASES={"default": entry},
        DJPOOL_OPTIONS={"pool_size": 1, "max_overflow": 0}, LOGGING_CONFIG=None,
    )  # fmt: skip
    import django

    django.setup()
    from django.db import connection
    from django.test import override_settings

    found: dict[str, list[float]] = {mode: [] for mode in MODES}
    profiler = cProfile.Profile() if args.profile else None
    for _ in range(args.rounds):
        for mode in MODES:  # interleaved: drift hits both modes
            with override_settings(DJPOOL_OPTIONS={"pool_mode": mode,
                                                   "pool_size": 1}):  # fmt: skip
                for _ in range(3):
                    _batch(connection, args.batch)  # warm-up
                for _ in range(args.batches):
                    found[mode].append(_batch(connection, args.batch))
                if profiler is not None and mode == "transaction":
                    profiler.enable()
                    _batch(connection, args.batch)
                    profiler.disable()
    result: dict[str, Any] = {"database": args.database}
    for mode in MODES:
        result[f"{mode}_us"] = round(statistics.median(found[mode]), 1)
        # The fastest batch: what the code costs when nothing preempts it
        # (a loaded machine inflates medians; minima barely move).
        result[f"{mode}_best_us"] = round(min(found[mode]), 1)
    result["recheckout_us"] = round(result["transaction_us"] - result["request_us"], 1)
    result["recheckout_best_us"] = round(
        result["transaction_best_us"] - result["request_best_us"], 1
    )
    if profiler is not None:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("cumulative").print_stats(35)
        result["profile"] = out.getvalue()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", default="all",
                        choices=("all", "postgres", "mysql"))  # fmt: skip
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch", type=int, default=100,
                        help="Statement groups per request.")  # fmt: skip
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    servers.add_argument(parser)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    databases = ["postgres", "mysql"] if args.database == "all" else [args.database]
    return servers.run_on_servers(
        args.servers, databases, lambda _choice: _measure(args, databases)
    )


def _measure(args: argparse.Namespace, databases: list[str]) -> int:
    """The runs of *args* on *databases*, on the servers already chosen."""
    results = []
    for database in databases:
        command = [sys.executable, str(Path(__file__).resolve()), "--worker",
                   "--database", database, "--rounds", str(args.rounds),
                   "--batches", str(args.batches), "--batch", str(args.batch)]  # fmt: skip
        if args.profile:
            command.append("--profile")
        done = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, check=False, timeout=900
        )
        if done.returncode != 0:
            raise RuntimeError(f"recheckout worker failed:\n{done.stderr[-4000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print("one thread, median µs per statement group (with connection.cursor(): "
          "SELECT 1), batches of one request each; best: the fastest batch")  # fmt: skip
    for row in results:
        for kind, suffix in (("median", "_us"), ("best", "_best_us")):
            print(f"{row['database']:<9} {kind:<6} request "
                  f"{row['request' + suffix]:7.1f}  transaction "
                  f"{row['transaction' + suffix]:7.1f}  re-checkout + checkin "
                  f"{row['recheckout' + suffix]:6.1f} µs")  # fmt: skip
        if "profile" in row:
            print(row["profile"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
