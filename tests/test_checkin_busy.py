"""A request that ends while a psycopg 3 call still holds the connection's
lock: a ``COPY`` block or a ``stream()`` generator left open (an exception
raised inside it and kept alive by a traceback: a log record, an error
reporter, the test client).  psycopg 3.3 holds ``conn.lock`` for the whole
``COPY`` and while a ``stream()`` generator is suspended.

Stock Django's ``close()`` calls the driver's ``close()``, which takes no
lock: the request ends at once.  The pool's checkin rolled back first
(``Connection.rollback()`` takes the lock): the request's own thread waited
for ever and its pool slot never came back (adversarial review of the
``QueuedLibpqWriter`` change, finding 1).  Now the checkin sees the lock held
(``Driver.busy``) and closes the connection instead, as stock does; the next
request gets a fresh one.  In transaction mode a connection whose lock is
held is never released between statements.  PostgreSQL with psycopg 3 only
(psycopg2 and mysqlclient have no such lock).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connections

import djpoolapp
from tests.modes import pool_mode  # noqa: F401  (every test, both modes)
from tests.testapp.models import Item

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True, databases="__all__"),
]

ALIAS = "default"


def _open_copy(raw: Any) -> Any:
    cursor = raw.cursor()
    block = cursor.copy(f"COPY {Item._meta.db_table} (name, value, created) FROM STDIN")
    copy = block.__enter__()
    copy.write_row(("left-open", 1, "2026-01-01 00:00:00+00"))
    return block


def _open_stream(raw: Any) -> Any:
    rows = raw.cursor().stream("SELECT generate_series(1, 100000)")
    next(rows)
    return rows


LEFT_OPEN: dict[str, Callable[[Any], Any]] = {
    "copy": _open_copy,
    "stream": _open_stream,
}


def _request_leaving_open(open_call: Callable[[Any], Any], kept: list[Any]) -> bool:
    """One request in its own thread: opens the call, keeps it alive past
    the request (*kept*), ends the request.  True if it ended within 15 s."""
    ended = threading.Event()

    def request() -> None:
        connection = connections[ALIAS]
        connection.ensure_connection()
        kept.append(open_call(connection.connection))
        connection.close()  # the end of the request
        ended.set()

    thread = threading.Thread(target=request, daemon=True)
    thread.start()
    return ended.wait(15)


@pytest.mark.parametrize("call", sorted(LEFT_OPEN))
def test_request_ends_with_a_call_left_open(psycopg3, call, one_connection):
    """The request ends at once, the connection is closed (invalidated, not
    reused), the pool slot is back, the next request gets a fresh session
    and nothing of the COPY was written."""
    invalidated = djpoolapp.pool_status(ALIAS)[ALIAS].invalidated
    kept: list[Any] = []
    assert _request_leaving_open(LEFT_OPEN[call], kept), (
        "the request's close() waited for the connection's lock"
    )
    status = djpoolapp.pool_status(ALIAS)[ALIAS]
    assert status.checked_out == 0
    assert status.invalidated == invalidated + 1
    assert Item.objects.using(ALIAS).filter(name="left-open").count() == 0
    connections[ALIAS].close()
    kept.clear()  # the generator / COPY block go away with the closed session


@pytest.mark.parametrize("call", sorted(LEFT_OPEN))
def test_stock_django_ends_the_request_too(psycopg3, call, unpatched):
    """What the test above compares with: stock Django's close() returns at
    once with the same call left open."""
    kept: list[Any] = []
    assert _request_leaving_open(LEFT_OPEN[call], kept)
    kept.clear()
