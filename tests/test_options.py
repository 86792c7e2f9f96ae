"""Which aliases are pooled, and with which options."""

from __future__ import annotations

import json
import warnings

import pytest
from django.db import connections
from django.test import override_settings

import djpoolapp
from djpoolapp.drivers import PooledConnection, driver_for
from djpoolapp.pool import pool_options

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def is_pooled(alias: str) -> bool:
    connection = connections[alias]
    connection.ensure_connection()
    pooled = isinstance(connection.connection, PooledConnection)
    connection.close()
    return pooled


@pytest.mark.postgres
@pytest.mark.mysql
def test_defaults__every_server_alias_pooled_sqlite_not():
    assert is_pooled("default") and is_pooled("mysql")
    assert not is_pooled("lite")
    assert set(djpoolapp.pool_status()) == {"default", "mysql"}


@pytest.mark.postgres
@pytest.mark.mysql
def test_aliases__per_alias_options_and_opt_out(request_cycle):
    options = {"pool_size": 3, "aliases": {"default": {"pool_size": 7}, "mysql": False}}
    with override_settings(DJPOOL_OPTIONS=options):
        assert is_pooled("default")
        assert not is_pooled("mysql")
        status = djpoolapp.pool_status()
        assert set(status) == {"default"}
        assert (status["default"].pool_size, status["default"].max_overflow) == (7, 10)
        sessions = {
            json.loads(request_cycle("/session/mysql/")[1])["session"] for _ in range(5)
        }
        assert len(sessions) == 5  # opted out: a new server session per request


@pytest.mark.postgres
def test_top_level_options__apply_to_every_alias():
    with override_settings(DJPOOL_OPTIONS={"pool_size": 2, "max_overflow": 1}):
        assert is_pooled("default")
        status = djpoolapp.pool_status("default")["default"]
        assert (status.pool_size, status.max_overflow) == (2, 1)


def test_sqlite__pooled_when_named_with_options():
    with override_settings(DJPOOL_OPTIONS={"aliases": {"lite": {"pool_size": 2}}}):
        connection = connections["lite"]
        connection.ensure_connection()
        raw = connection.connection
        assert isinstance(raw, PooledConnection)
        connection.close()
        connection.ensure_connection()
        assert connection.connection is raw  # the same sqlite3 connection again
        connection.close()


def test_sqlite__in_memory_never_pooled():
    memory = {**connections.settings["lite"], "NAME": ":memory:"}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Overriding setting DATABASES")
        with override_settings(
            DATABASES={**connections.settings, "lite": memory},
            DJPOOL_OPTIONS={"aliases": {"lite": {}}},
        ):
            from django.db.utils import ConnectionHandler

            handler = ConnectionHandler()
            handler["lite"].ensure_connection()
            assert not isinstance(handler["lite"].connection, PooledConnection)
            # Django's close() keeps in-memory SQLite open (closing would lose
            # the database); close it here, or Python 3.13+ warns when the
            # garbage collector finds it (ResourceWarning, an error here).
            handler["lite"].connection.close()


@pytest.mark.postgres
def test_native_pool__alias_left_alone():
    connection = connections["default"]
    native = {**connection.settings_dict, "OPTIONS": {"pool": True}}
    driver = driver_for(type(connection).Database)
    kwargs = connection.get_connection_params()
    assert pool_options("default", connection.settings_dict, driver, kwargs)
    assert pool_options("default", native, driver, kwargs) is None


def test_pool_status__unknown_alias_is_a_clear_error():
    with pytest.raises(ValueError, match="database alias 'nope' is not pooled"):
        djpoolapp.pool_status("nope")


def test_sqlite__transaction_mode_holds_the_connection_for_the_request():
    """A second review: SQLite pooled on request with
    ``pool_mode="transaction"`` failed every query (``classify()`` reads
    PostgreSQL and MySQL only: ValueError, a 500).  Its statements cannot be
    read, so its first statement pins the connection for the request, as
    request mode holds it; counted and said as a pin."""
    options = {"aliases": {"lite": {"pool_size": 1, "pool_mode": "transaction"}}}
    with override_settings(DJPOOL_OPTIONS=options):
        connection = connections["lite"]
        connection.close()
        pins = djpoolapp.pool_status("lite").get("lite")
        before = pins.pins if pins else 0
        with connection.cursor() as cursor:
            cursor.execute("CREATE TEMP TABLE djpool_lite (a int)")
        with connection.cursor() as cursor:  # same connection: pinned
            cursor.execute("INSERT INTO djpool_lite VALUES (1)")
            cursor.execute("SELECT count(*) FROM djpool_lite")
            assert cursor.fetchone() == (1,)
        status = djpoolapp.pool_status("lite")["lite"]
        assert status.pins == before + 1
        assert status.checked_out == 1  # held until the request ends
        connection.close()
        assert djpoolapp.pool_status("lite")["lite"].checked_out == 0


def test_sqlite__raw_handle_kept_past_the_request_is_refused():
    """A second review: a SQLite raw connection kept past its request still
    ran statements through ``execute()`` (sqlite3's shortcut that makes its
    cursor without ``cursor()``) while the connection was idle in the pool.
    Every statement path is refused now, with the class sqlite3 raises for a
    closed connection (stock Django's handle is closed by then)."""
    import sqlite3

    closed = sqlite3.connect(":memory:")
    closed.close()
    with pytest.raises(sqlite3.Error) as stock:
        closed.execute("SELECT 1")
    with override_settings(DJPOOL_OPTIONS={"aliases": {"lite": {"pool_size": 1}}}):
        connection = connections["lite"]
        connection.close()
        connection.ensure_connection()
        raw = connection.connection
        connection.close()  # the request ends: the pool has it back
        uses = {
            "cursor": lambda: raw.cursor(),
            "execute": lambda: raw.execute("SELECT 1"),
            "executemany": lambda: raw.executemany("SELECT ?", [(1,)]),
            "executescript": lambda: raw.executescript("SELECT 1;"),
            "commit": lambda: raw.commit(),
        }
        for name, use in uses.items():
            with pytest.raises(type(stock.value), match="went back to the pool"):
                use()
                pytest.fail(f"{name}() ran")
        connection.ensure_connection()  # the pool's own use is unaffected
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        connection.close()
