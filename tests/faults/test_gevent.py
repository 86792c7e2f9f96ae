"""gevent (CONTRACT section 2): monkeypatched workers share the pool safely.
Scenario 7 of issue 3.

The work runs in a fresh interpreter (tests/faults/gevent_worker.py), because
``gevent.monkey.patch_all()`` must run before anything imports threading,
sockets or SQLAlchemy.  What each driver needs under gevent:

- psycopg 3: nothing; it sees gevent's patched ``select`` and waits
  cooperatively (the concurrency probe below proves it).
- psycopg2: ``psycogreen.gevent.patch_psycopg()`` after ``patch_all()``;
  without it every query blocks the whole process.
- mysqlclient: a C library that blocks the process during each query;
  correct under gevent (the pool's waits are gevent-aware) but greenlets do
  not overlap their queries.  Use a pure-Python driver for cooperative MySQL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from django.conf import settings

from tests.conftest import ALIASES

pytestmark = [
    pytest.mark.faults,
    pytest.mark.django_db(transaction=True, databases="__all__"),
]

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("alias", ALIASES)
def test_gevent__greenlets_share_the_pool(alias, server_sessions):
    """gevent.monkey.patch_all(), 100 greenlets x 20 requests through
    Django's WSGI handler with pool_size=5, max_overflow=0: no error, every
    request served, never more than 5 server sessions; on PostgreSQL five
    0.3 s queries in five greenlets overlap (cooperative waiting)."""
    pytest.importorskip("gevent")
    if settings.DRIVER == "psycopg2":
        pytest.importorskip("psycogreen")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DJPOOL_TEST_RUN_ID": settings.RUN_ID,
        "DJPOOL_TEST_DRIVER": settings.DRIVER,
        "PYTHONWARNINGS": "error",
    }
    peak = 0
    done = threading.Event()
    # Its own process group: only the worker's sessions are counted, never
    # those of a process an earlier test left behind.
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.faults.gevent_worker", alias],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip

    def watch() -> None:
        nonlocal peak
        while not done.wait(0.02):
            peak = max(peak, server_sessions(alias, group=worker.pid))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        stdout, stderr = worker.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        worker.kill()
        stdout, stderr = worker.communicate()
    finally:
        done.set()
        watcher.join(5)
    assert worker.returncode == 0, stderr[-3000:]
    report = json.loads(stdout.strip().splitlines()[-1])
    print(f"\n{alias} ({settings.DRIVER}): {report}, peak {peak} server sessions")
    assert report["threading_patched"]
    assert report["error_count"] == 0, report["errors"]
    assert report["served"] == 100 * 20
    assert 1 <= len(report["sessions"]) <= 5
    assert 1 <= peak <= 5
    assert report["opened"] <= 5
    assert (report["checked_out"], report["timeouts"]) == (0, 0)
    if alias == "default":
        assert report["probe_5x0.3s"] < 0.9  # overlapped, not 5 x 0.3 s
