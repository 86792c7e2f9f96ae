"""Writes through a raw driver connection handle kept past its checkout
(adversarial review 02): while another thread's request holds the same
server session, every state-changing entry point of the pooled driver
connection -- attribute setters as well as methods -- raises the driver's
``InterfaceError`` (``Lease.check_caller``), as ``cursor()``, ``commit()``
and ``rollback()`` already did.  Before, ``raw.autocommit = False`` (psycopg
3, psycopg2) or ``raw.autocommit(False)`` (mysqlclient) switched autocommit
off under the holder, whose next autocommit ``INSERT`` the checkin then
rolled back: a lost write, no error.  Stock Django: the stale handle is a
closed connection of its own.

The holder itself, Django's thread sharing and djpoolapp's own checkin
(session reset, recovery of an abandoned checkout) keep writing freely.
Every case runs in both ``pool_mode``\\ s, on PostgreSQL (psycopg 3, or
psycopg2 with ``DJPOOL_TEST_DRIVER=psycopg2``) and MariaDB.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connections

import djpoolapp
from djpoolapp.drivers import (
    PooledMySQLConnection,
    PooledPsycopg2Connection,
    PooledPsycopgConnection,
)
from djpoolapp.pool import registry
from tests.conftest import ALIASES, closed_connection_error, driver_module
from tests.modes import pool_mode  # noqa: F401  (every test, both modes)
from tests.test_transparency import in_thread
from tests.testapp.models import Item

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


Write = Callable[[Any], Any]


def _enter(context: Any) -> None:
    with context:
        pass


def _psycopg_writes() -> dict[str, Write]:
    import psycopg
    from psycopg.rows import dict_row

    level = psycopg.IsolationLevel.SERIALIZABLE
    return {
        # property setters
        "autocommit": lambda raw: setattr(raw, "autocommit", False),
        "isolation_level": lambda raw: setattr(raw, "isolation_level", level),
        "read_only": lambda raw: setattr(raw, "read_only", True),
        "deferrable": lambda raw: setattr(raw, "deferrable", True),
        "prepare_threshold": lambda raw: setattr(raw, "prepare_threshold", 0),
        "prepared_max": lambda raw: setattr(raw, "prepared_max", 1),
        # instance attributes
        "row_factory": lambda raw: setattr(raw, "row_factory", dict_row),
        "cursor_factory": lambda raw: setattr(
            raw, "cursor_factory", psycopg.ClientCursor
        ),
        "server_cursor_factory": lambda raw: setattr(
            raw, "server_cursor_factory", psycopg.ServerCursor
        ),
        # methods
        "set_autocommit": lambda raw: raw.set_autocommit(False),
        "set_isolation_level": lambda raw: raw.set_isolation_level(level),
        "set_read_only": lambda raw: raw.set_read_only(True),
        "set_deferrable": lambda raw: raw.set_deferrable(True),
        "execute": lambda raw: raw.execute("SET statement_timeout = 1"),
        "transaction": lambda raw: _enter(raw.transaction()),
        "pipeline": lambda raw: _enter(raw.pipeline()),
        "notifies": lambda raw: list(raw.notifies(timeout=0.01)),
        "tpc_begin": lambda raw: raw.tpc_begin(raw.xid(1, "djpool", "stale")),
        "tpc_prepare": lambda raw: raw.tpc_prepare(),
        "tpc_commit": lambda raw: raw.tpc_commit(),
        "tpc_rollback": lambda raw: raw.tpc_rollback(),
        "tpc_recover": lambda raw: raw.tpc_recover(),
        "add_notice_handler": lambda raw: raw.add_notice_handler(print),
        "remove_notice_handler": lambda raw: raw.remove_notice_handler(print),
        "add_notify_handler": lambda raw: raw.add_notify_handler(print),
        "remove_notify_handler": lambda raw: raw.remove_notify_handler(print),
    }


def _psycopg2_writes() -> dict[str, Write]:
    import psycopg2.extensions as extensions

    level = extensions.ISOLATION_LEVEL_SERIALIZABLE
    return {
        # C descriptors (checked by __setattr__)
        "autocommit": lambda raw: setattr(raw, "autocommit", False),
        "isolation_level": lambda raw: setattr(raw, "isolation_level", level),
        "readonly": lambda raw: setattr(raw, "readonly", True),
        "deferrable": lambda raw: setattr(raw, "deferrable", True),
        "cursor_factory": lambda raw: setattr(raw, "cursor_factory", extensions.cursor),
        # methods
        "set_session": lambda raw: raw.set_session(readonly=True, autocommit=False),
        "set_isolation_level": lambda raw: raw.set_isolation_level(level),
        "set_client_encoding": lambda raw: raw.set_client_encoding("LATIN1"),
        "reset": lambda raw: raw.reset(),
        "tpc_begin": lambda raw: raw.tpc_begin(raw.xid(1, "djpool", "stale")),
        "tpc_prepare": lambda raw: raw.tpc_prepare(),
        "tpc_commit": lambda raw: raw.tpc_commit(),
        "tpc_rollback": lambda raw: raw.tpc_rollback(),
        "tpc_recover": lambda raw: raw.tpc_recover(),
        "lobject": lambda raw: raw.lobject(0, "w"),
    }


def _mysql_writes() -> dict[str, Write]:
    from MySQLdb.cursors import DictCursor

    settings = connections["mysql"].settings_dict
    return {
        # C descriptor and instance attributes
        "converter": lambda raw: setattr(raw, "converter", {}),
        "cursorclass": lambda raw: setattr(raw, "cursorclass", DictCursor),
        "encoding": lambda raw: setattr(raw, "encoding", "latin1"),
        # methods
        "autocommit": lambda raw: raw.autocommit(False),
        "change_user": lambda raw: raw.change_user(
            settings["USER"], settings["PASSWORD"] or ""
        ),
        "set_server_option": lambda raw: raw.set_server_option(1),  # multi-stmt off
        "kill": lambda raw: raw.kill(2**31 - 7),  # (no such session)
        "ping": lambda raw: raw.ping(),
        "stat": lambda raw: raw.stat(),
        "shutdown": lambda raw: raw.shutdown(),
        "dump_debug_info": lambda raw: raw.dump_debug_info(),
        "read_query_result": lambda raw: raw.read_query_result(),
        # guarded by PooledMySQLConnection's own methods
        "select_db": lambda raw: raw.select_db("mysql"),
        "set_character_set": lambda raw: raw.set_character_set("latin1"),
        "query": lambda raw: raw.query("SET autocommit = 0"),
        "send_query": lambda raw: raw.send_query("SET autocommit = 0"),
    }


def _postgres_driver() -> str:
    return os.environ.get("DJPOOL_TEST_DRIVER", "psycopg") or "psycopg"


_MIXINS: dict[str, type] = {
    "psycopg": PooledPsycopgConnection,
    "psycopg2": PooledPsycopg2Connection,
    "MySQLdb": PooledMySQLConnection,
}


def _guarded_names(mixin: Any) -> set[str]:
    return set(
        mixin._djpool_guarded_properties
        + mixin._djpool_guarded_slots
        + mixin._djpool_guarded_fields
        + mixin._djpool_guarded_methods
    )


def _cases() -> list[Any]:
    """(alias, name) for every guarded entry point of the drivers in use."""
    driver = _postgres_driver()
    postgres = _psycopg2_writes() if driver == "psycopg2" else _psycopg_writes()
    cases = [
        pytest.param("default", name, marks=pytest.mark.postgres, id=f"postgres-{name}")
        for name in postgres
    ]
    cases += [
        pytest.param("mysql", name, marks=pytest.mark.mysql, id=f"mysql-{name}")
        for name in _MYSQL_NAMES
    ]
    return cases


_MYSQL_NAMES = (
    "converter", "cursorclass", "encoding", "autocommit", "change_user",
    "set_server_option", "kill", "ping", "stat", "shutdown", "dump_debug_info",
    "read_query_result", "select_db", "set_character_set", "query", "send_query",
)  # fmt: skip


_NEVER_UNGUARDED = {"shutdown", "read_query_result", "dump_debug_info"}


def _writes(alias: str) -> dict[str, Write]:
    module = driver_module(alias).__name__
    if module == "MySQLdb":
        return _mysql_writes()
    return _psycopg2_writes() if module == "psycopg2" else _psycopg_writes()


def _state(raw: Any) -> tuple[Any, ...]:
    """What the holder's driver connection looks like client-side."""
    if hasattr(raw, "get_autocommit"):  # mysqlclient
        return (
            raw.get_autocommit(), raw.converter is not None, raw.cursorclass,
            raw.encoding, raw.character_set_name(),
        )  # fmt: skip
    lease = raw._djpool_lease
    return (raw.autocommit, lease.driver.snapshot(raw))


