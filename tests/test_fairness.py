"""Waiters are served first come, first served (CONTRACT section 2, issue 12).

Unit tests of :class:`djpoolapp.queue.FairQueue` (no database), then the
pool on the real servers through Django's ORM: many threads on a small pool
all served evenly and without a timeout, and the order of hand-off proven
with waiters queued in a known order.  No assertion depends on the
machine's speed beyond generous bounds.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.db import OperationalError, connections
from django.http import HttpRequest, HttpResponse
from django.test import override_settings
from django.urls import path
from sqlalchemy.pool import QueuePool

from djpoolapp import queue as fair
from djpoolapp.pool import registry
from djpoolapp.queue import Empty, FairQueue, FairQueuePool, Full
from tests.conftest import ALIASES
from tests.testapp.models import Item

ROOT = Path(__file__).resolve().parent.parent


def wait_until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.002)


def start(target: Callable[..., Any], *args: Any) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


# -- FairQueue: the queue API of sqlalchemy.util.queue.Queue ------------------
def test_queue__idle_items_fifo_by_default():
    queue: FairQueue[int] = FairQueue(3)
    for item in (1, 2, 3):
        queue.put(item, False)
    assert [queue.get(False) for _ in range(3)] == [1, 2, 3]


def test_queue__idle_items_lifo_with_use_lifo():
    queue: FairQueue[int] = FairQueue(3, use_lifo=True)
    for item in (1, 2, 3):
        queue.put(item, False)
    assert [queue.get(False) for _ in range(3)] == [3, 2, 1]


def test_queue__sizes():
    queue: FairQueue[int] = FairQueue(2)
    assert (queue.empty(), queue.full(), queue.qsize()) == (True, False, 0)
    queue.put(1, False)
    assert (queue.empty(), queue.full(), queue.qsize()) == (False, False, 1)
    queue.put(2, False)
    assert (queue.empty(), queue.full(), queue.qsize()) == (False, True, 2)
    assert queue.maxsize == 2 and queue.use_lifo is False


def test_queue__put_on_full_raises_full():
    queue: FairQueue[int] = FairQueue(1)
    queue.put_nowait(1)
    with pytest.raises(Full):
        queue.put(2, False)
    started = time.monotonic()
    with pytest.raises(Full):
        queue.put(2, True, 0.05)
    assert time.monotonic() - started >= 0.05
    assert queue.qsize() == 1


def test_queue__maxsize_zero_is_unbounded():
    queue: FairQueue[int] = FairQueue(0)
    for item in range(1000):
        queue.put(item, False)
    assert queue.qsize() == 1000 and not queue.full()


def test_queue__get_on_empty_raises_empty():
    queue: FairQueue[int] = FairQueue(2)
    with pytest.raises(Empty):
        queue.get(False)
    with pytest.raises(Empty):
        queue.get_nowait()
    started = time.monotonic()
    with pytest.raises(Empty):
        queue.get(True, 0.05)
    assert 0.05 <= time.monotonic() - started < 5
    assert queue.waiting() == 0  # the timed-out getter left the line


def test_queue__negative_timeout_is_refused():
    queue: FairQueue[int] = FairQueue(1)
    with pytest.raises(ValueError, match="positive"):
        queue.get(True, -1)
    queue.put(1)
    with pytest.raises(ValueError, match="positive"):
        queue.put(2, True, -1)


def test_queue__blocked_put_resumes_when_room_is_made():
    queue: FairQueue[int] = FairQueue(1)
    queue.put(1)
    putter = start(queue.put, 2, True, 10)
    time.sleep(0.05)
    assert putter.is_alive() and queue.qsize() == 1
    assert queue.get(False) == 1
    putter.join(10)
    assert not putter.is_alive()
    assert queue.get(False) == 2


def test_queue__put_hands_the_item_to_the_waiter_not_to_a_barging_getter():
    """The heart of it: once a getter waits, a put() is its item; another
    thread calling get() right after the put() finds nothing idle."""
    queue: FairQueue[str] = FairQueue(1)
    got: list[str] = []
    waiter = start(lambda: got.append(queue.get(True, 10)))
    wait_until(lambda: queue.waiting() == 1)
    with queue.mutex:  # the waiter cannot run before the barging attempt
        queue.put("conn", False)
        assert queue.qsize() == 0
        with pytest.raises(Empty):
            queue.get(False)
    waiter.join(10)
    assert got == ["conn"]
    assert queue.qsize() == 0 and queue.waiting() == 0


def test_queue__waiters_are_served_in_arrival_order():
    queue: FairQueue[int] = FairQueue(1)
    order: list[int] = []
    threads = []
    for index in range(8):
        threads.append(start(lambda i=index: order.append((i, queue.get(True, 10)))))
        wait_until(lambda n=index + 1: queue.waiting() == n)
    for item in range(8):
        queue.put(item, False)
    for thread in threads:
        thread.join(10)
    # Waiter i got item i (the order they wake in is the scheduler's).
    assert sorted(order) == [(i, i) for i in range(8)]


def test_queue__getter_arriving_while_others_wait_queues_behind_them():
    queue: FairQueue[str] = FairQueue(1)
    got: list[tuple[str, str]] = []
    first = start(lambda: got.append(("first", queue.get(True, 10))))
    wait_until(lambda: queue.waiting() == 1)
    second = start(lambda: got.append(("second", queue.get(True, 10))))
    wait_until(lambda: queue.waiting() == 2)
    queue.put("a", False)
    first.join(10)
    queue.put("b", False)
    second.join(10)
    assert got == [("first", "a"), ("second", "b")]


class _WaiterLock:
    """A waiter's lock (taken when it queues up, released to wake it) whose
    ``acquire()`` a test decorates."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()

    def acquire(self, *args: Any) -> bool:
        return self.lock.acquire(*args)

    def release(self) -> None:
        self.lock.release()


