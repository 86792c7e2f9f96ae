"""A mysqlclient cursor kept past its request fails as stock Django's does.

Stock Django closes the driver connection when a request ends: a cursor
kept from that request (a raw ``connection.connection.cursor()``, an
unbuffered ``SSCursor``, Django's own ``connection.cursor()``) then raises
``OperationalError`` (2006) on every call that would reach the server, and
a buffered cursor's rows stay readable.  With the pool the session lives on
and the checkin closes the cursor; mysqlclient's closed cursor raises
``ProgrammingError("cursor closed")`` instead -- a different class, which
code that retries on ``OperationalError`` would not catch.  The checkin
makes such a cursor fail as stock's (``Driver.close_at_checkin``).  One
difference is chosen: its ``close()`` is quiet, where stock's raises
(2006) once -- from every finaliser that closes a kept cursor, such as an
abandoned ``iterator()``'s.

Each case runs the same request pair twice -- stock Django (djpoolapp's
patches undone) and pooled, in both ``pool_mode``\\ s -- and compares the
outcome: the class of the error (or the value) and mysqlclient's error code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.db import connections

from tests.conftest import stock_django
from tests.modes import pool_mode  # noqa: F401  (every test, both modes)

pytestmark = [
    pytest.mark.django_db(transaction=True, databases="__all__"),
    pytest.mark.mysql,
]

ALIAS = "mysql"


def _raw(connection: Any) -> Any:
    return connection.connection.cursor()


def _unbuffered(connection: Any) -> Any:
    from MySQLdb.cursors import SSCursor

    return connection.connection.cursor(SSCursor)


def _django(connection: Any) -> Any:
    return connection.cursor()


KINDS: dict[str, Callable[[Any], Any]] = {
    "raw": _raw,
    "unbuffered": _unbuffered,
    "django": _django,
}
CALLS: dict[str, Callable[[Any], Any]] = {
    "execute": lambda cursor: cursor.execute("SELECT 2"),
    "executemany": lambda cursor: cursor.executemany("SELECT %s", [(1,), (2,)]),
    "fetchall": lambda cursor: cursor.fetchall(),
    "fetchone": lambda cursor: cursor.fetchone(),
    "nextset": lambda cursor: cursor.nextset(),
}


def _outcome(kind: str, call: str) -> tuple[str, Any]:
    """Request A makes a cursor of *kind*, runs ``SELECT 1`` and ends with
    the cursor open; request B uses it with *call*."""
    connection = connections[ALIAS]
    connection.close()
    connection.ensure_connection()
    cursor = KINDS[kind](connection)
    cursor.execute("SELECT 1")
    connection.close()  # request A ends
    connection.ensure_connection()  # request B (pooled: often the same session)
    try:
        value = CALLS[call](cursor)
    except Exception as error:
        code = error.args[0] if error.args and isinstance(error.args[0], int) else None
        return type(error).__name__, code
    finally:
        connection.close()
    return "returned", repr(value)


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("kind", list(KINDS))
def test_kept_cursor__fails_as_a_cursor_of_stock_djangos_closed_connection(
    kind: str, call: str
) -> None:
    with stock_django():
        stock = _outcome(kind, call)
    pooled = _outcome(kind, call)
    assert pooled == stock
    # The session is the next request's, whatever the cursor did.
    with connections[ALIAS].cursor() as cursor:
        cursor.execute("SELECT 3")
        assert cursor.fetchone() == (3,)


def _after_close(kind: str) -> tuple[str, Any]:
    """As :func:`_outcome`, with ``close()`` first (its own error, stock's,
    ignored), then ``execute()``."""
    connection = connections[ALIAS]
    connection.close()
    connection.ensure_connection()
    cursor = KINDS[kind](connection)
    cursor.execute("SELECT 1")
    connection.close()
    connection.ensure_connection()
    try:
        try:
            cursor.close()
        except Exception as error:
            closing: Any = type(error).__name__
        else:
            closing = None
        try:
            cursor.execute("SELECT 2")
        except Exception as error:
            return closing, type(error).__name__
        return closing, "returned"
    finally:
        connection.close()


@pytest.mark.parametrize("kind", list(KINDS))
def test_kept_cursor__close_is_quiet_then_closed_as_stocks(kind: str) -> None:
    """Stock's close() raises OperationalError (2006) once; this one closes
    quietly.  What a later execute() raises is stock's."""
    with stock_django():
        stock_close, stock_execute = _after_close(kind)
    pooled_close, pooled_execute = _after_close(kind)
    assert stock_close == "OperationalError"
    assert pooled_close is None
    assert pooled_execute == stock_execute
