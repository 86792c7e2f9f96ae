"""Runs in a fresh interpreter for test_gevent.py: gevent must patch the
standard library before anything else imports it (as a gevent worker or the
top of a WSGI module would).

Usage: python -m tests.faults.gevent_worker ALIAS
Prints one JSON line: errors, requests served, server sessions seen,
concurrency probe.
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

if os.environ.get("DJPOOL_TEST_DRIVER") == "psycopg2":
    # psycopg2 blocks the whole process in libpq unless told to wait through
    # gevent; psycopg 3 notices gevent's patched select on its own.
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()

import django  # noqa: E402
import gevent  # noqa: E402
from gevent.pool import Group  # noqa: E402

GREENLETS, REQUESTS, POOL_SIZE = 100, 20, 5
SLEEP_SQL = {"postgresql": "SELECT pg_sleep(%s)", "mysql": "SELECT SLEEP(%s)"}


def main(alias: str) -> dict:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    django.setup()
    from tests.modes import apply_environment

    apply_environment()  # DJPOOL_TEST_POOL_MODE (tests/modes.py)
    from django.db import connections
    from django.test.utils import override_settings

    import djpoolapp
    from tests.conftest import run_request

    # The parent's test database (same DJPOOL_TEST_RUN_ID, so same TEST NAME).
    for name in ("default", "mysql"):
        if name in connections.settings:
            db = connections.settings[name]
            db["NAME"] = db["TEST"]["NAME"]
    override_settings(
        DJPOOL_OPTIONS={"aliases": {alias: {"pool_size": POOL_SIZE, "max_overflow": 0}}}
    ).enable()

    errors: list[str] = []
    sessions: set[int] = set()
    served = 0

    def client() -> None:
        nonlocal served
        try:
            for _ in range(REQUESTS):
                status, body = run_request(f"/session/{alias}/")
                if status != 200:
                    errors.append(f"{status}: {body[:200]!r}")
                    continue
                sessions.add(json.loads(body)["session"])
                served += 1
        except BaseException as error:  # reported
            errors.append(repr(error))
        finally:
            connections.close_all()

    started = time.monotonic()
    group = Group()
    for _ in range(GREENLETS):
        group.spawn(client)
    group.join(timeout=120)
    elapsed = time.monotonic() - started
    if len(group):
        errors.append(f"{len(group)} greenlets still running")

    def sleeper() -> None:
        connection = connections[alias]
        try:
            with connection.cursor() as cursor:
                cursor.execute(SLEEP_SQL[connection.vendor], [0.3])
        finally:
            connection.close()

    probe_started = time.monotonic()
    probes = [gevent.spawn(sleeper) for _ in range(POOL_SIZE)]
    gevent.joinall(probes, timeout=30)
    probe = time.monotonic() - probe_started
    errors += [repr(g.exception) for g in probes if g.exception is not None]

    status = djpoolapp.pool_status(alias)[alias]
    return {
        "errors": errors[:10],
        "error_count": len(errors),
        "served": served,
        "sessions": sorted(sessions),
        "elapsed": elapsed,
        "probe_5x0.3s": probe,
        "opened": status.opened,
        "checked_out": status.checked_out,
        "timeouts": status.timeouts,
        "threading_patched": monkey.is_module_patched("threading"),
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