def test_queue__timeout_racing_a_hand_off_keeps_the_item(monkeypatch):
    """A waiter whose timeout expires just as an item is handed to it
    returns the item (it was removed from the line by the put)."""
    queue: FairQueue[str] = FairQueue(1)

    class LateLock(_WaiterLock):
        def acquire(self, *args: Any) -> bool:
            self.lock.acquire(*args)
            queue.put("conn", False)  # served right at the deadline
            return False

    class LateWaiter(fair._Waiter):
        def __init__(self) -> None:
            super().__init__()
            self.lock = LateLock()

    monkeypatch.setattr(fair, "_Waiter", LateWaiter)
    assert queue.get(True, 0.01) == "conn"
    assert queue.qsize() == 0 and queue.waiting() == 0


@pytest.mark.parametrize("lifo", [False, True])
def test_queue__item_returned_while_a_getter_queues_up_is_not_left_idle(
    monkeypatch, lifo
):
    """A put() that runs inside get() after it found nothing idle and
    before it queued up (the garbage collector returning an abandoned
    checkout's connection, in the same thread, under the reentrant mutex:
    Python 3.13 collects at any allocation) gives the item to that getter
    at once; it used to become idle while the getter slept to its timeout
    (a PoolTimeout with a connection idle)."""
    queue: FairQueue[str] = FairQueue(1, use_lifo=lifo)

    class CollectedWaiter(fair._Waiter):
        def __init__(self) -> None:
            super().__init__()
            queue.put("returned by the collector", False)

    monkeypatch.setattr(fair, "_Waiter", CollectedWaiter)
    started = time.monotonic()
    assert queue.get(True, 2) == "returned by the collector"
    assert time.monotonic() - started < 1
    assert queue.qsize() == 0 and queue.waiting() == 0


class _InterruptedLock(_WaiterLock):
    def acquire(self, *args: Any) -> bool:
        self.lock.acquire(*args)
        raise KeyboardInterrupt


