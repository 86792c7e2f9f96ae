"""What ``ping_timeout`` costs: ``python benchmarks/ping_deadline.py``.

Times, per pooled alias of the test settings (PostgreSQL through the driver
``DJPOOL_TEST_DRIVER`` selects, MariaDB), in one process against the same
server connection:

- the deadline guard alone (``djpoolapp.deadline.bounded`` entered and left
  around nothing): what every bounded round trip pays;
- the pre-ping round trip without the guard (``Driver._ping``) and with it
  (``Driver.ping``), interleaved pass by pass so that load drifts hit both.

Prints the best and the median pass in microseconds per call.  Compare rows
of one run: on a shared machine absolute figures move with the load.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def per_call(function: Callable[[], object], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        function()
    return (time.perf_counter() - started) / calls * 1e6


def compare(
    label: str,
    without: Callable[[], object],
    with_: Callable[[], object],
    calls: int,
    passes: int = 15,
) -> None:
    a, b = [], []
    for _ in range(passes):
        a.append(per_call(without, calls))
        b.append(per_call(with_, calls))
    print(
        f"{label:<40} without {min(a):7.1f} (median {statistics.median(a):7.1f})"
        f"   with {min(b):7.1f} (median {statistics.median(b):7.1f}) µs"
    )


def measure(name: str, driver: Any, conn: Any, bounded: Any) -> None:
    def guard_only() -> None:
        with bounded(conn, "pre-ping"):
            pass

    compare(f"{name} guard alone", lambda: None, guard_only, 20000)
    compare(
        f"{name} pre-ping", lambda: driver._ping(conn), lambda: driver.ping(conn), 1000
    )


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    from django.db import connections

    from djpoolapp.deadline import bounded
    from djpoolapp.pool import registry

    for alias in connections.settings:
        wrapper = connections[alias]
        if wrapper.vendor not in ("postgresql", "mysql"):
            continue
        wrapper.ensure_connection()
        conn = wrapper.connection
        (pool,) = registry.pools(alias)
        driver = pool.driver

        name = f"{alias} ({driver.module_name})"
        measure(name, driver, conn, bounded)
        wrapper.close()


if __name__ == "__main__":
    main()
