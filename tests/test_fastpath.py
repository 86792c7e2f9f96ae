"""The fast path (issue 12): between requests a connection *parks* with its
Django wrapper, which takes it back at its next request without Django's
connect bookkeeping or SQLAlchemy's checkout; another thread takes a parked
connection only when nothing is idle.  Proven from the server's side (the
session id that answered, rows another thread sees), on PostgreSQL (both
drivers, ``DJPOOL_TEST_DRIVER``) and MariaDB.
"""

from __future__ import annotations

import gc
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.db import close_old_connections, connections, transaction
from django.test import override_settings
from sqlalchemy import event

import djpoolapp
from djpoolapp.lease import CLOSED, IDLE, PARKED
from djpoolapp.pool import registry
from tests.conftest import ALIASES, wait_session_gone
from tests.test_transparency import in_thread
from tests.testapp.models import Item

pytestmark = [
    pytest.mark.django_db(transaction=True, databases="__all__"),
    pytest.mark.usefixtures("parking"),  # park=True, whatever DJPOOL_PARK says
]

#: One connection: every second thread must take the parked one or wait.
ONE = {"pool_size": 1, "max_overflow": 0, "timeout": 10}

SESSION_SQL = {
    "postgresql": "SELECT pg_backend_pid()",
    "mysql": "SELECT CONNECTION_ID()",
}


def session_of(request_cycle: Callable[[str], tuple[int, bytes]], alias: str) -> int:
    status, body = request_cycle(f"/session/{alias}/")
    assert status == 200, body[:300]
    return int(json.loads(body)["session"])


def leave_uncommitted_row(alias: str) -> int:
    """A request's raw ``BEGIN`` and ``INSERT``, left open (behind Django's
    back); the server session id it ran on."""
    connection = connections[alias]
    with connection.cursor() as cursor:
        cursor.execute(SESSION_SQL[connection.vendor])
        (session,) = cursor.fetchone()
        cursor.execute("BEGIN")
        cursor.execute(
            "INSERT INTO testapp_item (name, value, created) "
            "VALUES ('uncommitted', 1, CURRENT_TIMESTAMP)"
        )
    return int(session)


def session_and_uncommitted_rows(alias: str) -> tuple[int, int]:
    """The server session id this thread's connection runs on, and the rows
    :func:`leave_uncommitted_row` left that it can see."""
    connection = connections[alias]
    with connection.cursor() as cursor:
        cursor.execute(SESSION_SQL[connection.vendor])
        (session,) = cursor.fetchone()
        cursor.execute("SELECT COUNT(*) FROM testapp_item WHERE name = 'uncommitted'")
        (count,) = cursor.fetchone()
    return int(session), int(count)


def parked_lease(alias: str) -> Any:
    lease = connections[alias]._djpool_park
    assert lease is not None and lease.state is PARKED
    return lease


@pytest.mark.parametrize("alias", ALIASES)
def test_fastpath__same_session_without_a_checkout(alias, request_cycle):
    first = session_of(request_cycle, alias)
    lease = parked_lease(alias)
    (pool,) = registry.pools(alias)
    checkouts = pool.stats.checkouts
    events: list[str] = []
    for name in ("checkin", "checkout"):
        event.listen(pool.pool, name, lambda *a, name=name: events.append(name))
    sessions = {session_of(request_cycle, alias) for _ in range(50)}
    assert sessions == {first}
    # Each request took its parked connection back: no SQLAlchemy checkout
    # or checkin, but one checkout in the pool's statistics and metrics.
    assert events == []
    assert pool.stats.checkouts == checkouts + 50
    assert parked_lease(alias) is lease
    assert connections[alias].connection is None  # as stock Django between requests
    status = djpoolapp.pool_status(alias)[alias]
    assert (status.checked_out, status.idle) == (0, 1)  # parked = idle
    assert pool.queue.parked() == 1


