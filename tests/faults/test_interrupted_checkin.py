"""An interrupt during the checkin's own round trips closes the connection
(CONTRACT section 2: "an idle connection in the pool never holds a
transaction or a lock"; stock Django's ``close()`` ends the session, its
transaction and its locks at once, and cannot be interrupted in between).

Found by an adversarial review: a ``gevent.Timeout`` around Django's
``close()`` that fired before the checkin's ROLLBACK left the connection to
SQLAlchemy's collector hook, which put it back in the pool *idle in
transaction*, holding the request's ``ACCESS EXCLUSIVE`` lock (the next
requests failed on it), or -- with gevent's ``timeout.start()`` idiom, whose
local keeps the frames alive -- counted as checked out by nobody until the
next collection.  The kind: any interrupt inside any round trip of the
checkin (rollback, session reset, a server-side cursor's close, MySQL's
clear of the warnings).  tests/faults/interrupted_checkin_worker.py runs
each under gevent with the collector off."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

pytestmark = [
    pytest.mark.faults,
    pytest.mark.django_db(transaction=True, databases="__all__"),
]

ROOT = Path(__file__).resolve().parents[2]

CASES = [
    pytest.param("default", "rollback", "with", marks=pytest.mark.postgres,
                 id="postgres-rollback-with"),
    pytest.param("default", "rollback", "cycle", marks=pytest.mark.postgres,
                 id="postgres-rollback-cycle"),
    pytest.param("default", "reset", "with", marks=pytest.mark.postgres,
                 id="postgres-reset"),
    pytest.param("default", "cursors", "cycle", marks=pytest.mark.postgres,
                 id="postgres-cursors"),
    pytest.param("mysql", "rollback", "with", marks=pytest.mark.mysql,
                 id="mysql-rollback-with"),
    pytest.param("mysql", "rollback", "cycle", marks=pytest.mark.mysql,
                 id="mysql-rollback-cycle"),
    pytest.param("mysql", "diagnostics", "with", marks=pytest.mark.mysql,
                 id="mysql-diagnostics"),
]  # fmt: skip


def run_worker(alias: str, point: str, idiom: str) -> dict[str, Any]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DJPOOL_TEST_RUN_ID": settings.RUN_ID,
        "DJPOOL_TEST_DRIVER": settings.DRIVER,
    }
    worker = subprocess.run(
        [sys.executable, "-m", "tests.faults.interrupted_checkin_worker",
         alias, point, idiom],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert worker.returncode == 0, worker.stderr[-3000:]
    report: dict[str, Any] = json.loads(worker.stdout.strip().splitlines()[-1])
    return report


@pytest.mark.parametrize(("alias", "point", "idiom"), CASES)
def test_interrupted_checkin__closes_the_connection(alias, point, idiom):
    """The interrupt reached the checkin's round trip; afterwards nobody
    holds the connection, the pool has nothing idle (it was closed, not put
    back as the request left it) and the server lists no session of the
    worker, before and after a collection."""
    pytest.importorskip("gevent")
    report = run_worker(alias, point, idiom)
    print(f"\n{alias} {point} {idiom} ({settings.DRIVER}): {report}")
    assert report["reached"] and report["interrupted"]
    for state in (report, report["after_gc"]):
        assert state["checked_out"] == 0
        assert state["idle"] == 0
        assert state["sessions"] == []
