"""One benchmark run in its own interpreter: ``python -m benchmarks.worker``.

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
    args = parser.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.db import connections

    from djpoolapp.bench import BenchHandler, drive

    connection = connections["default"]
    tls = _tls(connection)
    vendor, engine = connection.vendor, connection.settings_dict["ENGINE"]
    connection.close()
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