@pytest.mark.parametrize("alias", ALIASES)
def test_fastpath__parked_connection_taken_by_another_thread_when_pool_empty(
    alias, request_cycle, server_sessions
):
    timeouts = registry.stats(alias).timeouts  # counters are per process
    with override_settings(DJPOOL_OPTIONS={"aliases": {alias: ONE}}):
        mine = session_of(request_cycle, alias)
        lease = parked_lease(alias)
        (pool,) = registry.pools(alias)
        steals = pool.stats.steals
        # The only connection is parked here: without taking it, the other
        # thread would wait 10 s and fail with PoolTimeout.
        theirs = in_thread(lambda: session_of(request_cycle, alias), timeout=30)
        assert theirs == mine
        assert pool.stats.steals == steals + 1
        assert lease.state is not PARKED or not lease.held_by(connections[alias])
        # This wrapper notices at its next request and connects the usual way.
        assert session_of(request_cycle, alias) == mine
        assert server_sessions(alias) == 1
        assert registry.stats(alias).timeouts == timeouts


@pytest.mark.parametrize("alias", ALIASES)
def test_fastpath__threads_take_turns_on_one_connection(alias, request_cycle):
    timeouts = registry.stats(alias).timeouts  # counters are per process
    with override_settings(DJPOOL_OPTIONS={"aliases": {alias: ONE}}):
        mine = session_of(request_cycle, alias)

        def work() -> set[int]:
            return {session_of(request_cycle, alias) for _ in range(5)}

        for _ in range(3):
            assert in_thread(work, timeout=30) == {mine}
            assert session_of(request_cycle, alias) == mine
        assert registry.stats(alias).timeouts == timeouts


@pytest.mark.parametrize("alias", ALIASES)
def test_fastpath__checkin_hands_connection_to_the_waiting_thread(alias, request_cycle):
    """While a checkout waits, the request that ends hands its connection
    to it directly (FairQueue.park): same server session, the rows of the
    ended request's open transaction rolled back, and neither SQLAlchemy's
    checkin nor its checkout event fires."""
    with override_settings(DJPOOL_OPTIONS={"aliases": {alias: ONE}}):
        connection = connections[alias]
        mine = leave_uncommitted_row(alias)
        (pool,) = registry.pools(alias)
        events: list[str] = []
        for name in ("checkin", "checkout"):
            event.listen(pool.pool, name, lambda *a, name=name: events.append(name))
        steals = pool.stats.steals
        seen: list[tuple[int, int]] = []

        def waiter() -> None:
            seen.append(session_and_uncommitted_rows(alias))
            done.wait(30)
            close_old_connections()

        done = threading.Event()
        thread = threading.Thread(target=waiter, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while pool.queue.waiting() != 1:  # it waits: the only connection is here
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.005)
        close_old_connections()  # this request ends: hand-over
        deadline = time.monotonic() + 30
        while not seen:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.005)
        assert seen == [(mine, 0)]
        assert events == []  # no SQLAlchemy checkin or checkout in between
        assert pool.stats.steals == steals  # a hand-over, not a steal
        assert connection._djpool_park is None  # it went to the waiter
        done.set()
        thread.join(30)
        # The waiter's thread ended: its parked connection went back to the
        # queue (one SQLAlchemy checkin), where this thread finds it.
        assert session_of(request_cycle, alias) == mine
        assert events[0] == "checkin"


def counting_set_up(monkeypatch: pytest.MonkeyPatch, alias: str) -> list[str]:
    """Count Django's per-connect set-up (``init_connection_state()``, as
    patched by djpoolapp) of *alias*'s backend, in every thread."""
    klass = type(connections[alias])
    patched = klass.init_connection_state
    calls: list[str] = []

    def counted(self: Any) -> Any:
        calls.append(threading.current_thread().name)
        return patched(self)

    monkeypatch.setattr(klass, "init_connection_state", counted)
    return calls


