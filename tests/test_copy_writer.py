"""psycopg 3's ``QueuedLibpqWriter``: a ``COPY`` whose data is written by a
thread psycopg starts for it (``cursor.copy(..., writer=QueuedLibpqWriter(
cursor))``, psycopg 3.1+).  That thread is not the holder's, so the pool's
rule "only the holder's thread may use a checked-out connection"
(``Lease.refusal``) refused it with ``InterfaceError``, where stock Django's
connection takes the rows.  The driver's own helper thread now counts as the
holder's (``Driver.in_helper_thread``): the rows arrive, in both
``pool_mode``\\ s; any other thread is refused as before, also one running a
writer of another connection or a writer an earlier request left
running.  PostgreSQL with psycopg 3 only (psycopg2 and mysqlclient have no
such writer).
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import connections

import djpoolapp
from tests.conftest import closed_connection_error
from tests.modes import pool_mode  # noqa: F401  (every test, both modes)
from tests.testapp.models import Item

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True, databases="__all__"),
]

ALIAS = "default"


def _copy_rows(
    raw: Any, names: list[str], writer_class: Any, cursor_class: Any = None
) -> None:
    table = Item._meta.db_table
    with raw.cursor() if cursor_class is None else cursor_class(raw) as cursor:
        statement = f"COPY {table} (name, value, created) FROM STDIN"
        with cursor.copy(statement, writer=writer_class(cursor)) as copy:
            for name in names:
                copy.write_row((name, 7, "2026-01-01 00:00:00+00"))


@pytest.mark.parametrize(
    ("rows", "cursor"),
    [(1, None), (2_000, None), (50, "ClientCursor"), (50, "Cursor"), (50, "RawCursor")],
)
def test_queued_writer__copy_through_the_raw_connection_arrives(
    psycopg3, rows, cursor, one_connection
):
    """The holder COPYs through ``connection.connection`` with a
    ``QueuedLibpqWriter``, on the connection's own cursor or one built from
    its class: psycopg's worker thread writes the data, every row is in the
    table (read back through another request), the session goes back clean
    and nothing is invalidated."""
    from psycopg.copy import QueuedLibpqWriter

    connection = connections[ALIAS]
    connection.ensure_connection()
    invalidated = djpoolapp.pool_status(ALIAS)[ALIAS].invalidated
    names = [f"copied-{i}" for i in range(rows)]
    cursor_class = None if cursor is None else getattr(psycopg3, cursor)
    _copy_rows(connection.connection, names, QueuedLibpqWriter, cursor_class)
    connection.close()
    assert djpoolapp.pool_status(ALIAS)[ALIAS].checked_out == 0
    assert Item.objects.using(ALIAS).filter(name__startswith="copied-").count() == rows
    connection.close()
    assert djpoolapp.pool_status(ALIAS)[ALIAS].invalidated == invalidated


def test_queued_writer__is_the_only_other_thread_let_in(psycopg3, one_connection):
    """While the holder holds the connection: a plain thread, and a thread
    running the worker of a ``QueuedLibpqWriter`` of *another* connection,
    are not the driver's helper for this one (refused); a worker of a writer
    on this connection is."""
    from psycopg.copy import QueuedLibpqWriter

    connection = connections[ALIAS]
    connection.ensure_connection()
    raw = connection.connection
    lease = raw._djpool_lease
    driver = lease.driver
    params = connection.get_connection_params()
    other = psycopg3.connect(**params)
    seen: dict[str, Any] = {}
    try:

        def plain() -> None:
            seen["plain"] = (driver.in_helper_thread(raw), lease.refusal())

        thread = threading.Thread(target=plain)
        thread.start()
        thread.join(10)

        def check_in_worker(writer: Any, key: str) -> None:
            # The worker's own loop, started by write() as in a COPY, with
            # the check instead of sending the data.
            writer._put = lambda data: seen.__setitem__(  # type: ignore[method-assign]
                key, (driver.in_helper_thread(raw), lease.refusal())
            )
            writer.write(b"x")
            worker = writer._worker
            writer._queue.put(b"")
            worker.join(10)

        with other.cursor() as cursor:
            check_in_worker(QueuedLibpqWriter(cursor), "writer of another connection")
        with raw.cursor() as cursor:
            check_in_worker(QueuedLibpqWriter(cursor), "writer of this connection")

        class Forged(threading.Thread):
            """A thread that claims a writer's worker as its target but is
            not the thread the writer started."""

            def run(self) -> None:
                seen["forged"] = (driver.in_helper_thread(raw), lease.refusal())

        with raw.cursor() as cursor:
            # A writer whose real worker the holder started (tagged).
            writer = QueuedLibpqWriter(cursor)
            writer._put = lambda data: None  # type: ignore[method-assign]
            writer.write(b"x")
            thread = Forged(target=writer.worker)
            thread.start()
            thread.join(10)
            writer._queue.put(b"")
            writer._worker.join(10)
    finally:
        other.close()
        connection.close()
    assert seen["plain"][0] is False
    assert "another thread" in seen["plain"][1]
    for key in ("writer of another connection", "forged"):
        assert seen[key][0] is False, key
        assert "another thread" in seen[key][1], key
    assert seen["writer of this connection"] == (True, None)


def test_queued_writer__refused_once_the_request_ended(psycopg3, one_connection):
    """A writer's thread is let in only while a checkout holds the
    connection: after the request ended (parked or idle), a COPY through a
    raw handle kept from it is refused, as every other statement is."""
    from psycopg.copy import QueuedLibpqWriter

    connection = connections[ALIAS]
    connection.ensure_connection()
    raw = connection.connection
    connection.close()
    with pytest.raises(
        closed_connection_error(psycopg3), match="went back to the pool"
    ):
        _copy_rows(raw, ["stale"], QueuedLibpqWriter)
    assert Item.objects.using(ALIAS).filter(name="stale").count() == 0


def test_queued_writer__left_running_by_an_earlier_request_is_refused(
    psycopg3, one_connection
):
    """A writer made in request 1 whose worker still runs in request 2 (the
    same session, taken back: one connection) is not request 2's helper: its
    cursor's checkout has ended, as any handle of request 1 is refused."""
    from psycopg.copy import QueuedLibpqWriter

    connection = connections[ALIAS]
    connection.ensure_connection()
    raw = connection.connection
    lease = raw._djpool_lease
    seen: list[Any] = []
    go_on = threading.Event()

    def put(data: Any) -> None:  # the worker's write, after request 1 ended
        assert go_on.wait(10)
        seen.append((lease.driver.in_helper_thread(raw), lease.refusal()))

    writer = QueuedLibpqWriter(raw.cursor())
    writer._put = put  # type: ignore[method-assign]
    writer.write(b"x")  # request 1 starts the worker (tagged: it may)
    worker = writer._worker
    connection.close()  # request 1 ends
    connection.ensure_connection()  # request 2: the same session again
    assert connection.connection is raw
    go_on.set()
    writer._queue.put(b"")
    worker.join(10)
    connection.close()
    assert len(seen) == 1
    assert seen[0][0] is False
    assert "another thread" in seen[0][1]


