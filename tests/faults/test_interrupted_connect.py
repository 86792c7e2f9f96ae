"""An interrupted connect leaves no session on the server (CONTRACT section 2:
gevent workers work; removing the app restores stock behaviour).

A ``gevent.Timeout`` around Django's ``ensure_connection()`` fires while the
pool opens a new connection: inside the driver's connect, after the driver
returned, while SQLAlchemy records and checks it out, while a
``connection_checked_out`` receiver runs, after the pool handed it to
Django, during Django's session set-up, and while the pre-ping replaces a
dead idle connection.  After the request ends and the pools are disposed, the
server must list no session of the worker: every connection is closed, or
held by nobody and closed at once as stock Django's are -- not left to the
cyclic garbage collector, which the worker turns off
(tests/faults/interrupt_worker.py).

Found by an adversarial review: SQLAlchemy re-raises through
``util.safe_reraise.__exit__``, whose frame keeps the exception in a variable
while sitting in the exception's traceback; the cycle kept psycopg 3's
half-opened connection (or psycopg2's, through psycogreen's wait callback)
alive until the next collection, and a connection interrupted after the
driver returned never had anything to close it but the collector.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connections

from tests.conftest import ALIASES

pytestmark = [
    pytest.mark.faults,
    pytest.mark.django_db(transaction=True, databases="__all__"),
]

ROOT = Path(__file__).resolve().parents[2]


def run_worker(alias: str, mode: str) -> dict[str, Any]:
    """tests/faults/interrupt_worker.py under gevent, in a process group of
    its own; its report."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DJPOOL_TEST_RUN_ID": settings.RUN_ID,
        "DJPOOL_TEST_DRIVER": settings.DRIVER,
    }
    try:
        worker = subprocess.run(
            [sys.executable, "-m", "tests.faults.interrupt_worker", alias, mode],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
            start_new_session=True,
        )  # fmt: skip
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"worker hung: {expired.stderr!r:.3000}")
    assert worker.returncode == 0, worker.stderr[-3000:]
    report: dict[str, Any] = json.loads(worker.stdout.strip().splitlines()[-1])
    return report


@pytest.mark.slow
@pytest.mark.parametrize("alias", ALIASES)
def test_interrupted_connect__leaves_no_session_with_the_collector_off(alias):
    """With ``gc.disable()``, a ``gevent.Timeout`` at each point of a new
    connection's opening: no session of the worker is left on the server
    (pg_stat_activity / PROCESSLIST) once the request ended and the pools
    were disposed, nothing stays checked out, and every point was reached
    (the Timeout fired there).  Stock Django, interrupted at the points it
    shares (the driver's own waits, Django's set-up), leaves none either."""
    pytest.importorskip("gevent")
    if settings.DRIVER == "psycopg2":
        pytest.importorskip("psycogreen")
    pooled = run_worker(alias, "pooled")
    stock = run_worker(alias, "stock")
    points = pooled["points"]
    print(f"\n{alias} ({settings.DRIVER}): {pooled}\nstock: {stock}")
    if connections[alias].vendor == "postgresql":
        # The driver waits cooperatively while it connects: each wait is a
        # point (mysqlclient blocks the process in C: no such point).
        assert pooled["driver_waits"] >= 2
        assert f"driver wait {pooled['driver_waits']}" in points
    assert {"driver returned", "record created", "checked out", "announced",
            "handed over", "django set-up"} <= set(points)  # fmt: skip
    assert set(stock["points"]) <= set(points)
    not_reached = [name for name, found in points.items() if not found["interrupted"]]
    assert not not_reached
    assert all(found["interrupted"] for found in stock["points"].values())
    left = {name: found for name, found in points.items() if found["left"]}
    assert not left, "sessions left until the garbage collector ran"
    assert not [name for name, found in points.items() if found["checked_out"]]
    assert not [name for name, found in stock["points"].items() if found["left"]]
