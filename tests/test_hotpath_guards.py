"""What the per-query fast paths must not lose (``drivers.py``, ``txmode.py``).

Django's cursor() takes an inline fast path (no arguments, during a
checkout); every other call -- a name, a cursor factory -- goes through
``_djpool_cursor()``, which now also notices psycopg2's named cursors (before:
the cursor's own ``__init__``, which ran for every cursor).  In transaction
mode ``ConnectionAttribute`` remembers the code objects of Django's own
readers of the driver connection; user code and ``ConnectionProxy`` must
never be remembered.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import connections, transaction

from djpoolapp import drivers, txmode
from tests.test_pool_mode import held, session_id, transaction_mode
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