def test_queued_writer__hook_undone_with_the_app(psycopg3, unpatched):
    """Without the app (its patches undone) psycopg's writer is psycopg's own
    again, and the COPY through stock Django's connection works."""
    from psycopg.copy import QueuedLibpqWriter

    assert not getattr(QueuedLibpqWriter.write, "_djpool_patched", False)
    connection = connections[ALIAS]
    connection.ensure_connection()
    _copy_rows(connection.connection, ["stock-0", "stock-1"], QueuedLibpqWriter)
    assert Item.objects.using(ALIAS).filter(name__startswith="stock-").count() == 2
    connection.close()


def test_queued_writer__hooked_with_the_app(psycopg3):
    from psycopg.copy import QueuedLibpqWriter

    assert getattr(QueuedLibpqWriter.write, "_djpool_patched", False)


def test_queued_writer__started_by_another_thread_is_refused(psycopg3, one_connection):
    """The holder made the writer, but another thread calls its first
    ``write()`` (starting the worker) while the holder holds the connection:
    that thread may not use the connection, so the worker is not tagged and
    is refused too (``tag_queued_writer`` asks ``Lease.refusal``)."""
    from psycopg.copy import QueuedLibpqWriter

    connection = connections[ALIAS]
    connection.ensure_connection()
    raw = connection.connection
    lease = raw._djpool_lease
    seen: list[Any] = []
    try:
        with raw.cursor() as cursor:
            writer = QueuedLibpqWriter(cursor)
            writer._put = lambda data: seen.append(  # type: ignore[method-assign]
                (lease.driver.in_helper_thread(raw), lease.refusal())
            )

            def foreign() -> None:
                writer.write(b"x")
                worker = writer._worker
                writer._queue.put(b"")
                worker.join(10)

            thread = threading.Thread(target=foreign)
            thread.start()
            thread.join(20)
    finally:
        connection.close()
    assert not hasattr(writer, "_djpool_checkout")
    assert len(seen) == 1
    assert seen[0][0] is False
    assert "another thread" in seen[0][1]
