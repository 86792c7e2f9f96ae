"""The fast path (``park=True``, issue 12) against issue 11's promise: each
test states stock Django's result (``CONN_MAX_AGE=0``) and holds it with
parking on.  First written as an adversarial review's probes; the ones that
failed (time zone after ``override_settings``, a stale raw handle's
transaction, a backend's own per-connect set-up) are fixed in
``djpoolapp/patch.py``, ``parking.py`` and ``lease.py``."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import close_old_connections, connections, transaction
from django.test import override_settings

import djpoolapp
from tests.conftest import ALIASES, custom_mysql_handler
from tests.test_transparency import in_thread
from tests.testapp.models import Item

pytestmark = [
    pytest.mark.django_db(transaction=True, databases="__all__"),
    pytest.mark.usefixtures("parking"),  # park=True, whatever DJPOOL_PARK says
]

ONE = {"pool_size": 1, "max_overflow": 0, "timeout": 10}


def _request(alias: str, sql: str) -> Any:
    """One 'request': a query, then Django's request-end close."""
    with connections[alias].cursor() as cursor:
        cursor.execute(sql)
        row = cursor.fetchone()
    close_old_connections()
    return row


@pytest.mark.postgres
def test_parking__time_zone_after_override_settings_on_parked_connection():
    """Django sets the session time zone at connect (init_connection_state);
    override_settings(TIME_ZONE/USE_TZ) re-applies it only to open connections
    (ensure_timezone() returns early when connection is None).  Stock Django:
    the next request connects anew and gets America/Chicago."""
    alias = "default"
    assert _request(alias, "SHOW TIME ZONE")[0] == "UTC"
    assert connections[alias]._djpool_park is not None  # parked
    with override_settings(USE_TZ=False, TIME_ZONE="America/Chicago"):
        (zone,) = _request(alias, "SHOW TIME ZONE")
    assert zone == "America/Chicago"


@pytest.mark.parametrize("alias", ALIASES)
def test_parking__stale_raw_handle_opens_transaction_while_parked(alias):
    """A raw handle kept past its request (connection.connection) opens a
    transaction while the connection is parked: the next request's
    autocommit write runs inside it and is rolled back at its checkin.
    Stock Django: the handle is closed (InterfaceError), the write is kept."""
    connection = connections[alias]
    with override_settings(DJPOOL_OPTIONS={"aliases": {alias: ONE}}):
        connection.ensure_connection()
        raw = connection.connection
        close_old_connections()  # request ends: parked (or idle)
        stale_failed = False
        try:
            cursor = raw.cursor()
            cursor.execute("BEGIN")
            cursor.close()
        except Exception:
            stale_failed = True  # stock Django's behaviour
        # next request, autocommit write, returns "200"
        Item.objects.using(alias).create(name="kept", value=1)
        close_old_connections()
        # another request / thread reads it
        found: list[int] = []

        def read() -> None:
            found.append(Item.objects.using(alias).filter(name="kept").count())
            connections[alias].close()

        thread = threading.Thread(target=read)
        thread.start()
        thread.join(30)
    assert found == [1], f"write lost (stale handle usable: {not stale_failed})"


SESSION_SQL = {
    "postgresql": "SELECT pg_backend_pid()",
    "mysql": "SELECT CONNECTION_ID()",
}


