"""Views for tests/test_mysql_session.py: a request that changes the MySQL
session in some way, and a request that reports what the session looks like.

The statements come from the test module (``STATEMENTS`` is filled there),
never from the request: these URLs only exist in the test project.
"""

from __future__ import annotations

from typing import Any

from django.db import connections
from django.http import HttpRequest, JsonResponse

from .models import Item

#: name -> SQL, registered by the tests.
STATEMENTS: dict[str, str] = {}
#: Raw cursors a view keeps past its request (as a misbehaving app would).
KEPT: list[Any] = []


def run(request: HttpRequest, alias: str, name: str) -> JsonResponse:
    """Run one registered statement through Django's cursor and read every
    result set, as ``cursor.execute(...)`` then ``nextset()`` would."""
    connection = connections[alias]
    results = []
    with connection.cursor() as cursor:
        cursor.execute(STATEMENTS[name])
        while True:
            results.append(list(cursor.fetchall()) if cursor.description else None)
            if not cursor.nextset():
                break
        cursor.execute("SELECT CONNECTION_ID()")
        (session,) = cursor.fetchone()
    return JsonResponse({"session": session, "results": results}, safe=False)


def raw(request: HttpRequest, alias: str, name: str) -> JsonResponse:
    """Run a registered statement on a raw driver cursor kept past the
    request; ``?cursor=ss`` makes it unbuffered, ``?fetch=N`` reads N rows
    (all when absent)."""
    import MySQLdb.cursors  # only the MySQL tests reach this view

    connection = connections[alias]
    connection.ensure_connection()
    cursor_class = (
        MySQLdb.cursors.SSCursor
        if request.GET.get("cursor") == "ss"
        else MySQLdb.cursors.Cursor
    )
    with connection.cursor() as cursor:
        cursor.execute("SELECT CONNECTION_ID()")
        (session,) = cursor.fetchone()
    kept = connection.connection.cursor(cursor_class)
    KEPT.append(kept)
    kept.execute(STATEMENTS[name])
    fetch = request.GET.get("fetch")
    rows = kept.fetchall() if fetch is None else kept.fetchmany(int(fetch))
    return JsonResponse({"session": session, "rows": len(rows)})


def select_db(request: HttpRequest, alias: str, database: str) -> JsonResponse:
    """mysqlclient's ``select_db()`` (COM_INIT_DB) on the raw connection."""
    connection = connections[alias]
    connection.ensure_connection()
    connection.connection.select_db(database)
    return JsonResponse({"ok": True})


def insert(request: HttpRequest, alias: str) -> JsonResponse:
    """A plain autocommit INSERT through the ORM (no atomic block)."""
    item = Item.objects.using(alias).create(name=request.GET.get("name", "x"))
    return JsonResponse({"id": item.pk})


def _one(cursor: Any, sql: str) -> Any:
    try:
        cursor.execute(sql)
        row = cursor.fetchone()
        return row[0] if row else None
    except Exception as error:
        return f"error {getattr(error, 'args', [error])[0]}"


def probe(request: HttpRequest, alias: str) -> JsonResponse:
    """What the session of this request looks like."""
    connection = connections[alias]
    with connection.cursor() as cursor:
        state = {
            "session": _one(cursor, "SELECT CONNECTION_ID()"),
            "database": _one(cursor, "SELECT DATABASE()"),
            "trace": _one(cursor, "SELECT @trace"),
            "x": _one(cursor, "SELECT @x"),
            "isolation": _one(cursor, "SELECT @@session.tx_isolation"),
            "read_only": _one(cursor, "SELECT @@session.tx_read_only"),
            "autocommit": _one(cursor, "SELECT @@session.autocommit"),
            "charset": _one(cursor, "SELECT @@session.character_set_client"),
            "sql_mode": _one(cursor, "SELECT @@session.sql_mode"),
            "wait_timeout": _one(cursor, "SELECT @@session.wait_timeout"),
            "in_transaction": _one(cursor, "SELECT @@in_transaction"),
            "temp_table": _one(cursor, "SELECT COUNT(*) FROM djpool_tmp"),
            "prepared": _one(cursor, "EXECUTE djpool_stmt"),
            "lock_free": _one(cursor, "SELECT IS_FREE_LOCK('djpool_lock')"),
            "select_42": _one(cursor, "SELECT 42"),
        }
        # Last, as it changes the session: a write, with a short wait for a
        # table lock another session may hold (FLUSH TABLES / LOCK TABLES).
        cursor.execute("SET SESSION lock_wait_timeout = 5")
        state["write"] = _one(
            cursor,
            "INSERT INTO testapp_item (name, value, created) "
            "VALUES ('probe', 0, NOW())",
        )
    return JsonResponse(state)