@pytest.mark.parametrize("alias", ALIASES)
def test_fastpath__new_thread_takes_a_set_up_connection_without_connect(
    alias, monkeypatch
):
    """A thread whose Django connection never connected takes the
    connection another thread set up and parked (the pool has no other)
    without Django's connect(): its wrapper is as connect() leaves it
    (autocommit on, so atomic() opens a transaction and rolls it back),
    and the server session is the same."""
    with override_settings(DJPOOL_OPTIONS={"aliases": {alias: ONE}}):
        connection = connections[alias]
        with connection.cursor() as cursor:
            cursor.execute(SESSION_SQL[connection.vendor])
            (mine,) = cursor.fetchone()
        close_old_connections()
        parked_lease(alias)
        set_ups = counting_set_up(monkeypatch, alias)

        def fresh_thread() -> tuple[int, bool, int]:
            theirs = connections[alias]
            with theirs.cursor() as cursor:
                cursor.execute(SESSION_SQL[theirs.vendor])
                (session,) = cursor.fetchone()
            autocommit = theirs.get_autocommit()
            try:
                with transaction.atomic(using=alias):
                    Item.objects.using(alias).create(name="undone", value=1)
                    raise RuntimeError("roll back")
            except RuntimeError:
                pass
            Item.objects.using(alias).create(name="kept", value=1)
            return (
                int(session),
                autocommit,
                set_ups.count(threading.current_thread().name),
            )

        assert in_thread(fresh_thread, timeout=30) == (mine, True, 0)
        names = set(Item.objects.using(alias).values_list("name", flat=True))
        assert names == {"kept"}


TRANSACTION_MODE_ONE = {"pool_mode": "transaction", **ONE}


@pytest.mark.parametrize("alias", ALIASES)
def test_fastpath__transaction_mode_release_parks_and_statement_takes_it_back(
    alias, monkeypatch
):
    """pool_mode="transaction": each release parks the connection with its
    Django connection and the next statement takes it back: one server
    session, one Django set-up and no SQLAlchemy checkout or checkin for
    five statements; the wrapper is released in between (as without
    parking), and a transaction still works."""
    with override_settings(DJPOOL_OPTIONS={"aliases": {alias: TRANSACTION_MODE_ONE}}):
        connection = connections[alias]
        connection.close()
        set_ups = counting_set_up(monkeypatch, alias)
        sessions = set()
        with connection.cursor() as cursor:  # the first checkout: Django's connect()
            cursor.execute(SESSION_SQL[connection.vendor])
            sessions.add(int(cursor.fetchone()[0]))
        (pool,) = registry.pools(alias)
        lease = parked_lease(alias)
        events: list[str] = []
        for name in ("checkin", "checkout"):
            event.listen(pool.pool, name, lambda *a, name=name: events.append(name))
        checkouts = pool.stats.checkouts
        for _ in range(4):
            with connection.cursor() as cursor:
                cursor.execute(SESSION_SQL[connection.vendor])
                sessions.add(int(cursor.fetchone()[0]))
            assert connection.__dict__.get("connection") is None  # released
            assert parked_lease(alias) is lease
        with transaction.atomic(using=alias):
            Item.objects.using(alias).create(name="tx", value=1)
        close_old_connections()
        assert events == []
        assert pool.stats.checkouts == checkouts + 5  # 4 statements, atomic()
    assert len(sessions) == 1
    assert len(set_ups) == 1  # the first checkout's, by Django's connect()
    assert Item.objects.using(alias).filter(name="tx").count() == 1