@pytest.mark.parametrize("alias", ALIASES)
def test_parking__no_session_used_by_two_threads_at_once(alias):
    """Stress: 6 threads on pool_size=2 (parking, stealing, hand-offs);
    every request records the session that answered and when; no two
    requests of different threads may overlap on one session."""
    import time

    sql = SESSION_SQL[connections[alias].vendor]
    records: list[tuple[int, float, float, int]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(number: int) -> None:
        try:
            for _ in range(60):
                connection = connections[alias]
                with connection.cursor() as cursor:
                    cursor.execute(sql)
                    (first,) = cursor.fetchone()
                    started = time.monotonic()
                    time.sleep(0.0005)
                    cursor.execute(sql)
                    (second,) = cursor.fetchone()
                    ended = time.monotonic()
                assert first == second
                with lock:
                    records.append((int(first), started, ended, number))
                close_old_connections()
        except BaseException as error:
            errors.append(error)
        finally:
            connections[alias].close()

    with override_settings(
        DJPOOL_OPTIONS={"aliases": {alias: {"pool_size": 2, "max_overflow": 0}}}
    ):
        threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    assert not errors, errors[:3]
    by_session: dict[int, list[tuple[float, float, int]]] = {}
    for session, started, ended, number in records:
        by_session.setdefault(session, []).append((started, ended, number))
    overlaps = []
    for session, spans in by_session.items():
        spans.sort()
        last_end, last_thread = -1.0, -1
        for started, ended, number in spans:
            if started < last_end and number != last_thread:
                overlaps.append((session, last_thread, number))
            if ended > last_end:
                last_end, last_thread = ended, number
    assert not overlaps, overlaps[:5]
    assert len(by_session) <= 2


@pytest.mark.parametrize("alias", ALIASES)
def test_parking__thread_ends_holding_a_claimed_connection(alias):
    """A thread takes its parked connection back (fast path), runs a query and
    ends without closing: the connection must come back (issue 11 item 5)."""
    import gc

    from djpoolapp import pool_status

    sql = SESSION_SQL[connections[alias].vendor]
    with override_settings(DJPOOL_OPTIONS={"aliases": {alias: dict(ONE, timeout=3)}}):

        def work() -> None:
            _request(alias, sql)  # parks
            assert connections[alias]._djpool_park is not None
            with connections[alias].cursor() as cursor:  # claims, no close
                cursor.execute(sql)

        thread = threading.Thread(target=work)
        thread.start()
        thread.join(30)
        del thread
        gc.collect()
        gc.collect()
        assert pool_status(alias)[alias].checked_out == 0
        _request(alias, sql)  # no PoolTimeout


@pytest.mark.parametrize("alias", ALIASES)
def test_parking__recycle_applies_to_parked_connection(alias):
    import time

    sql = SESSION_SQL[connections[alias].vendor]
    with override_settings(DJPOOL_OPTIONS={"aliases": {alias: dict(ONE, recycle=1)}}):
        (first,) = _request(alias, sql)
        assert connections[alias]._djpool_park is not None
        time.sleep(1.3)
        (second,) = _request(alias, sql)
    assert first != second


@pytest.mark.postgres
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_parking__raw_withhold_cursor_does_not_survive_parking():
    """A server-side WITH HOLD cursor opened on the raw driver connection
    (not through Django's create_cursor) and left open at request end: the
    next request must not find it on the session (issue 11 item 7)."""
    alias = "default"
    connection = connections[alias]
    connection.ensure_connection()
    raw = connection.connection
    kept = raw.cursor(name="djpool_review_kept", withhold=True)
    kept.execute("SELECT generate_series(1, 1000)")
    kept.fetchone()
    close_old_connections()
    (count,) = _request(alias, "SELECT count(*) FROM pg_cursors")
    assert count == 0
    del kept


@pytest.mark.mysql
def test_parking__backend_set_up_runs_at_every_request_as_with_conn_max_age_0():
    """A project backend's init_connection_state() override (tests.custom_mysql)
    runs at each connect of stock Django; with CONN_MAX_AGE=0 (which
    djpoolapp requires) that is every request.  A backend that sets
    per-request session state there (a tenant id for row-level security,
    read from a contextvar) relies on it.  With parking, the same wrapper's
    later requests skip it."""
    with custom_mysql_handler() as handler:
        connection = handler["mysql"]
        for _ in range(3):  # three requests of one thread
            connection.ensure_connection()
            connection.close_if_unusable_or_obsolete()  # request end
        calls = getattr(connection, "setup_calls", 0)
        connection.close()
    assert calls == 3


@pytest.mark.parametrize("alias", ALIASES)
def test_parking__connection_created_receivers_run_at_every_request(alias):
    """A project's ``connection_created`` receiver (per-request session set-up)
    runs at every request, as stock Django with ``CONN_MAX_AGE=0`` sends it at
    every connect: a backend with such a receiver does not park."""
    from django.db.backends.signals import connection_created

    calls: list[str] = []

    def receiver(sender: Any, connection: Any, **kwargs: Any) -> None:
        calls.append(connection.alias)

    sql = SESSION_SQL[connections[alias].vendor]
    connection_created.connect(receiver)
    try:
        with override_settings(DJPOOL_OPTIONS={"aliases": {alias: ONE}}):
            for _ in range(3):
                _request(alias, sql)
                assert connections[alias]._djpool_park is None
    finally:
        connection_created.disconnect(receiver)
    assert calls.count(alias) == 3


def _checked_out(alias: str) -> int:
    return djpoolapp.pool_status(alias)[alias].checked_out


@pytest.mark.parametrize("alias", ALIASES)
@pytest.mark.parametrize("parked", [True, False], ids=["parked", "idle"])
def test_parking__simple_test_case_guard_still_refuses(alias, parked):
    """A SimpleTestCase (no databases) that touches the database fails with
    Django's "Database connections to ... are not allowed" even when a
    connection Django set up is parked with this thread's connection or idle
    in the pool: the fast path never connects past Django's guard."""
    import unittest

    from django.test import SimpleTestCase

    _request(alias, "SELECT 1")  # parked, set up
    if not parked:
        connections[alias].close()
        lease = connections[alias]._djpool_park
        connections[alias]._djpool_park = None
        lease.release_parked()  # idle in the queue, still set up
    seen: list[str] = []

    class Guarded(SimpleTestCase):
        def test_atomic(self) -> None:
            with self.assertRaisesMessage(Exception, "not allowed in SimpleTestCase"):
                with transaction.atomic(using=alias):
                    pass
            seen.append("atomic refused")

        def test_ensure_connection(self) -> None:
            with self.assertRaisesMessage(Exception, "not allowed in SimpleTestCase"):
                connections[alias].ensure_connection()
            seen.append("ensure_connection refused")

    result = unittest.TestResult()
    unittest.defaultTestLoader.loadTestsFromTestCase(Guarded).run(result)
    assert not result.errors and not result.failures, result.errors + result.failures
    assert sorted(seen) == ["atomic refused", "ensure_connection refused"]
    assert connections[alias].connection is None
    assert _checked_out(alias) == 0


@pytest.mark.parametrize("alias", ALIASES)
def test_parking__pytest_django_blocker_still_refuses(alias, django_db_blocker):
    """pytest-django's blocker ("Database access not allowed") is met before
    any checkout, parked connection or not."""
    _request(alias, "SELECT 1")  # parked with this thread's connection
    with django_db_blocker.block():
        with pytest.raises(RuntimeError, match="Database access not allowed"):
            connections[alias].ensure_connection()
    assert connections[alias].connection is None
    assert _checked_out(alias) == 0
    assert connections[alias]._djpool_park is not None  # still parked, untouched


@pytest.mark.parametrize("alias", ALIASES)
def test_parking__async_context_raises_before_any_checkout(alias):
    """From a coroutine, Django refuses a synchronous connect
    (SynchronousOnlyOperation) before connecting; with a parked connection
    or a pool to wait on, the fast path must not check one out (or block
    the event loop waiting for one) first."""
    import asyncio

    from django.core.exceptions import SynchronousOnlyOperation

    _request(alias, "SELECT 1")  # parked with this thread's connection

    async def view() -> str:
        try:
            connections[alias].ensure_connection()
        except SynchronousOnlyOperation:
            return "refused"
        return "connected"

    assert asyncio.run(view()) == "refused"
    assert connections[alias].connection is None
    assert _checked_out(alias) == 0


@pytest.mark.postgres
def test_parking__backend_overriding_get_new_connection_runs_it_every_request():
    """Review finding: a project backend that overrides a method of Django's
    connect() path other than init_connection_state() (here
    get_new_connection(), as a connection counter or a token fetcher does)
    sees it called at every request, as stock Django with CONN_MAX_AGE=0
    calls it: such a backend does not park."""
    import warnings

    from django.db.utils import ConnectionHandler

    from djpoolapp import patch

    settings_dict = {
        **connections.settings["default"],
        "ENGINE": "tests.custom_postgres",
    }
    databases = {**connections.settings, "default": settings_dict}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Overriding setting DATABASES")
        with override_settings(DATABASES=databases):
            handler = ConnectionHandler(databases)
            connection = handler["default"]
            patch.install(type(connection))
            type(connection).new_connections = 0
            for _ in range(3):  # three requests of one thread
                connection.ensure_connection()
                connection.close_if_unusable_or_obsolete()  # request end
            assert connection._djpool_park is None  # not parked
            connection.close()
    assert type(connection).new_connections == 3


@pytest.mark.postgres
def test_parking__backend_overriding_close_runs_it_every_request():
    """A parking checkin runs instead of Django's ``_close()`` (which only
    closes the driver connection): a project backend that overrides
    ``_close()`` sees it called at every request end, as stock Django calls
    it, and its connection goes back to the pool (not parked).  Its
    ``close_if_health_check_failed()`` runs for every cursor."""
    import warnings

    from django.db.utils import ConnectionHandler

    from djpoolapp import patch

    settings_dict = {
        **connections.settings["default"],
        "ENGINE": "tests.custom_postgres_close",
    }
    databases = {**connections.settings, "default": settings_dict}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Overriding setting DATABASES")
        with override_settings(DATABASES=databases):
            handler = ConnectionHandler(databases)
            connection = handler["default"]
            patch.install(type(connection))
            type(connection).closes = 0
            type(connection).health_checks = 0
            for _ in range(3):  # three requests of one thread
                connection.ensure_connection()
                with connection.cursor() as cursor:
                    cursor.execute("SELECT 1")
                raw = connection.connection
                connection.close_if_unusable_or_obsolete()  # request end
                assert connection.connection is None
                assert connection._djpool_park is None  # not parked
                assert raw._djpool_lease.state == "idle"  # back in the pool
    assert type(connection).closes == 3
    # Its close_if_health_check_failed() runs (at least) for every cursor, as
    # without the app (only Django's own is skipped when it has nothing to
    # do).
    assert type(connection).health_checks >= 3


@pytest.mark.parametrize("alias", ALIASES)
def test_parking__receiver_connected_after_parking_runs_at_the_next_request(alias):
    """Review finding: a connection_created receiver connected while a
    connection is parked runs at each later request (stock Django sends the
    signal at every connect): the parked connection is not taken back past
    it."""
    from django.db.backends.signals import connection_created

    _request(alias, "SELECT 1")  # parked
    assert connections[alias]._djpool_park is not None
    calls: list[str] = []

    def receiver(sender: Any, connection: Any, **kwargs: Any) -> None:
        calls.append(connection.alias)

    connection_created.connect(receiver)
    try:
        _request(alias, "SELECT 1")
        _request(alias, "SELECT 1")
    finally:
        connection_created.disconnect(receiver)
    assert calls == [alias, alias]


@pytest.mark.parametrize("alias", ALIASES)
def test_parking__thread_taking_a_set_up_connection_gets_the_wrapper_attributes(
    alias,
):
    """Review finding: Django's connect() path also sets attributes on the
    wrapper itself (``isolation_level``: PostgreSQL's get_new_connection(),
    MySQL's get_connection_params()).  A new thread's wrapper that takes a
    connection another wrapper set up has them, as after its own connect()."""
    _request(alias, "SELECT 1")  # set up here, parked
    expected = connections[alias].isolation_level

    def other() -> Any:
        connection = connections[alias]
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return getattr(connection, "isolation_level", "<missing>")

    assert in_thread(other, timeout=30) == expected


@pytest.mark.parametrize("alias", ALIASES)
@pytest.mark.parametrize("path", ["claim", "steal"])
def test_parking__interrupt_during_the_checkout_check_does_not_strand_it(
    alias, path, monkeypatch
):
    """Review finding: a KeyboardInterrupt (or gevent.Timeout) raised while a
    parked connection is checked before reuse (the pre-ping's round trip),
    by its own thread (claim) or by another (steal): the interrupted request
    fails, the connection is closed (its session is in an unknown state),
    and the next request is served; before, it stayed checked out for ever
    (PoolTimeout)."""
    from djpoolapp.lease import Lease

    with override_settings(DJPOOL_OPTIONS={"aliases": {alias: {**ONE, "timeout": 2}}}):
        _request(alias, "SELECT 1")  # parked with this thread's connection
        original = Lease.check_on_checkout
        fired: list[int] = []

        def interrupted(self: Any, now: float) -> None:
            if not fired:
                fired.append(1)
                raise KeyboardInterrupt("simulated, during the ping")
            original(self, now)

        monkeypatch.setattr(Lease, "check_on_checkout", interrupted)
        if path == "claim":
            with pytest.raises(KeyboardInterrupt):
                _request(alias, "SELECT 1")
            connections[alias].close()
        else:

            def stealer() -> str:
                try:
                    _request(alias, "SELECT 1")
                except KeyboardInterrupt:
                    return "interrupted"
                return "served"

            assert in_thread(stealer, timeout=30) == "interrupted"
        assert fired == [1]
        assert _request(alias, "SELECT 1") == (1,)
        assert in_thread(lambda: _request(alias, "SELECT 1"), timeout=30) == (1,)
        assert _checked_out(alias) == 0