def test_every_guarded_entry_point_has_a_case():
    """Each name the pooled classes guard is exercised below (and each case
    names something the driver has)."""
    if _postgres_driver() == "psycopg2":  # (psycopg 3 is not importable then)
        assert _guarded_names(PooledPsycopg2Connection) == set(_psycopg2_writes())
    else:
        assert _guarded_names(PooledPsycopgConnection) == set(_psycopg_writes())
    own = {"select_db", "set_character_set", "query", "send_query", "autocommit"}
    assert _guarded_names(PooledMySQLConnection) | own == set(_MYSQL_NAMES)


@pytest.mark.parametrize(("alias", "name"), _cases())
def test_stale_handle__write_refused_while_another_thread_holds_the_session(
    alias, name, one_connection
):
    """Request A (this thread) keeps the raw handle past its request.
    Request B (another thread) holds the same session and makes two
    autocommit writes; between them A writes through its handle.  A gets
    the driver's InterfaceError, B's session is as B left it and both of
    B's writes are in the database; nothing is invalidated."""
    write = _writes(alias)[name]
    module = driver_module(alias)
    connection = connections[alias]
    connection.ensure_connection()
    raw = connection.connection
    if name in _NEVER_UNGUARDED:
        # Not tried unguarded (it would stop the server, or wait for ever).
        assert name in vars(type(raw)), f"{name} is not guarded"
    connection.close()  # A's request ends: the session goes back to the pool
    invalidated = djpoolapp.pool_status(alias)[alias].invalidated
    first_done = threading.Event()
    attempted = threading.Event()
    seen: dict[str, Any] = {}

    def request_b() -> None:
        b = connections[alias]
        b.ensure_connection()
        held = b.connection  # (transaction mode: pinned, held between writes)
        seen["same session"] = held is raw
        Item.objects.using(alias).create(name="b1")
        seen["before"] = _state(held)
        first_done.set()
        assert attempted.wait(10)
        seen["after"] = _state(held)
        Item.objects.using(alias).create(name="b2")
        seen["autocommit"] = b.get_autocommit()

    thread = threading.Thread(target=lambda: in_thread(request_b))
    thread.start()
    try:
        assert first_done.wait(10)
        try:
            write(raw)
            seen["error"] = None
        except Exception as error:
            seen["error"] = error
    finally:
        attempted.set()
        thread.join(20)
    assert not thread.is_alive()
    assert seen["same session"], "pool_size=1: B must hold A's old session"

    def read_back() -> list[str]:
        return list(
            Item.objects.using(alias)
            .filter(name__in=["b1", "b2"])
            .order_by("name")
            .values_list("name", flat=True)
        )

    assert in_thread(read_back) == ["b1", "b2"], "B's write was lost"
    assert seen["after"] == seen["before"], f"{name} changed B's connection"
    assert seen["autocommit"] is True
    error = seen["error"]
    assert isinstance(error, closed_connection_error(module)), f"{name}: {error!r}"
    assert "another thread" in str(error)
    assert djpoolapp.pool_status(alias)[alias].invalidated == invalidated
    assert djpoolapp.pool_status(alias)[alias].checked_out == 0


