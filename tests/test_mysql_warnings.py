"""MariaDB / MySQL warnings and errors do not outlive the checkin
(adversarial review 2, 03).

The server keeps the diagnostics area of a statement (``SHOW WARNINGS``,
``SHOW ERRORS``, ``@@warning_count``, ``@@error_count``, ``GET
DIAGNOSTICS``) until a later statement that uses a table: ``DO 0``,
``SELECT 1``, a ping do not clear it.  Before the fix the next request on
the session (any thread, both pool modes) saw the last request's warning
text, e.g. ``Truncated incorrect INTEGER value: 'secretB'``: data of another
request, where a fresh connection shows none.  Now the checkin (a
transaction-mode release is one) clears it in one round trip when a
statement of the checkout may have left something (its warning count, read
client-side, or an error it raised), and makes no round trip otherwise.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.core import signals
from django.db import DatabaseError, connections, transaction

from djpoolapp.drivers import PooledMySQLConnection
from tests.modes import pool_mode  # noqa: F401  (every test, both modes)
from tests.test_transparency import in_thread

pytestmark = [
    pytest.mark.django_db(transaction=True, databases="__all__"),
    pytest.mark.mysql,
]

ALIAS = "mysql"

WARNING = "SELECT CAST('secretB' AS SIGNED)"
ERROR = "SELECT * FROM djpool_no_such_table_secretB"
#: An error raised while the rows are read (store_result), not by the query.
MID_RESULT_ERROR = (
    "SELECT seq, (SELECT 1 FROM seq_1_to_3 WHERE seq <= t.seq) FROM seq_1_to_5 t"
)

ENDINGS = {
    "warning": [WARNING],
    "warning-then-DO-0": [WARNING, "DO 0"],  # last statement: no warning
    "warning-then-SELECT-1": [WARNING, "SELECT 1"],
    "error": [ERROR],
    "error-then-DO-0": [ERROR, "DO 0"],
    "mid-result-error": [MID_RESULT_ERROR],
    "warning-in-one-cursor": ["one cursor", WARNING, "DO 0"],
    # The last statement before atomic()'s COMMIT and SET autocommit, which
    # the C client sends without query() (review 3: an INSERT IGNORE of
    # bulk_create(ignore_conflicts=True) leaked its duplicate key).
    "warning-then-atomic-commit": ["atomic", WARNING],
    "warning-then-atomic-rollback": ["atomic-rollback", WARNING],
}


def _request(statements: list[str]) -> int:
    """One request (Django's request signals) running *statements*, each in
    a cursor of its own (or all in one: "one cursor"); errors are caught as
    a view would.  Returns the session's CONNECTION_ID()."""
    signals.request_started.send(sender=None)
    connection = connections[ALIAS]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT CONNECTION_ID()")
            (session,) = cursor.fetchone()
        if statements and statements[0] == "one cursor":
            with connection.cursor() as cursor:
                for statement in statements[1:]:
                    cursor.execute(statement)
                    cursor.fetchall()
        elif statements and statements[0].startswith("atomic"):
            with transaction.atomic(using=ALIAS):
                with connection.cursor() as cursor:
                    for statement in statements[1:]:
                        cursor.execute(statement)
                        cursor.fetchall()
                if statements[0] == "atomic-rollback":
                    transaction.set_rollback(True, using=ALIAS)
        else:
            for statement in statements:
                try:
                    with connection.cursor() as cursor:
                        cursor.execute(statement)
                        cursor.fetchall()
                except DatabaseError:
                    pass
    finally:
        signals.request_finished.send(sender=None)
    return int(session)


def _diagnostics() -> dict[str, Any]:
    """The next request: what it finds in the session's diagnostics area
    (SHOW statements and @@ variables do not clear it)."""
    signals.request_started.send(sender=None)
    connection = connections[ALIAS]
    try:
        found: dict[str, Any] = {}
        with connection.cursor() as cursor:
            cursor.execute("SHOW WARNINGS")
            found["SHOW WARNINGS"] = list(cursor.fetchall())
            cursor.execute("SHOW ERRORS")
            found["SHOW ERRORS"] = list(cursor.fetchall())
            cursor.execute("SELECT @@warning_count, @@error_count")
            found["counts"] = tuple(cursor.fetchone())
            cursor.execute("SELECT CONNECTION_ID()")
            found["session"] = int(cursor.fetchone()[0])
        return found
    finally:
        signals.request_finished.send(sender=None)


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_next_request_sees_no_warnings_or_errors_of_the_last(ending, one_connection):
    """Request B ends with a warning or an error (in another thread); the
    next request on the same session, in a third thread, finds the
    diagnostics area empty, as on a fresh connection."""
    session = in_thread(_request, ENDINGS[ending])
    found = in_thread(_diagnostics)
    assert found["session"] == session, "pool_size=1: the same session"
    assert found["SHOW WARNINGS"] == []
    assert found["SHOW ERRORS"] == []
    assert found["counts"] == (0, 0)
    assert "secretB" not in repr(found)


def test_same_thread_next_request_sees_nothing(one_connection):
    """The same thread's next request (the parked connection taken back)."""
    session = _request([WARNING])
    found = _diagnostics()
    assert found["session"] == session
    assert found["SHOW WARNINGS"] == [] and found["counts"] == (0, 0)


def test_get_diagnostics_is_empty_for_the_next_request(one_connection):
    session = in_thread(_request, [ERROR])

    def read() -> tuple[int, int]:
        signals.request_started.send(sender=None)
        try:
            with connections[ALIAS].cursor() as cursor:
                cursor.execute("GET DIAGNOSTICS @djpool_n = NUMBER")
                cursor.execute("SELECT @djpool_n, CONNECTION_ID()")
                n, seen = cursor.fetchone()
            return int(n), int(seen)
        finally:
            signals.request_finished.send(sender=None)

    assert in_thread(read) == (0, session)


def _com_select(cursor: Any) -> int:
    cursor.execute(
        "SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS "
        "WHERE VARIABLE_NAME = 'COM_SELECT'"
    )
    return int(cursor.fetchone()[0])


def test_a_request_without_warnings_makes_no_extra_round_trip(
    one_connection, monkeypatch
):
    """The clean-up runs only when a statement may have left something: a
    request without warnings costs no round trip at its checkin (the
    session's own Com_select counter, and the driver's clean-up hook)."""
    calls: list[int] = []
    clear = PooledMySQLConnection._djpool_clear_diagnostics

    def counting(conn: Any) -> None:
        calls.append(1)
        clear(conn)

    monkeypatch.setattr(PooledMySQLConnection, "_djpool_clear_diagnostics", counting)

    def selects_between(statements: list[str]) -> int:
        """Com_select of the session from one request to the next, minus
        the counter's own read."""
        signals.request_started.send(sender=None)
        try:
            with connections[ALIAS].cursor() as cursor:
                before = _com_select(cursor)
                for statement in statements:
                    cursor.execute(statement)
                    cursor.fetchall()
        finally:
            signals.request_finished.send(sender=None)
        signals.request_started.send(sender=None)
        try:
            with connections[ALIAS].cursor() as cursor:
                after = _com_select(cursor)
        finally:
            signals.request_finished.send(sender=None)
        return after - before - 1 - len(statements)

    assert selects_between(["SELECT 1", "SELECT 2"]) == 0
    assert calls == []
    assert selects_between(["SELECT 1", WARNING]) == 1
    assert len(calls) == 1
    assert selects_between(["SELECT 1"]) == 0
    assert len(calls) == 1