@pytest.mark.parametrize("alias", ALIASES)
def test_fastpath__transaction_mode_release_hands_connection_to_a_waiter(alias):
    """pool_mode="transaction", one connection: while another thread's
    checkout waits, a statement's release hands the connection to it (the
    same server session, no SQLAlchemy checkin or checkout); this Django
    connection's next statement then waits for it in turn, within the
    request, and gets it back."""
    with override_settings(DJPOOL_OPTIONS={"aliases": {alias: TRANSACTION_MODE_ONE}}):
        connection = connections[alias]
        seen: list[int] = []
        release = threading.Event()
        holding = threading.Event()

        def other() -> None:
            theirs = connections[alias]
            with theirs.cursor() as cursor:  # waits: the connection is ours
                cursor.execute(SESSION_SQL[theirs.vendor])
                seen.append(int(cursor.fetchone()[0]))
                holding.set()
                release.wait(30)  # holds it: the cursor is open
            close_old_connections()

        with connection.cursor() as cursor:
            cursor.execute(SESSION_SQL[connection.vendor])
            (mine,) = cursor.fetchone()
            (pool,) = registry.pools(alias)
            thread = threading.Thread(target=other, daemon=True)
            thread.start()
            deadline = time.monotonic() + 10
            while pool.queue.waiting() != 1:
                assert time.monotonic() < deadline and thread.is_alive()
                time.sleep(0.005)
            events: list[str] = []
            for name in ("checkin", "checkout"):
                event.listen(pool.pool, name, lambda *a, name=name: events.append(name))
        # The cursor closed: released, and handed to the waiting thread.
        assert holding.wait(30)
        assert seen == [int(mine)]
        assert events == []
        assert connection._djpool_park is None  # it went to the waiter
        assert connection.__dict__.get("connection") is None
        # The next statement waits until the other thread's cursor closes.
        threading.Timer(0.2, release.set).start()
        with connection.cursor() as cursor:
            cursor.execute(SESSION_SQL[connection.vendor])
            assert int(cursor.fetchone()[0]) == int(mine)
        thread.join(30)
        close_old_connections()


@pytest.mark.parametrize("alias", ALIASES)
def test_fastpath__transaction_mode_failed_checkout_leaves_django_unconnected(alias):
    """A checkout that fails in the fast path (here PoolTimeout: another
    thread holds the only connection) leaves Django's connection as a failed
    ``connect()`` does: ``connection.connection`` is None, read at once,
    not another checkout (adversarial review of transaction-mode parking)."""
    tx = {**TRANSACTION_MODE_ONE, "timeout": 0.3}
    with override_settings(DJPOOL_OPTIONS={"aliases": {alias: tx}}):
        connection = connections[alias]
        connection.close()
        with connection.cursor() as cursor:  # released and parked after
            cursor.execute(SESSION_SQL[connection.vendor])
        holding, done = threading.Event(), threading.Event()

        def holder() -> None:
            with connections[alias].cursor() as cursor:  # takes the parked one
                cursor.execute("SELECT 1")
                holding.set()
                done.wait(30)
            connections[alias].close()

        thread = threading.Thread(target=holder, daemon=True)
        thread.start()
        try:
            assert holding.wait(30)
            with pytest.raises(djpoolapp.PoolTimeout):
                with connection.cursor() as cursor:
                    cursor.execute("SELECT 1")
            started = time.monotonic()
            assert connection.connection is None
            assert time.monotonic() - started < 0.2  # no checkout tried
        finally:
            done.set()
            thread.join(30)
        close_old_connections()


#: A session change a stale raw handle makes, and how another session sees it.
STALE_CHANGE = {
    "postgresql": (
        "SET application_name = 'stale_handle'",
        "SELECT pg_backend_pid(), current_setting('application_name')",
    ),
    "mysql": ("SET @stale = 'stale_handle'", "SELECT CONNECTION_ID(), @stale"),
}