class InterruptedWaiter(fair._Waiter):
    """A waiter interrupted (KeyboardInterrupt, as gevent.Timeout would)
    as soon as it wakes, served or not."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = _InterruptedLock()


def interrupted_getter(
    queue: FairQueue[Any], interrupted: list[BaseException]
) -> Callable[[], None]:
    """A get() on *queue* that records the interrupt that stops it."""

    def get() -> None:
        try:
            queue.get(True, 10)
        except KeyboardInterrupt as error:
            interrupted.append(error)

    return get


def test_queue__interrupted_waiter_passes_its_item_on(monkeypatch):
    """KeyboardInterrupt / gevent.Timeout in a waiter that was already
    handed an item: the item goes to the next waiter, never lost."""
    queue: FairQueue[str] = FairQueue(1)
    interrupted: list[BaseException] = []
    first = interrupted_getter(queue, interrupted)
    monkeypatch.setattr(fair, "_Waiter", InterruptedWaiter)
    victim = start(first)
    wait_until(lambda: queue.waiting() == 1)
    monkeypatch.undo()
    got: list[str] = []
    second = start(lambda: got.append(queue.get(True, 10)))
    wait_until(lambda: queue.waiting() == 2)
    queue.put("conn", False)
    victim.join(10)
    second.join(10)
    assert len(interrupted) == 1
    assert got == ["conn"]
    # ... and with nobody else waiting it becomes idle again.
    monkeypatch.setattr(fair, "_Waiter", InterruptedWaiter)
    victim = start(first)
    wait_until(lambda: queue.waiting() == 1)
    queue.put("conn", False)
    victim.join(10)
    assert len(interrupted) == 2
    assert queue.qsize() == 1 and queue.waiting() == 0


class FakeLease:
    """What FairQueue.park needs of a lease: its state, ``stolen()`` and
    ``release_parked()`` (which returns it to the queue as an entry)."""

    def __init__(self, queue: FairQueue[Any], name: str) -> None:
        self.queue, self.name, self.state = queue, name, "in use"
        self.stolen_count = 0
        self.released = False

    def stolen(self) -> None:
        self.state = "in use"
        self.stolen_count += 1

    def release_parked(self) -> None:
        assert self.queue.unpark(self)
        self.released = True
        self.queue.put(f"entry of {self.name}", False)


def test_queue__park_hands_the_lease_to_the_longest_waiter():
    """A checkin that would park hands the lease straight to the oldest
    waiting getter, whose get() raises Stolen(handed=True) with it: it never
    becomes idle or parked, and later waiters keep waiting in order."""
    queue: FairQueue[Any] = FairQueue(2)
    results: list[Any] = []

    def getter(tag: str) -> None:
        try:
            results.append((tag, queue.get(True, 10)))
        except fair.Stolen as stolen:
            results.append((tag, stolen.item, stolen.handed))

    first = start(getter, "first")
    wait_until(lambda: queue.waiting() == 1)
    second = start(getter, "second")
    wait_until(lambda: queue.waiting() == 2)
    lease = FakeLease(queue, "a")
    assert queue.park(lease) is True
    first.join(10)
    assert results == [("first", lease, True)]
    assert lease.stolen_count == 1 and lease.state == "in use"
    assert queue.parked() == 0 and queue.qsize() == 0 and queue.waiting() == 1
    # Nobody else waits: the next one parks, and the waiter left steals
    # nothing until it is its turn (a plain put serves it).
    queue.put("entry", False)
    second.join(10)
    assert results[1] == ("second", "entry")
    assert queue.park(FakeLease(queue, "b")) is True and queue.parked() == 1


def test_queue__interrupted_waiter_passes_a_handed_lease_on(monkeypatch):
    """KeyboardInterrupt in a getter that was just handed a lease: the next
    waiter gets the lease; with none, it goes back to the pool
    (release_parked), never stranded."""
    queue: FairQueue[Any] = FairQueue(2)
    interrupted: list[BaseException] = []
    victim_get = interrupted_getter(queue, interrupted)
    monkeypatch.setattr(fair, "_Waiter", InterruptedWaiter)
    victim = start(victim_get)
    wait_until(lambda: queue.waiting() == 1)
    monkeypatch.undo()
    got: list[Any] = []

    def patient() -> None:
        try:
            queue.get(True, 10)
        except fair.Stolen as stolen:
            got.append(stolen.item)

    second = start(patient)
    wait_until(lambda: queue.waiting() == 2)
    lease = FakeLease(queue, "a")
    assert queue.park(lease)
    victim.join(10)
    second.join(10)
    assert len(interrupted) == 1 and got == [lease]
    assert lease.stolen_count == 2 and not lease.released
    # ... and with nobody else waiting it goes back to the pool as an entry.
    monkeypatch.setattr(fair, "_Waiter", InterruptedWaiter)
    victim = start(victim_get)
    wait_until(lambda: queue.waiting() == 1)
    other = FakeLease(queue, "b")
    assert queue.park(other)
    victim.join(10)
    assert len(interrupted) == 2 and other.released
    assert queue.get(False) == "entry of b"
    assert queue.parked() == 0 and queue.waiting() == 0


def test_queue__reentrant_put_inside_get():
    """SQLAlchemy's reason for a reentrant mutex: a garbage-collected checkout
    returns its connection from within get() in the same thread."""
    queue: FairQueue[str] = FairQueue(2)
    with queue.mutex:
        queue.put("conn", False)
        assert queue.get(False) == "conn"


@pytest.mark.parametrize("use_lifo", [False, True], ids=["fifo", "lifo"])
def test_queue__no_item_lost_and_no_wakeup_lost_under_stress(use_lifo):
    """32 threads x 300 cycles on 3 items, a third of the gets with tiny
    timeouts (racing the hand-off): every item comes back, every thread
    finishes, nothing is handed out twice at once."""
    items = 3
    queue: FairQueue[int] = FairQueue(items, use_lifo=use_lifo)
    for item in range(items):
        queue.put(item, False)
    held: set[int] = set()
    lock = threading.Lock()
    problems: list[str] = []
    timeouts = [0]

    def cycle(seed: int) -> None:
        chooser = random.Random(seed)
        for _ in range(300):
            timeout = chooser.choice((None, 5.0, 0.0005))
            try:
                item = queue.get(True, timeout)
            except Empty:
                with lock:
                    timeouts[0] += 1
                continue
            with lock:
                if item in held:
                    problems.append(f"{item} handed out twice")
                held.add(item)
            if chooser.random() < 0.3:
                time.sleep(0)
            with lock:
                held.discard(item)
            queue.put(item, False)

    threads = [start(cycle, seed) for seed in range(32)]
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads), "a waiter never woke"
    assert problems == []
    assert queue.qsize() == items and queue.waiting() == 0
    assert sorted(queue.get(False) for _ in range(items)) == list(range(items))


def test_queue__greenlets_served_in_order_under_gevent():
    """gevent.monkey.patch_all(): waiting greenlets yield to the hub and are
    served in arrival order (a fresh interpreter: patching must come first)."""
    pytest.importorskip("gevent")
    script = """
