"""What the per-query fast paths must not lose (``drivers.py``, ``txmode.py``).

Django's cursor() takes an inline fast path (no arguments, during a
checkout); every other call -- a name, a cursor factory -- goes through
``_djpool_cursor()``, which now also notices psycopg2's named cursors (before:
the cursor's own ``__init__``, which ran for every cursor).  In transaction
mode the ``connection`` property (``txmode._get_connection``) remembers the
code objects of Django's own readers of the driver connection; user code and
``ConnectionProxy`` must never be remembered.  ``CursorWrapper.execute``'s
wrapper notes a statement known to be harmless (``txmode._harmless``) inline:
it must still be the request's previous statement.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import connections, transaction
from django.db.backends.utils import CursorWrapper

from djpoolapp import SessionValueLost, drivers, txmode
from tests.test_pool_mode import (
    _pin_params,
    _run,
    held,
    in_thread,
    session_id,
    transaction_mode,
)
from tests.testapp.models import Item

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

ALIAS = "default"


def _raw_cursor_in_thread(raw: Any) -> BaseException | None:
    error: list[BaseException] = []

    def run() -> None:
        try:
            raw.cursor()
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return error[0] if error else None


@pytest.mark.postgres
@pytest.mark.parametrize("how", ["positional", "keyword"])
def test_named_raw_cursor__marks_the_checkout_and_is_checked(how):
    """A named cursor made by the raw connection's ``cursor()`` (a name by
    position, as Django's ``create_cursor()`` passes it, or by keyword)
    marks the checkout (its session is reset at checkin) and carries the
    checkout's guard; on psycopg2 it becomes a ``_NamedPsycopg2Cursor``,
    whose fetches are checked.  An unnamed one takes the fast path: guarded,
    and not marked."""
    connection = connections[ALIAS]
    connection.close()
    try:
        with transaction.atomic(using=ALIAS):
            raw = connection.connection
            lease = raw._djpool_lease
            plain = raw.cursor()
            assert plain._djpool_guard == (lease, lease.serial, threading.get_ident())
            assert not lease.named_cursors
            assert not isinstance(plain, drivers._NamedPsycopg2Cursor)
            plain.close()
            if how == "positional":
                named = raw.cursor("djpool_hotpath")
            else:
                named = raw.cursor(name="djpool_hotpath")
            assert lease.named_cursors
            assert named._djpool_guard[:2] == (lease, lease.serial)
            if isinstance(named, drivers.WatchedPsycopg2Cursor):
                assert isinstance(named, drivers._NamedPsycopg2Cursor)
            else:  # psycopg 3: the connection's server cursor factory
                assert isinstance(named, drivers.WatchedServerCursor)
            named.execute("SELECT 1")
            assert [tuple(row) for row in named.fetchall()] == [(1,)]
            named.close()
    finally:
        connection.close()


@pytest.mark.postgres
def test_fast_path_cursor__refused_to_another_thread():
    """The inline check of Django's cursor() fast path refuses a thread that
    does not hold the checkout (a raw handle kept and used elsewhere)."""
    connection = connections[ALIAS]
    connection.close()
    try:
        connection.ensure_connection()
        raw = connection.connection
        error = _raw_cursor_in_thread(raw)
        assert error is not None
        assert "checked out by another thread" in str(error)
        with raw.cursor() as cursor:  # the holder's own: fine
            cursor.execute("SELECT 1")
    finally:
        connection.close()


def _is_internal(code: Any) -> bool:
    return code.co_filename.startswith(txmode._INTERNAL) and (
        code.co_filename != txmode._PROXY_FILE
    )


def test_remembered_readers__only_djangos_and_djpoolapps_own():
    """After Django's own reads were remembered (ORM queries in transaction
    mode), the remembered code objects are all Django's or djpoolapp's (never
    ``ConnectionProxy``'s), and a read by user code still pins, directly and
    through ``django.db.connection``."""
    from django.db import connection as proxy

    connection = connections[ALIAS]
    with transaction_mode(ALIAS) as pins:
        for _ in range(3):
            Item.objects.using(ALIAS).count()
            session_id(ALIAS)
        assert txmode._internal_readers
        assert all(_is_internal(code) for code in txmode._internal_readers)
        assert pins() == 0 and not held(ALIAS)
        raw = proxy.connection  # (ALIAS is "default")
        assert raw is not None and pins() == 1
        assert connection.connection is raw
        connection.close()
    connection.close()
    assert all(_is_internal(code) for code in txmode._internal_readers)


@pytest.mark.parametrize("alias", _pin_params(("mysql",)))
def test_harmless_statement__noted_inline_is_still_the_previous_statement(alias):
    """``SELECT 1`` once seen is noted by the execute wrapper itself
    (``txmode._harmless``), not by ``_note_statement``: it is still the
    request's previous statement, so FOUND_ROWS() after it on its session is
    the request's own, and after another request used the session it
    raises."""
    with transaction_mode(alias) as pins:
        _run(alias, "SELECT 1")
        assert ("mysql", "SELECT 1") in txmode._harmless
        _run(alias, "SELECT 1")
        assert _run(alias, "SELECT FOUND_ROWS()") == (1,)
        _run(alias, "SELECT 1")
        in_thread(lambda: _run(alias, "SELECT 1, 2"))
        with pytest.raises(SessionValueLost):
            _run(alias, "SELECT FOUND_ROWS()")
        assert pins() == 0
        connections[alias].close()


def test_harmless_statements__remembered_within_bounds():
    """The memo of harmless statements is bounded as ``sql.py``'s are."""
    from djpoolapp import sql

    saved = set(txmode._harmless)
    try:
        txmode._harmless.clear()
        txmode._remember_harmless("mysql", "SELECT " + "1" * sql._MEMO_MAX_LENGTH)
        assert not txmode._harmless
        for number in range(sql._MEMO_MAX_ENTRIES + 1):
            txmode._remember_harmless("mysql", f"SELECT {number}")
        assert 0 < len(txmode._harmless) <= sql._MEMO_MAX_ENTRIES
    finally:
        txmode._harmless.clear()
        txmode._harmless.update(saved)


def test_execute_wrapper__djangos_signature_kept_others_passed_through():
    """``CursorWrapper.execute`` is wrapped with Django's own signature (a
    wrong call raises Django's TypeError); a method with any other signature
    gets every argument through."""
    wrapped = txmode._wrap_execute(CursorWrapper.execute)
    assert wrapped.__code__.co_varnames[:3] == ("self", "sql", "params")
    assert wrapped.__qualname__ == CursorWrapper.execute.__qualname__
    with pytest.raises(TypeError, match=r"CursorWrapper\.execute\(\) takes"):
        wrapped(object(), "SELECT 1", None, None)

    seen: list[Any] = []

    class Cursor:
        db = connections[ALIAS]

        def execute(self, sql: Any, params: Any = None, *, extra: Any = 0) -> Any:
            seen.append((sql, params, extra))
            return "result"

    other = txmode._wrap_execute(Cursor.execute)
    assert other(Cursor(), "SELECT 1", (1,), extra=2) == "result"
    assert seen == [("SELECT 1", (1,), 2)]
