"""Celery-style prefork: forked worker processes next to a working parent.

The parent holds a checked-out connection and has another idle in its pool
on each alias when it forks a ``multiprocessing`` pool of 4 workers (the
``fork`` start method, as Celery's prefork pool uses).  The workers run ORM
tasks through both pooled aliases while the parent keeps querying.  No socket
may be shared: each worker opens its own sessions, and the parent's sessions
stay the same and keep working.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import warnings
from collections import defaultdict
from typing import Any

from django.db import connections

from djpoolapp.drivers import PooledConnection
from tests.integration import BOTH_DATABASES
from tests.integration.conftest import Monitor
from tests.integration.views import session_id
from tests.testapp.models import Item

pytestmark = BOTH_DATABASES

WORKERS = 4
TASKS = 32
ALIASES = ("default", "mysql")


def _task(number: int) -> dict[str, Any]:
    """A task in a forked worker: ORM work on both aliases, then close the
    connections as Celery does after each task (back to this worker's pool)."""
    done: dict[str, Any] = {"pid": os.getpid()}
    try:
        for alias in ALIASES:
            Item.objects.using(alias).create(name=f"task-{number}")
            done[alias] = session_id(alias)
            done[f"{alias} pooled"] = isinstance(
                connections[alias].connection, PooledConnection
            )
            done[f"{alias} count"] = (
                Item.objects.using(alias).filter(name__startswith="task-").count()
            )
    finally:
        connections.close_all()
    return done


def _sessions_in_another_thread() -> dict[str, int]:
    """Check out one connection per alias in a short-lived thread and return
    it: it stays idle in this process's pool."""
    found: dict[str, int] = {}

    def run() -> None:
        try:
            for alias in ALIASES:
                found[alias] = session_id(alias)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    return found


def test_prefork_pool__workers_open_their_own_sessions_while_the_parent_works(seeded):
    held = {alias: session_id(alias) for alias in ALIASES}  # checked out
    idle = _sessions_in_another_thread()  # idle in the parent's pool
    assert set(held.values()).isdisjoint(idle.values())

    parent_seen: dict[str, set[int]] = defaultdict(set)
    context = multiprocessing.get_context("fork")
    with warnings.catch_warnings():
        # Python 3.12+ warns on fork() in a process with threads.  This test
        # leaves none running, but a thread of another test may live on
        # (pytest-django's live_server is session-scoped).
        warnings.filterwarnings(
            "ignore", r"This process .* is multi-threaded", DeprecationWarning
        )
        pool = context.Pool(WORKERS)
    try:
        pending = pool.map_async(_task, range(TASKS), chunksize=2)
        while not pending.ready():  # the parent keeps working meanwhile
            for alias in ALIASES:
                parent_seen[alias].add(session_id(alias))
                Item.objects.using(alias).count()
            pending.wait(0.005)
        results = pending.get(timeout=60)
        pool.close()
    finally:
        pool.terminate()
        pool.join()

    # The parent: the same sessions all along, still working after.
    for alias in ALIASES:
        assert parent_seen[alias] <= {held[alias]}, (alias, parent_seen, held)
        assert session_id(alias) == held[alias]
    # Its idle pooled connection survived too: still on the server, and the
    # next checkout gets it back (not a replacement for a dead one).
    for alias in ALIASES:
        monitor = Monitor(alias)
        try:
            assert idle[alias] in monitor.session_ids()
        finally:
            monitor.close()
    assert _sessions_in_another_thread() == idle

    # The workers: separate processes, their own pooled sessions, reused
    # from task to task (one session per worker and alias).
    parent_sessions = {*held.values(), *idle.values()}
    pids = {result["pid"] for result in results}
    assert os.getpid() not in pids
    assert 1 < len(pids) <= WORKERS
    for alias in ALIASES:
        per_worker: dict[int, set[int]] = defaultdict(set)
        for result in results:
            assert result[f"{alias} pooled"]
            per_worker[result["pid"]].add(result[alias])
        worker_sessions = set().union(*per_worker.values())
        assert worker_sessions.isdisjoint(parent_sessions), (alias, per_worker)
        assert all(len(sessions) == 1 for sessions in per_worker.values()), per_worker
        assert len(worker_sessions) == len(pids)
        assert (
            Item.objects.using(alias).filter(name__startswith="task-").count() == TASKS
        )