@pytest.mark.parametrize("alias", ALIASES)
@pytest.mark.parametrize("mode", ["request", "transaction"])
def test_fastpath__stale_handle_change_never_reaches_the_next_checkout(alias, mode):
    """A raw driver connection reached through the driver's own cursor
    (``cursor.cursor.connection``, which does not pin; ``cursor.connection``
    does since) and used after its checkout ended -- parked in either mode --
    is refused, as stock Django's closed connection would refuse it
    (``InterfaceError``); another thread's next checkout gets an unchanged
    session.  (PostgreSQL handed a session changed this way out before:
    adversarial review; since, the change is refused outright.)"""
    options = TRANSACTION_MODE_ONE if mode == "transaction" else ONE
    change, probe = STALE_CHANGE[connections[alias].vendor]
    with override_settings(DJPOOL_OPTIONS={"aliases": {alias: options}}):
        connection = connections[alias]
        connection.close()
        with connection.cursor() as cursor:
            cursor.execute(SESSION_SQL[connection.vendor])
            cursor.fetchone()
            raw = cursor.cursor.connection
        if mode == "request":
            close_old_connections()  # the request ends: parked
        parked_lease(alias)
        with pytest.raises(Exception, match="went back to the pool"):
            stale = raw.cursor()
            stale.execute(change)

        def other() -> tuple[int, Any]:
            with connections[alias].cursor() as cursor:
                cursor.execute(probe)
                session, value = cursor.fetchone()
            return int(session), value

        _, value = in_thread(other, timeout=30)
        assert value != "stale_handle" and value != b"stale_handle"
        close_old_connections()


@pytest.mark.postgres
def test_fastpath__reset_connection_is_set_up_again_by_the_next_thread(monkeypatch):
    """A session the request changed is reset at its checkin (which undoes
    Django's own set-up: the time zone); the next Django connection to take
    it runs Django's connect() again, so it gets the time zone Django sets."""
    alias = "default"
    with override_settings(
        DJPOOL_OPTIONS={"aliases": {alias: ONE}},
        USE_TZ=False,
        TIME_ZONE="America/Chicago",
    ):
        connection = connections[alias]
        with connection.cursor() as cursor:
            cursor.execute("SHOW TIME ZONE")
            assert cursor.fetchone()[0] == "America/Chicago"
            cursor.execute("SELECT set_config('djpool.leak', 'yes', false)")
        close_old_connections()  # changed: reset (RESET ALL) and returned
        assert connection._djpool_park is None
        set_ups = counting_set_up(monkeypatch, alias)

        def next_request() -> tuple[str, str]:
            with connections[alias].cursor() as cursor:
                cursor.execute("SHOW TIME ZONE")
                (zone,) = cursor.fetchone()
                cursor.execute("SELECT current_setting('djpool.leak', true)")
                (leak,) = cursor.fetchone()
            return zone, leak or ""

        assert in_thread(next_request, timeout=30) == ("America/Chicago", "")
        assert len(set_ups) == 1  # Django's set-up ran for it


@pytest.mark.parametrize("alias", ALIASES)
def test_fastpath__connection_checked_out_for_a_failed_connect_goes_back(
    alias, monkeypatch
):
    """ensure_connection() checks a connection out for Django's connect() to
    set up; when connect() fails before taking it, the connection goes back
    to the pool (not stranded checked out)."""
    with override_settings(DJPOOL_OPTIONS={"aliases": {alias: ONE}}):
        connection = connections[alias]
        connection.ensure_connection()
        close_old_connections()
        lease = parked_lease(alias)
        connection._djpool_park = None
        lease.release_parked()  # idle in the queue, set up
        lease.set_up_for = None  # as after a reset: Django's connect() must run

        def refuse(self: Any) -> None:
            raise RuntimeError("check_settings refused")

        monkeypatch.setattr(type(connection), "check_settings", refuse)
        with pytest.raises(RuntimeError, match="check_settings refused"):
            connection.ensure_connection()
        assert connection.connection is None
        assert connection._djpool_pending is None
        status = djpoolapp.pool_status(alias)[alias]
        assert (status.checked_out, status.idle) == (0, 1)
        monkeypatch.undo()
        connection.ensure_connection()  # and it is handed out again
        assert connection.connection is lease.conn


