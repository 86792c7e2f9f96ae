"""Raw driver cursors kept past their checkout (adversarial review 2, 06).

Request A makes a cursor of the raw driver connection
(``connection.connection.cursor()``, legitimately: it holds the connection)
and keeps it past its request.  Request B, in another thread, holds the
same server session inside ``atomic()`` and inserts.  Before the fix A's
kept cursor ran ``COMMIT`` on B's session: B's row stayed committed although
B's block failed and Django rolled it back.  Stock Django: A's cursor
belongs to A's closed connection.

Now every cursor of the pooled connection (not only Django's) belongs to its
checkout: the checkin closes it, and each call of a cursor that reaches the
session (statements, ``COPY``, a named cursor's fetches) checks that it runs
in that checkout, from a thread holding it (``drivers.WatchedCursor``).
PostgreSQL, psycopg 3 (or psycopg2 with ``DJPOOL_TEST_DRIVER=psycopg2``),
both ``pool_mode``\\ s.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import connections, transaction

import djpoolapp
from tests.conftest import closed_connection_error, driver_module
from tests.modes import pool_mode  # noqa: F401  (every test, both modes)
from tests.test_transparency import in_thread
from tests.testapp.models import Item

pytestmark = [
    pytest.mark.django_db(transaction=True, databases="__all__"),
    pytest.mark.postgres,
]

ALIAS = "default"


def _committed(name: str) -> int:
    """Rows named *name* that the server has committed (own connection)."""
    conf = connections[ALIAS].settings_dict
    monitor = driver_module(ALIAS).connect(
        host=conf["HOST"],
        port=int(conf["PORT"]),
        user=conf["USER"],
        password=conf["PASSWORD"],
        dbname=conf["NAME"],
    )
    try:
        cursor = monitor.cursor()
        cursor.execute(
            f"SELECT count(*) FROM {Item._meta.db_table} WHERE name = %s", (name,)
        )
        return int(cursor.fetchone()[0])
    finally:
        monitor.close()


def _kept_raw_cursor(**kwargs: Any) -> tuple[Any, Any]:
    """Request A: a raw driver cursor made while holding the connection,
    kept past the request.  Returns (cursor, raw connection)."""
    connection = connections[ALIAS]
    connection.ensure_connection()
    raw = connection.connection  # (transaction mode: pinned until close)
    kept = raw.cursor(**kwargs)
    connection.close()  # A's request ends
    return kept, raw


@pytest.mark.parametrize(
    "statement",
    ["COMMIT", "INSERT", "executemany"],
)
def test_kept_raw_cursor__cannot_act_in_another_threads_transaction(
    statement, one_connection
):
    """The review's scenario, asserted on the server: A's kept cursor is
    refused (the driver's InterfaceError) while B holds the session inside
    atomic(); B's failed block rolls back as Django says, nothing of B's or
    A's is committed, and B's atomic() keeps its semantics."""
    module = driver_module(ALIAS)
    kept, raw = _kept_raw_cursor()
    table = Item._meta.db_table
    inserted = threading.Event()
    attempted = threading.Event()
    seen: dict[str, Any] = {}

    def request_b() -> None:
        b = connections[ALIAS]
        try:
            with transaction.atomic(using=ALIAS):
                Item.objects.using(ALIAS).create(name="b-rolled-back")
                seen["same session"] = b.connection is raw
                inserted.set()
                assert attempted.wait(10)
                seen["in atomic"] = b.in_atomic_block
                raise RuntimeError("B fails: Django rolls back")
        except RuntimeError as error:
            seen["b"] = error

    thread = threading.Thread(target=lambda: in_thread(request_b))
    thread.start()
    try:
        assert inserted.wait(10)
        try:
            if statement == "COMMIT":
                kept.execute("COMMIT")
            elif statement == "INSERT":
                kept.execute(
                    f"INSERT INTO {table} (name, value, created) "
                    "VALUES ('a-stale', 0, now())"
                )
            else:
                kept.executemany(
                    f"INSERT INTO {table} (name, value, created) VALUES (%s, 0, now())",
                    [("a-stale",)],
                )
            seen["a"] = None
        except Exception as error:
            seen["a"] = error
    finally:
        attempted.set()
        thread.join(20)
    assert not thread.is_alive()
    assert seen["same session"], "pool_size=1: B must hold A's old session"
    assert isinstance(seen["a"], closed_connection_error(module)), repr(seen["a"])
    assert isinstance(seen.get("b"), RuntimeError)
    assert seen["in atomic"] is True
    assert _committed("b-rolled-back") == 0, "B's rolled-back row was committed"
    assert _committed("a-stale") == 0
    assert djpoolapp.pool_status(ALIAS)[ALIAS].checked_out == 0


def test_kept_raw_cursor__closed_at_checkin_and_refused_later(one_connection):
    """A raw cursor the holder leaves open is closed by the checkin; used
    later -- by its own thread, in a later request holding the same session
    -- it raises the driver's InterfaceError and sends nothing."""
    module = driver_module(ALIAS)
    kept, raw = _kept_raw_cursor()
    assert kept.closed
    connection = connections[ALIAS]
    connection.ensure_connection()
    assert connection.connection is raw  # the same session, this thread
    with transaction.atomic(using=ALIAS):
        Item.objects.using(ALIAS).create(name="later-request")
        with pytest.raises(closed_connection_error(module)):
            kept.execute("COMMIT")
        transaction.set_rollback(True, using=ALIAS)
    connection.close()
    assert _committed("later-request") == 0


def test_raw_cursor_made_while_idle__refused(one_connection):
    """A stale raw handle cannot make a cursor while the session is idle in
    the pool or parked (stock Django's handle is closed by then); only the
    pool's own round trips may (``Lease.check_caller``).  Before, such a
    cursor was made and refused only once a request held the session."""
    module = driver_module(ALIAS)
    connection = connections[ALIAS]
    connection.ensure_connection()
    raw = connection.connection
    connection.close()
    with pytest.raises(closed_connection_error(module), match="went back to the pool"):
        raw.cursor()


def _commit_inside_another_request(cursor: Any, raw: Any, name: str) -> Any:
    """Request B, in another thread, holds the session *raw* inside
    ``atomic()`` and inserts *name*; meanwhile *cursor* (kept by A) runs
    ``COMMIT``.  B's block is rolled back.  The driver's error *cursor*
    raised, or None."""
    module = driver_module(ALIAS)

    def request_b() -> Any:
        with transaction.atomic(using=ALIAS):
            assert connections[ALIAS].connection is raw
            Item.objects.using(ALIAS).create(name=name)
            try:
                cursor.execute("COMMIT")
            except closed_connection_error(module) as error:
                refused = error
            else:
                refused = None
            transaction.set_rollback(True, using=ALIAS)
        return refused

    return in_thread(request_b)


def test_holders_own_raw_cursors_work_within_its_request(one_connection):
    """The holder's raw cursors work as without the app: statements,
    executemany, a named (server-side) cursor's fetches inside atomic(),
    psycopg's COPY; what they wrote is committed with the request's own."""
    module = driver_module(ALIAS)
    table = Item._meta.db_table
    connection = connections[ALIAS]
    connection.ensure_connection()
    raw = connection.connection
    with transaction.atomic(using=ALIAS):
        cursor = raw.cursor()
        cursor.execute(
            f"INSERT INTO {table} (name, value, created) VALUES ('own', 1, now())"
        )
        cursor.executemany(
            f"INSERT INTO {table} (name, value, created) VALUES (%s, 2, now())",
            [("own",), ("own",)],
        )
        named = raw.cursor("djpool_own_named")
        named.execute(f"SELECT value FROM {table} WHERE name = 'own' ORDER BY value")
        assert named.fetchone()[0] == 1
        assert [row[0] for row in named.fetchmany(5)] == [2, 2]
        assert named.fetchall() == []
        named.close()
        if module.__name__ == "psycopg2":
            import io

            cursor.copy_from(
                io.StringIO("own\t3\t2024-01-01\n"),
                table,
                columns=("name", "value", "created"),
            )
        else:
            with cursor.copy(f"COPY {table} (name, value, created) FROM STDIN") as copy:
                copy.write_row(("own", 3, "2024-01-01"))
        cursor.close()
    # (left open on purpose: closed at checkin, no error)
    left_open = raw.cursor()
    left_open.execute("SELECT 1")
    connection.close()
    assert left_open.closed
    assert _committed("own") == 4


def test_thread_sharing__another_thread_uses_the_holders_raw_cursor(
    one_connection,
):
    """``inc_thread_sharing()`` (Django's own opt-in): another thread uses
    the holder's raw cursor, and makes its own, as it may the Django
    connection.  Without it, another thread's use is refused."""
    module = driver_module(ALIAS)
    connection = connections[ALIAS]
    connection.ensure_connection()
    raw = connection.connection
    cursor = raw.cursor()

    def use(c: Any) -> Any:
        c.execute("SELECT 41 + 1")
        return c.fetchone()[0]

    with pytest.raises(closed_connection_error(module), match="another thread"):
        in_thread(use, cursor)
    connection.inc_thread_sharing()
    try:
        assert in_thread(use, cursor) == 42
        assert in_thread(lambda: use(raw.cursor())) == 42
        assert use(cursor) == 42
    finally:
        connection.dec_thread_sharing()
        connection.close()
    assert cursor.closed


def test_django_cursor__closed_at_checkin_and_refused_later(one_connection):
    """Django's own cursors keep their behaviour: tracked once, closed at
    checkin, a kept one refused later."""
    module = driver_module(ALIAS)
    connection = connections[ALIAS]
    django_cursor = connection.cursor()
    driver_cursor = django_cursor.cursor
    lease = connection.connection._djpool_lease
    tracked = [r() for r in lease.cursors or ()]
    assert sum(c is driver_cursor for c in tracked) == 1
    connection.close()
    assert driver_cursor.closed
    connection.ensure_connection()
    with pytest.raises(closed_connection_error(module)):
        driver_cursor.execute("SELECT 1")
    connection.close()


def test_kept_raw_cursor_of_another_class__refused_too(one_connection):
    """A cursor class given for one call (psycopg2's ``cursor_factory=``;
    psycopg 3's ``row_factory=``) is watched as the connection's own."""
    module = driver_module(ALIAS)
    if module.__name__ == "psycopg2":
        import psycopg2.extras

        kept, raw = _kept_raw_cursor(cursor_factory=psycopg2.extras.RealDictCursor)
    else:
        from psycopg.rows import dict_row

        kept, raw = _kept_raw_cursor(row_factory=dict_row)

    assert isinstance(
        _commit_inside_another_request(kept, raw, "b-factory"),
        closed_connection_error(module),
    )
    assert _committed("b-factory") == 0


@pytest.mark.parametrize("alias", ["default", "mysql"])
def test_checkout_that_never_ends_keeps_no_reference_per_cursor(alias):
    """Review 3: a worker that never closes its connection made a weak
    reference per cursor for ever (20,000 cursors: 20,002 entries)."""
    connection = connections[alias]
    connection.ensure_connection()
    lease = connection.connection._djpool_lease
    for _ in range(2000):
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    assert len(lease.cursors) <= 256
    connection.close()


@pytest.mark.filterwarnings("ignore::ResourceWarning")  # psycopg 3's, on GC
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("make", ["ClientCursor", "Cursor", "ServerCursor"])
def test_cursor_built_from_its_class_cannot_act_in_another_threads_transaction(
    make, one_connection
):
    """Review 3: a psycopg 3 cursor built from its class on the raw
    connection (``psycopg.ClientCursor(conn)``, as psycopg's documentation
    shows for client-side binding) bypasses the connection's ``cursor()``
    and factories.  Kept by A past its request and used by A's thread while
    B's request holds the session inside ``atomic()``, its COMMIT is refused
    (psycopg's ``wait()``, which every statement goes through, checks the
    thread), and nothing of B's is committed."""
    if driver_module(ALIAS).__name__ != "psycopg":
        pytest.skip("psycopg 3's cursor classes (psycopg2's C cursor type has no hook)")
    import psycopg

    connection = connections[ALIAS]
    connection.ensure_connection()
    raw = connection.connection
    if make == "ServerCursor":
        kept = psycopg.ServerCursor(raw, "djpool_kept")
    else:
        kept = getattr(psycopg, make)(raw)
    connection.close()  # A's request ends
    inserted, tried = threading.Event(), threading.Event()

    def request_b() -> None:
        with transaction.atomic(using=ALIAS):
            assert connections[ALIAS].connection is raw
            Item.objects.using(ALIAS).create(name=f"b-{make}")
            inserted.set()
            assert tried.wait(10)
            transaction.set_rollback(True, using=ALIAS)

    thread = threading.Thread(target=lambda: in_thread(request_b))
    thread.start()
    try:
        assert inserted.wait(10)
        with pytest.raises(closed_connection_error(psycopg), match="another thread"):
            kept.execute("COMMIT")
    finally:
        tried.set()
        thread.join(10)
    assert _committed(f"b-{make}") == 0
