"""Runs in a fresh interpreter for test_stall.py: the pre-ping deadline under
gevent's or eventlet's monkeypatching (which must run before anything
imports threading or sockets).

Usage: python -m tests.faults.green_stall_worker ALIAS gevent|eventlet, with
``DJANGO_SETTINGS_MODULE=tests.faults.settings_startup`` pointing ALIAS at
the parent's stalling proxy.  Serves one request (a connection is parked),
prints ``parked``, waits for a line on stdin (the parent has stalled that
socket meanwhile), serves a second request whose pre-ping is due, and prints
one JSON line: its status, seconds, how often a 10 ms green ticker ran
meanwhile, and the pool's counters.
"""

import sys
import warnings

HUB = sys.argv[2]
if HUB == "gevent":
    from gevent import monkey

    monkey.patch_all()
    patched = monkey.is_module_patched("threading")
else:
    # "Eventlet is deprecated": known, and beside the point here.
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    import eventlet

    eventlet.monkey_patch()
    patched = eventlet.patcher.is_monkey_patched("thread")

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

if os.environ.get("DJPOOL_TEST_DRIVER") == "psycopg2":
    if HUB == "gevent":
        from psycogreen.gevent import patch_psycopg
    else:
        from psycogreen.eventlet import patch_psycopg

    patch_psycopg()

import django  # noqa: E402

if HUB == "gevent":
    from gevent import sleep as green_sleep
    from gevent import spawn
else:
    from eventlet import sleep as green_sleep
    from eventlet import spawn


def main(alias: str) -> dict:
    django.setup()
    import djpoolapp
    from tests.conftest import run_request

    status, body = run_request(f"/session/{alias}/")
    assert status == 200, body[:500]
    first = json.loads(body)["session"]
    time.sleep(0.3)  # past ping_after_idle
    print("parked", flush=True)
    sys.stdin.readline()

    ticks = 0

    def ticker() -> None:
        nonlocal ticks
        while True:
            green_sleep(0.01)
            ticks += 1

    before = djpoolapp.pool_status(alias)[alias]
    background = spawn(ticker)
    started = time.monotonic()
    status, body = run_request(f"/session/{alias}/")
    elapsed = time.monotonic() - started
    background.kill()
    after = djpoolapp.pool_status(alias)[alias]
    return {
        "status": status,
        "new_session": status == 200 and json.loads(body)["session"] != first,
        "elapsed": elapsed,
        "ticks": ticks,
        "invalidated": after.invalidated - before.invalidated,
        "checked_out": after.checked_out,
        "threading_patched": patched,
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])), flush=True)