def _holder_writes(alias: str) -> list[tuple[str, Write, Write]]:
    """(what, change, undo) the holder makes through its own raw handle."""
    module = driver_module(alias).__name__
    if module == "MySQLdb":
        return [
            ("autocommit", lambda r: r.autocommit(False), lambda r: r.autocommit(True)),
            ("ping", lambda r: r.ping(), lambda r: None),
            ("stat", lambda r: r.stat(), lambda r: None),
        ]
    if module == "psycopg2":
        return [
            ("autocommit", lambda r: setattr(r, "autocommit", False),
             lambda r: setattr(r, "autocommit", True)),
            ("readonly", lambda r: setattr(r, "readonly", True), lambda r: None),
            ("set_session", lambda r: r.set_session(deferrable=True), lambda r: None),
        ]  # fmt: skip
    return [
        ("autocommit", lambda r: setattr(r, "autocommit", False),
         lambda r: setattr(r, "autocommit", True)),
        ("read_only", lambda r: setattr(r, "read_only", True), lambda r: None),
        ("set_deferrable", lambda r: r.set_deferrable(True), lambda r: None),
        ("prepare_threshold", lambda r: setattr(r, "prepare_threshold", None),
         lambda r: None),
    ]  # fmt: skip


@pytest.mark.parametrize("alias", ALIASES)
def test_holder_writes_through_its_own_handle_and_the_reset_undoes_them(
    alias, one_connection
):
    """The thread holding the checkout writes through
    ``connection.connection`` as without the app; the checkin's session
    reset (djpoolapp writing the attributes back, no checkout held) undoes
    them in place: the next request gets the same session, as fresh."""
    connection = connections[alias]
    connection.ensure_connection()
    raw = connection.connection
    fresh = _state(raw)
    invalidated = djpoolapp.pool_status(alias)[alias].invalidated
    Item.objects.using(alias).create(name="holder")
    for _what, change, undo in _holder_writes(alias):
        change(raw)
        undo(raw)
    connection.close()
    connection.ensure_connection()
    assert connection.connection is raw  # reset in place, not replaced
    assert _state(raw) == fresh
    assert Item.objects.using(alias).filter(name="holder").count() == 1
    connection.close()
    assert djpoolapp.pool_status(alias)[alias].invalidated == invalidated


