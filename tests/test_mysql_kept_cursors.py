"""A mysqlclient cursor kept past its request fails as stock Django's does.

Stock Django closes the driver connection when a request ends: a cursor
kept from that request (a raw ``connection.connection.cursor()``, an
unbuffered ``SSCursor``, Django's own ``connection.cursor()``) then raises
``OperationalError`` (2006) on every call that would reach the server, and
a buffered cursor's rows stay readable.  With the pool the session lives on
and the checkin closes the cursor; mysqlclient's closed cursor raises
``ProgrammingError("cursor closed")`` instead -- a different class, which
code that retries on ``OperationalError`` would not catch.  The checkin
makes such a cursor fail as stock's (``Driver.close_at_checkin``: the
cursor's connection becomes a stand-in for stock's closed one), including
what mysqlclient clears before a call fails.  One difference is chosen:
Django's own cursor closes quietly (``CHOSEN``).

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


def _after_failed(call: str, read: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """*call* (its error, if any, ignored), then *read* of the cursor: what
    mysqlclient clears before the call fails (the previous result,
    ``rowcount``) must be cleared as stock's is."""

    def run(cursor: Any) -> Any:
        try:
            CALLS[call](cursor)
        except Exception:
            pass
        return read(cursor)

    return run


CALLS: dict[str, Callable[[Any], Any]] = {
    "execute": lambda cursor: cursor.execute("SELECT 2"),
    "executemany": lambda cursor: cursor.executemany("SELECT %s", [(1,), (2,)]),
    "callproc": lambda cursor: cursor.callproc("djpool_no_such_procedure"),
    "fetchall": lambda cursor: cursor.fetchall(),
    "fetchone": lambda cursor: cursor.fetchone(),
    "nextset": lambda cursor: cursor.nextset(),
    "mogrify": lambda cursor: cursor.mogrify("SELECT %s", (1,)),
    "close": lambda cursor: cursor.close(),
}
CALLS.update(
    {
        "execute+fetchall": _after_failed("execute", lambda c: c.fetchall()),
        "execute+description": _after_failed("execute", lambda c: c.description),
        "executemany+fetchall": _after_failed("executemany", lambda c: c.fetchall()),
        "nextset+fetchall": _after_failed("nextset", lambda c: c.fetchall()),
        "callproc+rowcount": _after_failed("callproc", lambda c: c.rowcount),
        "close+execute": _after_failed("close", lambda c: c.execute("SELECT 2")),
        "close+fetchall": _after_failed("close", lambda c: c.fetchall()),
        "connection.commit": lambda cursor: _raw_cursor(cursor).connection.commit(),
        "connection.open": lambda cursor: _raw_cursor(cursor).connection.open,
    }
)


def _raw_cursor(cursor: Any) -> Any:
    """The mysqlclient cursor (inside Django's wrappers)."""
    while not hasattr(type(cursor), "_get_db"):
        cursor = cursor.cursor
    return cursor


#: Calls where djpoolapp differs from stock on purpose: Django's own cursor
#: of an ended request closes quietly (its close() must not reach a session
#: that is another request's; stock's raises 2006 once, from every
#: finaliser of an abandoned iterator()).
CHOSEN = {("django", "close"): ("returned", "None")}


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
    assert pooled == CHOSEN.get((kind, call), stock)
    # The session is the next request's, whatever the cursor did.
    with connections[ALIAS].cursor() as cursor:
        cursor.execute("SELECT 3")
        assert cursor.fetchone() == (3,)
