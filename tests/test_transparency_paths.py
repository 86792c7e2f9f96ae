"""Transparency through the paths around Django's cursor (issue 11, found by
the adversarial review): a raw handle of another thread, psycopg's composed
queries, ``UPDATE pg_settings``, mysqlclient's ``send_query()`` and
``set_character_set()``.  Each compares the next request's session with a
fresh one, on the server; stock Django's result is the expectation.
"""

from __future__ import annotations

import threading

import pytest
from django.db import connections, transaction

import djpoolapp
from tests.conftest import ALIASES, closed_connection_error, driver_module
from tests.modes import pool_mode  # noqa: F401  (every test, both modes)
from tests.test_transparency import in_thread, session_id
from tests.testapp.models import Item

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


# -- a raw handle kept by another thread ----------------------------------------
@pytest.mark.parametrize("alias", ALIASES)
@pytest.mark.parametrize("use", ["cursor", "commit"])
def test_stale_raw_handle__of_another_thread_never_acts_on_the_holder(
    alias, use, one_connection
):
    """Request A (this thread) keeps ``connection.connection``; request B,
    in another thread, holds the same server session inside ``atomic()`` and
    then fails.  A's handle raises instead of running on B's session or
    committing B's work; nothing of B's is committed."""
    connection = connections[alias]
    connection.ensure_connection()
    stored = connection.connection
    connection.close()  # A's request ends: the session goes back to the pool
    inside = threading.Event()
    release = threading.Event()
    seen: list[BaseException | None] = []

    def request_b() -> None:
        with pytest.raises(RuntimeError):
            with transaction.atomic(using=alias):
                Item.objects.using(alias).create(name="b")
                inside.set()
                release.wait(10)
                raise RuntimeError("B fails: Django rolls back")

    thread = threading.Thread(target=lambda: in_thread(request_b))
    thread.start()
    assert inside.wait(10)
    try:
        if use == "cursor":
            cursor = stored.cursor()
            cursor.execute("SELECT 1")
        else:
            stored.commit()
        seen.append(None)
    except closed_connection_error(driver_module(alias)) as error:
        seen.append(error)
    finally:
        release.set()
        thread.join(10)
    assert seen and seen[0] is not None, "the stale handle ran on B's session"
    assert "another thread" in str(seen[0])
    assert not Item.objects.using(alias).filter(name="b").exists()
    connection.close()
    assert djpoolapp.pool_status(alias)[alias].checked_out == 0


@pytest.mark.parametrize("alias", ALIASES)
def test_raw_handle__of_the_holding_thread_works_as_without_the_app(
    alias, one_connection
):
    connection = connections[alias]
    connection.ensure_connection()
    raw = connection.connection
    cursor = raw.cursor()
    cursor.execute("SELECT 1")
    assert cursor.fetchone()[0] == 1
    cursor.close()
    raw.commit()
    raw.rollback()


# -- psycopg's composed queries -------------------------------------------------
@pytest.mark.postgres
def test_composed_query__runs_and_its_session_change_is_reset(one_connection):
    """``psycopg.sql`` / ``psycopg2.sql`` objects go through Django's cursor
    as without the app (they used to raise TypeError), and a composed ``SET``
    is seen and reset."""
    module = driver_module("default")
    sql = __import__(f"{module.__name__}.sql", fromlist=["SQL"])
    connection = connections["default"]
    sid = session_id("default")
    with connection.cursor() as cursor:
        cursor.execute(
            sql.SQL("SET search_path TO {}").format(sql.Identifier("djpool_x"))
        )
        cursor.execute(sql.SQL("SELECT {}").format(sql.Literal(7)))
        assert cursor.fetchone()[0] == 7
        cursor.executemany(sql.SQL("SELECT {}").format(sql.Placeholder()), [[1]])
    connection.close()
    assert session_id("default") == sid
    with connection.cursor() as cursor:
        cursor.execute("SHOW search_path")
        assert cursor.fetchone()[0] == '"$user", public'


@pytest.mark.postgres
@pytest.mark.parametrize(
    "change",
    [
        "UPDATE pg_settings SET setting = 'djpool_y' WHERE name = 'search_path'",
        "update PG_SETTINGS set setting = 'djpool_y' where name = 'search_path'",
        "UPDATE \"pg_settings\" SET setting = 'djpool_y' WHERE name = 'search_path'",
    ],
)
def test_update_pg_settings__is_reset(change, one_connection):
    connection = connections["default"]
    sid = session_id("default")
    with connection.cursor() as cursor:
        cursor.execute(change)
    connection.close()
    assert session_id("default") == sid
    with connection.cursor() as cursor:
        cursor.execute("SHOW search_path")
        assert cursor.fetchone()[0] == '"$user", public'