@pytest.mark.parametrize("alias", ALIASES)
def test_thread_sharing__another_thread_writes_when_django_allows_it(
    alias, one_connection
):
    """``inc_thread_sharing()`` (Django's own opt-in): a thread that is not
    the holder uses the holder's handle, as it does the Django connection."""
    connection = connections[alias]
    connection.ensure_connection()
    raw = connection.connection
    connection.inc_thread_sharing()
    try:
        change, undo = _holder_writes(alias)[0][1:]
        in_thread(change, raw)
        in_thread(undo, raw)
        assert connection.get_autocommit() is True
    finally:
        connection.dec_thread_sharing()
        connection.close()


@pytest.mark.parametrize("alias", ALIASES)
def test_recovery__of_an_abandoned_checkout_resets_from_another_thread(
    alias, one_connection, caplog
):
    """A thread changes its session's driver attributes and ends without
    closing: the pool recovers the checkout from whichever thread the
    garbage collector runs (not the holder) and its reset writes the
    attributes back without tripping over the check; the next request gets
    the session back, as fresh."""
    connection = connections[alias]
    connection.ensure_connection()
    fresh = _state(connection.connection)
    connection.close()

    def abandon() -> None:
        c = connections[alias]
        c.ensure_connection()
        raw = c.connection
        for _what, change, _undo in _holder_writes(alias)[1:]:
            change(raw)
        if driver_module(alias).__name__ == "MySQLdb":
            raw.autocommit(False)  # left off: the recovery rolls back
        # ends without closing

    caplog.set_level(logging.WARNING, logger="djpoolapp")
    thread = threading.Thread(target=abandon)
    thread.start()
    thread.join(20)
    del thread
    gc.collect()
    gc.collect()
    assert djpoolapp.pool_status(alias)[alias].checked_out == 0
    assert "Could not return" not in caplog.text
    assert registry.stats(alias).recovered >= 1
    connection.ensure_connection()
    assert _state(connection.connection) == fresh
    assert connection.get_autocommit() is True
    connection.close()


def _statement_writes(alias: str) -> dict[str, Write]:
    """Ways a raw handle runs an autocommit ``INSERT`` of a row named
    ``stale`` (the table of ``tests.testapp.models.Item``)."""
    table = Item._meta.db_table
    insert = (
        f"INSERT INTO {table} (name, value, created) "
        "VALUES ('stale', 1, CURRENT_TIMESTAMP)"
    )
    module = driver_module(alias).__name__

    def through_cursor(raw: Any) -> None:
        cursor = raw.cursor()
        cursor.execute(insert)
        if module != "MySQLdb" or raw.get_autocommit() is False:
            raw.commit()

    writes: dict[str, Write] = {
        "cursor": through_cursor,
        "commit": lambda r: r.commit(),
    }
    if module == "psycopg":
        import psycopg

        writes["execute"] = lambda raw: raw.execute(insert)
        # A cursor built from its class: neither cursor() nor a factory sees
        # it; psycopg 3's wait(), which every statement passes, does.
        writes["cursor class"] = lambda raw: psycopg.ClientCursor(raw).execute(insert)
    if module == "MySQLdb":
        writes["query"] = lambda raw: raw.query(insert)
    return writes


def _idle_cases() -> list[Any]:
    cases = []
    for alias in ("default", "mysql"):
        mark = pytest.mark.postgres if alias == "default" else pytest.mark.mysql
        vendor = "postgres" if alias == "default" else "mysql"
        names = ["cursor", "commit"]
        if alias == "default" and _postgres_driver() == "psycopg":
            names += ["execute", "cursor class"]
        if alias == "mysql":
            names += ["query"]
        cases += [
            pytest.param(alias, name, marks=mark, id=f"{vendor}-{name}")
            for name in names
        ]
    return cases