import gevent.monkey; gevent.monkey.patch_all()
import json, threading, gevent
from djpoolapp.queue import FairQueue
queue = FairQueue(1)
queue.put("conn", False)
order = []
def client(i):
    item = queue.get(True, 10)
    order.append(i)
    gevent.sleep(0.001)
    queue.put(item, False)
first = queue.get(False)
greenlets = []
for i in range(50):
    greenlets.append(gevent.spawn(client, i))
    gevent.sleep(0)
gevent.sleep(0.01)
waiting = queue.waiting()
queue.put(first, False)
gevent.joinall(greenlets, timeout=30)
print(json.dumps({"order": order, "waiting": waiting,
                  "patched": threading.Lock.__module__}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
        timeout=120, env={**os.environ, "PYTHONWARNINGS": "error"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert "gevent" in report["patched"]
    assert report["waiting"] == 50
    assert report["order"] == list(range(50))


# -- FairQueuePool: QueuePool's overflow and timeout, unchanged ---------------
class _Conn:
    def close(self) -> None:
        pass

    def rollback(self) -> None:
        pass


def _pool(**options: Any) -> FairQueuePool:
    return FairQueuePool(_Conn, reset_on_return=None, **options)


def test_pool__overflow_and_timeout_as_queuepool():
    """pool_size=1, max_overflow=1: two checkouts, the third times out with
    SQLAlchemy's TimeoutError; the overflow connection is closed on
    return when nobody waits, as QueuePool does."""
    from sqlalchemy import exc

    pool = _pool(pool_size=1, max_overflow=1, timeout=0.05)
    first, second = pool.connect(), pool.connect()
    assert (pool.checkedout(), pool.overflow()) == (2, 1)
    with pytest.raises(exc.TimeoutError, match="QueuePool limit of size 1 overflow 1"):
        pool.connect()
    second.close()
    first.close()
    assert (pool.checkedout(), pool.checkedin(), pool.overflow()) == (0, 1, 0)
    assert isinstance(pool.recreate(), FairQueuePool)


def test_pool__hand_off_keeps_the_overflow_count():
    """An overflow connection returned while a checkout waits goes to that
    waiter (no close, no new connection): counts stay consistent."""
    pool = _pool(pool_size=1, max_overflow=1, timeout=10)
    first, second = pool.connect(), pool.connect()
    got: list[Any] = []
    waiter = start(lambda: got.append(pool.connect()))
    wait_until(lambda: pool.waiting() == 1)
    handed = second.dbapi_connection
    second.close()
    waiter.join(10)
    assert got[0].dbapi_connection is handed
    assert (pool.checkedout(), pool.checkedin(), pool.overflow()) == (2, 0, 1)
    got[0].close()
    first.close()
    assert (pool.checkedout(), pool.checkedin(), pool.overflow()) == (0, 1, 0)


def test_pool__dispose_closes_idle_connections():
    """QueuePool.dispose() drains the idle connections through get(False)
    and the pool goes on serving checkouts (QueuePool's own semantics)."""
    closed: list[_Conn] = []

    class Tracked(_Conn):
        def close(self) -> None:
            closed.append(self)

    pool = FairQueuePool(Tracked, reset_on_return=None, pool_size=2,
                         max_overflow=0, timeout=10)  # fmt: skip
    first, second = pool.connect(), pool.connect()
    second.close()
    pool.dispose()
    assert len(closed) == 1 and pool.checkedin() == 0
    again = pool.connect()
    assert again.dbapi_connection is not first.dbapi_connection
    again.close()
    first.close()
    assert pool.checkedin() == 2


def test_pool__waiting_checkouts_served_in_order():
    pool = _pool(pool_size=1, max_overflow=0, timeout=10)
    held = pool.connect()
    order: list[int] = []

    def checkout(index: int) -> None:
        conn = pool.connect()
        order.append(index)
        conn.close()

    threads = []
    for index in range(6):
        threads.append(start(checkout, index))
        wait_until(lambda n=index + 1: pool.waiting() == n)
    held.close()
    for thread in threads:
        thread.join(10)
    assert order == list(range(6))


# -- on the real servers, through Django's ORM ---------------------------------
pytestmark_db = pytest.mark.django_db(transaction=True, databases="__all__")


@contextmanager
def pool_options(alias: str, **options: Any) -> Iterator[None]:
    for connection in connections.all(initialized_only=True):
        connection.close()
    registry.dispose()
    try:
        with override_settings(DJPOOL_OPTIONS={"aliases": {alias: options}}):
            yield
    finally:
        registry.dispose()


def _query(alias: str) -> int:
    """An ORM query, then the server session id that answered it."""
    connection = connections[alias]
    Item.objects.using(alias).exists()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_backend_pid()"
            if connection.vendor == "postgresql"
            else "SELECT CONNECTION_ID()"
        )
        (session,) = cursor.fetchone()
    return int(session)


def _serve(alias: str, hold: float) -> int:
    """One request's worth of work outside a request: :func:`_query`, the
    connection held *hold* seconds, then Django's close() (as at request
    end).  Returns the server session id."""
    try:
        session = _query(alias)
        time.sleep(hold)
        return session
    finally:
        connections[alias].close()


def hold_view(request: HttpRequest, alias: str, ms: int) -> HttpResponse:
    """A request that keeps its connection *ms* milliseconds (ORM query,
    then a wait); a checkout that timed out answers 503."""
    try:
        session = _query(alias)
    except OperationalError:  # PoolTimeout
        return HttpResponse("timeout", status=503)
    time.sleep(ms / 1000)
    return HttpResponse(str(session))


#: ROOT_URLCONF of the request-cycle tests below.
urlpatterns = [path("hold/<str:alias>/<int:ms>/", hold_view)]


@pytestmark_db
@pytest.mark.slow
@pytest.mark.parametrize("alias", ALIASES)
def test_contention__every_thread_served_evenly_without_timeouts(
    alias, server_sessions, request_cycle
):
    """24 threads send requests through Django's WSGI handler for at least
    3 s and until they have been served 8 times each on average (at most
    30 s: a slow machine runs longer, not a different test); each request
    holds its connection 20 ms; pool_size=2, max_overflow=0, timeout=2 s: no
    PoolTimeout, each thread's count within ±25 % of the mean, and the server
    never sees more than 2 sessions."""
    threads, seconds, cap, cycles = 24, 3.0, 30.0, 8
    served = [0] * threads
    errors: list[str] = []
    with (
        pool_options(alias, pool_size=2, max_overflow=0, timeout=2.0),
        override_settings(ROOT_URLCONF=__name__),
    ):
        ready = threading.Barrier(threads + 1)
        stop = threading.Event()

        def client(index: int) -> None:
            ready.wait()
            while not stop.is_set():
                status, body = request_cycle(f"/hold/{alias}/20/")
                if status == 200:
                    served[index] += 1
                else:
                    errors.append(f"{status}: {body[:100]!r}")
            connections.close_all()

        workers = [start(client, index) for index in range(threads)]
        started = time.monotonic()
        ready.wait()
        peak = 0
        while any(worker.is_alive() for worker in workers):
            peak = max(peak, server_sessions(alias))
            elapsed = time.monotonic() - started
            if elapsed >= cap or (
                elapsed >= seconds and sum(served) >= threads * cycles
            ):
                stop.set()
            time.sleep(0.05)
    assert errors == []
    mean = statistics.mean(served)
    print(f"\n{alias}: served per thread {sorted(served)}, mean {mean:.1f}")
    assert mean >= 5, served  # the scenario really ran (>= 5 cycles per thread)
    assert all(abs(count - mean) <= 0.25 * mean for count in served), served
    assert 1 <= peak <= 2


@pytestmark_db
@pytest.mark.parametrize("alias", ALIASES)
def test_contention__connection_handed_to_waiters_in_arrival_order(alias):
    """pool_size=1: a holder keeps the one connection while 6 threads queue
    one after another; on release they get it in that order, the same server
    session each time, and the holder's own immediate checkout after its
    release (the barging attempt) comes last."""
    order: list[str] = []
    sessions: list[int] = []
    with pool_options(alias, pool_size=1, max_overflow=0, timeout=30.0):
        released = threading.Event()
        holding = threading.Event()

        def holder() -> None:
            Item.objects.using(alias).exists()
            holding.set()
            released.wait(30)
            connections[alias].close()  # hands the connection to waiter 0 ...
            sessions.append(_serve(alias, 0))  # ... and tries to take it back
            order.append("holder")

        def waiter(index: int) -> None:
            session = _serve(alias, 0.005)
            order.append(str(index))
            sessions.append(session)

        workers = [start(holder)]
        holding.wait(10)
        (pool,) = registry.pools(alias)
        opened_before = pool.stats.snapshot()["opened"]
        for index in range(6):
            workers.append(start(waiter, index))
            wait_until(lambda n=index + 1: pool.pool.waiting() == n)
        released.set()
        for worker in workers:
            worker.join(30)
        opened = pool.stats.snapshot()["opened"] - opened_before
        open_now = pool.open_connections
    assert order == ["0", "1", "2", "3", "4", "5", "holder"]
    assert len(set(sessions)) == 1  # one server session, handed along
    assert (opened, open_now) == (0, 1)  # no connection but the first


@pytestmark_db
@pytest.mark.parametrize("alias", ALIASES)
def test_alias_pool__is_a_fair_queue_pool(alias):
    """The pool behind an alias is a FairQueuePool (a QueuePool subclass, so
    SQLAlchemy's events and status keep working)."""
    with pool_options(alias, pool_size=1, max_overflow=0):
        Item.objects.using(alias).exists()
        (pool,) = registry.pools(alias)
        assert type(pool.pool) is FairQueuePool
        assert isinstance(pool.pool, QueuePool)
        assert "Current Checked out connections: 1" in pool.pool.status()
        connections[alias].close()
