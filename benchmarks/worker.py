"""One benchmark run in its own interpreter: ``python -m benchmarks.worker``.

With ``--contention SECONDS`` it runs the contention scenario instead
(``benchmarks/contention.py``).

Started by ``benchmarks/run.py`` with ``DJANGO_SETTINGS_MODULE`` set to
``benchmarks.settings`` and the strategy in the environment (see there).
It sends the requests through Django's real ``WSGIHandler`` with the
request loop of ``manage.py djpool bench`` (:func:`djpoolapp.bench.drive`)
and prints one JSON object on stdout: the latencies' summary, the
throughput, the server sessions that answered and the TLS state the server
reports for them.  Nothing else is printed on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


def _tls(connection: Any) -> str:
    from djpoolapp import server

    try:
        return server.tls_status(connection)[1]
    except Exception as error:  # e.g. MariaDB without the status variables
        return f"unknown ({type(error).__name__})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=50, help="Per thread.")
    parser.add_argument("--max-seconds", type=float, default=10.0)
    parser.add_argument("--contention", type=float, metavar="SECONDS",
                        help="Run the contention scenario for this long.")  # fmt: skip
    parser.add_argument("--hold-ms", type=float, default=50.0,
                        help="Contention: milliseconds each request holds "
                        "its connection.")  # fmt: skip
    args = parser.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    if os.environ.get("DJPOOL_BENCH_STRATEGY") == "barging":
        # djpoolapp as it was before issue 12: SQLAlchemy's own queue, which
        # lets a returning thread take its connection back before the
        # waiter woken for it runs.
        from sqlalchemy.util.queue import Queue

        from djpoolapp.queue import FairQueuePool

        FairQueuePool._queue_class = Queue  # type: ignore[assignment]
    import django

    django.setup()
    from django.conf import settings
    from django.db import connections

    from djpoolapp.bench import BenchHandler, drive

    connection = connections["default"]
    tls = _tls(connection)
    vendor, engine = connection.vendor, connection.settings_dict["ENGINE"]
    connection.close()
    if args.contention:
        from benchmarks import contention

        found = contention.run(settings.THREADS, args.contention, args.hold_ms / 1000)
        found.update(strategy=settings.STRATEGY, database=settings.DATABASE,
                     threads=settings.THREADS, pool_size=settings.POOL_SIZE or None,
                     timeout=settings.TIMEOUT or None, vendor=vendor, engine=engine,
                     tls=tls, django=django.get_version())  # fmt: skip
        json.dump(found, sys.stdout)
        sys.stdout.write("\n")
        return 0
    result = drive(
        BenchHandler(),
        "/djpool-bench/default/",
        args.requests,
        settings.THREADS,
        label=settings.STRATEGY,
        warmup_per_thread=args.warmup,
        max_seconds=args.max_seconds,
    )
    json.dump(
        {
            "strategy": settings.STRATEGY,
            "database": settings.DATABASE,
            "threads": settings.THREADS,
            "pool_size": settings.POOL_SIZE or None,
            "vendor": vendor,
            "engine": engine,
            "tls": tls,
            "django": django.get_version(),
            "requests": result.requests,
            "seconds": result.seconds,
            "p50_ms": result.p50,
            "p99_ms": result.p99,
            "rps": result.requests_per_second,
            "cpu_us": result.cpu_seconds / result.requests * 1e6
            if result.requests
            else None,
            "sessions": result.sessions,
            "session_ids": result.session_ids,
        },
        sys.stdout,
    )
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