@pytest.mark.parametrize(("alias", "name"), _idle_cases())
def test_stale_handle__statement_refused_while_no_request_holds_the_session(
    alias, name, one_connection
):
    """Adversarial review (F1): a raw handle kept past the end of its request
    ran an autocommit ``INSERT`` while the session was parked (or idle in the
    pool), and it was committed: a write outside any request, where stock
    Django's closed handle raises.  Every way to run a statement is refused
    now (the driver's ``InterfaceError``), nothing reaches the table, and
    the next request gets the session as fresh."""
    module = driver_module(alias)
    connection = connections[alias]
    connection.ensure_connection()
    raw = connection.connection
    fresh = _state(raw)
    connection.close()  # the request ends: parked, or idle in the pool
    with pytest.raises(closed_connection_error(module), match="went back to the pool"):
        _statement_writes(alias)[name](raw)
    assert Item.objects.using(alias).filter(name="stale").count() == 0
    assert _state(connection.connection) == fresh
    assert connection.get_autocommit() is True
    connection.close()


@pytest.mark.parametrize(("alias", "name"), _cases())
def test_stale_handle__write_refused_while_no_request_holds_the_session(
    alias, name, one_connection
):
    """The same for every other guarded entry point (setters and methods):
    refused while the session is parked or idle, the next request's session
    unchanged and nothing invalidated."""
    write = _writes(alias)[name]
    module = driver_module(alias)
    connection = connections[alias]
    connection.ensure_connection()
    raw = connection.connection
    if name in _NEVER_UNGUARDED:
        assert name in vars(type(raw)), f"{name} is not guarded"
    fresh = _state(raw)
    invalidated = djpoolapp.pool_status(alias)[alias].invalidated
    connection.close()
    with pytest.raises(closed_connection_error(module), match="went back to the pool"):
        write(raw)
    connection.ensure_connection()
    assert connection.connection is raw  # nothing to replace: nothing changed
    assert _state(raw) == fresh
    connection.close()
    assert djpoolapp.pool_status(alias)[alias].invalidated == invalidated


@pytest.mark.parametrize("alias", ALIASES)
def test_stale_handle__close_while_parked_or_idle_does_nothing(alias, one_connection):
    """Adversarial review (stale close): a raw handle kept past its request
    and closed after it ended closed the pooled session for real (the next
    checkout then replaced it).  Stock Django's handle is closed already, so
    its close() does nothing to any session: neither does this one now, and
    the next request gets the same session, nothing invalidated."""
    connection = connections[alias]
    connection.ensure_connection()
    raw = connection.connection
    invalidated = djpoolapp.pool_status(alias)[alias].invalidated
    connection.close()  # the request ends: parked, or idle in the pool
    raw.close()  # the stale handle's close
    connection.ensure_connection()
    assert connection.connection is raw
    assert Item.objects.using(alias).count() >= 0  # usable
    connection.close()
    assert djpoolapp.pool_status(alias)[alias].invalidated == invalidated


@pytest.mark.parametrize("alias", ALIASES)
def test_stale_handle__close_by_another_thread_leaves_the_holder_alone(
    alias, one_connection
):
    """Adversarial review (stale close, high): request A keeps its raw
    handle; request B (another thread) holds the same session when A's
    handle is closed.  Before, B's next statement failed ("the connection is
    closed" / 2006) and B's end-of-request close raised; stock Django's
    stale handle is a closed connection of its own.  Now B is unaffected:
    both its writes land and nothing is invalidated."""
    connection = connections[alias]
    connection.ensure_connection()
    raw = connection.connection
    connection.close()  # A's request ends
    invalidated = djpoolapp.pool_status(alias)[alias].invalidated
    first_done = threading.Event()
    closed = threading.Event()
    seen: dict[str, Any] = {}

    def request_b() -> None:
        b = connections[alias]
        b.ensure_connection()
        seen["same session"] = b.connection is raw
        Item.objects.using(alias).create(name="b1")
        first_done.set()
        assert closed.wait(10)
        Item.objects.using(alias).create(name="b2")
        b.close()

    thread = threading.Thread(target=lambda: in_thread(request_b))
    thread.start()
    try:
        assert first_done.wait(10)
        raw.close()  # A's stale close, while B holds the session
    finally:
        closed.set()
        thread.join(20)
    assert not thread.is_alive()
    assert seen["same session"], "pool_size=1: B must hold A's old session"
    names = in_thread(
        lambda: sorted(
            Item.objects.using(alias)
            .filter(name__in=["b1", "b2"])
            .values_list("name", flat=True)
        )
    )
    assert names == ["b1", "b2"]
    assert djpoolapp.pool_status(alias)[alias].invalidated == invalidated