@pytest.mark.parametrize("alias", ALIASES)
def test_fastpath__rolled_back_before_another_thread_takes_it(alias, request_cycle):
    """A transaction opened behind Django's back is rolled back when the
    connection parks: the thread that takes it sees none of its rows."""
    with override_settings(DJPOOL_OPTIONS={"aliases": {alias: ONE}}):
        mine = leave_uncommitted_row(alias)
        close_old_connections()  # the request ends
        parked_lease(alias)

        assert in_thread(session_and_uncommitted_rows, alias, timeout=30) == (mine, 0)


@pytest.mark.parametrize("alias", ALIASES)
def test_fastpath__changed_session_is_reset_not_parked(alias, request_cycle):
    connection = connections[alias]
    change, read = {
        "postgresql": (
            "SELECT set_config('djpool.leak', 'yes', false)",
            "SELECT current_setting('djpool.leak', true)",
        ),
        "mysql": ("SET @djpool_leak = 'yes'", "SELECT @djpool_leak"),
    }[connection.vendor]
    with connection.cursor() as cursor:
        cursor.execute(change)
    close_old_connections()
    assert connection._djpool_park is None  # returned, reset (or closed)
    with connection.cursor() as cursor:
        cursor.execute(read)
        (value,) = cursor.fetchone()
    assert value in (None, "")
    close_old_connections()
    parked_lease(alias)  # an unchanged session parks again


@pytest.mark.parametrize("alias", ALIASES)
def test_fastpath__dispose_closes_parked_connections(
    alias, request_cycle, server_sessions
):
    first = session_of(request_cycle, alias)
    lease = parked_lease(alias)
    djpoolapp.dispose(alias)
    assert lease.state is CLOSED
    deadline = time.monotonic() + 5
    while server_sessions(alias) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server_sessions(alias) == 0
    assert session_of(request_cycle, alias) != first  # a new pool, a new session


@pytest.mark.parametrize("alias", ALIASES)
def test_fastpath__thread_end_returns_its_parked_connection(alias, request_cycle):
    with override_settings(DJPOOL_OPTIONS={"aliases": {alias: ONE}}):
        leases: list[Any] = []
        recovered = registry.stats(alias).recovered  # counters are per process

        def work() -> int:
            session = session_of(request_cycle, alias)
            leases.append(parked_lease(alias))
            return session

        theirs = in_thread(work, timeout=30)
        gc.collect()
        (lease,) = leases
        assert lease.state is IDLE  # back in SQLAlchemy's queue, not parked
        (pool,) = registry.pools(alias)
        assert pool.queue.parked() == 0
        assert pool.queue.qsize() == 1
        assert session_of(request_cycle, alias) == theirs
        assert pool.stats.recovered == recovered  # not an abandoned checkout


@pytest.mark.parametrize("alias", ALIASES)
def test_fastpath__dead_parked_connection_replaced(alias, request_cycle, admin_kill):
    first = session_of(request_cycle, alias)
    lease = parked_lease(alias)
    admin_kill(alias, first)
    deadline = time.monotonic() + 5
    second = session_of(request_cycle, alias)  # the request does not fail
    assert second != first
    assert lease.state is CLOSED
    assert time.monotonic() < deadline
    assert djpoolapp.pool_status(alias)[alias].invalidated >= 1


@pytest.fixture
def admin_kill() -> Any:
    """``admin_kill(alias, session)``: end a server session from outside."""
    from tests.conftest import monitor_connection

    opened: list[Any] = []

    def kill(alias: str, session: int) -> None:
        conn = monitor_connection(alias)
        opened.append(conn)
        cursor = conn.cursor()
        if connections[alias].vendor == "postgresql":
            cursor.execute("SELECT pg_terminate_backend(%s)", [session])
        else:
            cursor.execute(f"KILL {int(session)}")
        wait_session_gone(alias, session)

    yield kill
    for conn in opened:
        conn.close()