# -- mysqlclient paths around query() -------------------------------------------
@pytest.mark.mysql
def test_send_query__transaction_never_swallows_the_next_requests_write(
    one_connection,
):
    connection = connections["mysql"]
    connection.ensure_connection()
    raw = connection.connection
    raw.send_query(b"START TRANSACTION")
    raw.read_query_result()
    connection.close()

    def request_b() -> None:
        Item.objects.using("mysql").create(name="after send_query")

    in_thread(request_b)
    djpoolapp.dispose("mysql")
    assert Item.objects.using("mysql").filter(name="after send_query").exists()


@pytest.mark.mysql
@pytest.mark.parametrize(
    "change, probe, fresh",
    [
        (b"SET @djpool_v = 5", "SELECT @djpool_v", None),
        (b"SET SESSION sql_mode = 'ANSI_QUOTES'",
         "SELECT @@SESSION.sql_mode LIKE '%%ANSI_QUOTES%%'", 0),
    ],
)  # fmt: skip
def test_send_query__session_change_never_reaches_the_next_request(
    change, probe, fresh, one_connection
):
    connection = connections["mysql"]
    connection.ensure_connection()
    raw = connection.connection
    raw.send_query(change)
    raw.read_query_result()
    connection.close()
    with connection.cursor() as cursor:
        cursor.execute(probe)
        assert cursor.fetchone()[0] == fresh


@pytest.mark.mysql
def test_set_character_set__never_reaches_the_next_request(one_connection):
    connection = connections["mysql"]
    connection.ensure_connection()
    connection.connection.set_character_set("latin1")
    connection.close()
    Item.objects.using("mysql").create(name="Grüße 😀")
    assert Item.objects.using("mysql").get(name="Grüße 😀").name == "Grüße 😀"
    with connection.cursor() as cursor:
        cursor.execute("SELECT @@character_set_client")
        assert cursor.fetchone()[0] == "utf8mb4"


# -- driver-side attributes of the raw connection -------------------------------
def _psycopg3_only():
    if driver_module("default").__name__ != "psycopg":
        pytest.skip("psycopg 3 attributes")


def _psycopg2_only():
    if driver_module("default").__name__ != "psycopg2":
        pytest.skip("psycopg2 attributes")


@pytest.mark.postgres
def test_driver_attributes__psycopg3_row_factory_and_prepare_threshold_restored(
    one_connection,
):
    _psycopg3_only()
    from psycopg.rows import dict_row

    connection = connections["default"]
    sid = session_id("default")
    raw = connection.connection
    raw.row_factory = dict_row
    raw.prepare_threshold = 0
    connection.close()
    Item.objects.using("default").create(name="rows")
    assert Item.objects.using("default").filter(name="rows").count() == 1
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1, 2")
        assert cursor.fetchone() == (1, 2)
    assert connection.connection.prepare_threshold != 0
    assert session_id("default") == sid  # restored in place, not reconnected


@pytest.mark.postgres
def test_driver_attributes__psycopg2_cursor_factory_restored(one_connection):
    _psycopg2_only()
    from psycopg2.extras import RealDictCursor

    connection = connections["default"]
    connection.ensure_connection()
    connection.connection.cursor_factory = RealDictCursor
    connection.close()
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1, 2")
        assert tuple(cursor.fetchone()) == (1, 2)
        # Statements are still watched: a SET is reset at checkin.
        cursor.execute("SET search_path TO djpool_z")
    connection.close()
    with connection.cursor() as cursor:
        cursor.execute("SHOW search_path")
        assert cursor.fetchone()[0] == '"$user", public'


@pytest.mark.postgres
def test_driver_attributes__psycopg2_client_encoding_never_reaches_the_next_request(
    one_connection,
):
    _psycopg2_only()
    connection = connections["default"]
    connection.ensure_connection()
    connection.connection.set_client_encoding("LATIN1")
    connection.close()
    Item.objects.using("default").create(name="Grüße 😀")
    assert Item.objects.using("default").get(name="Grüße 😀").name == "Grüße 😀"


@pytest.mark.postgres
def test_copy_and_callproc__session_changes_are_reset(one_connection):
    """psycopg 3's ``copy()`` and psycopg2's ``copy_expert()`` /
    ``callproc()`` on the raw connection's cursors are watched too."""
    connection = connections["default"]
    sid = session_id("default")
    copy = "COPY (SELECT set_config('search_path', 'djpool_w', false)) TO STDOUT"
    cursor = connection.connection.cursor()
    if driver_module("default").__name__ == "psycopg":
        with cursor.copy(copy) as stream:
            list(stream)
    else:
        import io

        cursor.copy_expert(copy, io.StringIO())
        cursor.callproc("set_config", ["statement_timeout", "5ms", False])
    cursor.close()
    connection.close()
    assert session_id("default") == sid
    with connection.cursor() as cursor:
        cursor.execute("SHOW search_path")
        assert cursor.fetchone()[0] == '"$user", public'
        cursor.execute("SHOW statement_timeout")
        assert cursor.fetchone()[0] == "0"
