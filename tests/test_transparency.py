"""Transparency (issue 11): a pooled connection is indistinguishable from a
fresh one; nothing is committed, stranded or shared by accident.

Each test is one item of the issue, on both servers (and, run with
``DJPOOL_TEST_DRIVER=psycopg2``, both PostgreSQL drivers) where it applies;
the server's own view (pg_stat_activity, pg_locks, information_schema) is the
judge.  Session-state resets are in tests/test_session_reset.py.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import DatabaseError, connections, transaction
from django.db import Error as DjangoError
from django.test import override_settings

import djpoolapp
from djpoolapp import conf
from tests import modes
from tests.conftest import (
    ALIASES,
    driver_module,
    monitor_connection,
    wait_session_gone,
)
from tests.modes import only, pool_mode  # noqa: F401  (every test, both modes)
from tests.testapp.models import Item

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

SESSION_ID_SQL = {
    "postgresql": "SELECT pg_backend_pid()",
    "mysql": "SELECT CONNECTION_ID()",
}


def session_id(alias: str) -> int:
    connection = connections[alias]
    with connection.cursor() as cursor:
        cursor.execute(SESSION_ID_SQL[connection.vendor])
        return int(cursor.fetchone()[0])


def in_thread(function, *args, timeout=None):
    """Run *function* in a new thread (its own Django connections, closed at
    the end as a request's are); return its result.  With *timeout*
    (seconds), the thread must have ended by then."""
    result: list = []
    errors: list = []

    def run():
        try:
            result.append(function(*args))
        except BaseException as error:  # re-raised in the test's thread
            errors.append(error)
        finally:
            for connection in connections.all(initialized_only=True):
                connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive()
    if errors:
        raise errors[0]
    return result[0]


def idle_in_transaction(alias: str) -> int:
    """Sessions of the test database that hold a transaction while idle."""
    connection = connections[alias]
    monitor = monitor_connection(alias)
    try:
        cursor = monitor.cursor()
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                "AND state LIKE 'idle in transaction%%'",
                [connection.settings_dict["NAME"]],
            )
        else:
            cursor.execute(
                "SELECT COUNT(*) FROM information_schema.innodb_trx t "
                "JOIN information_schema.PROCESSLIST p "
                "ON p.ID = t.trx_mysql_thread_id WHERE p.DB = %s "
                "AND p.COMMAND = 'Sleep'",
                [connection.settings_dict["NAME"]],
            )
        return int(cursor.fetchone()[0])
    finally:
        monitor.close()


# -- 1. nothing is committed that Django did not commit -----------------------
@only("request", why="option validation: no pool, no connection")
def test_reset_on_return__commit_is_refused_at_startup():
    found = conf.problems({"reset_on_return": "commit"}, ["default"])
    assert len(found) == 1
    assert "DJPOOL_OPTIONS['reset_on_return']" in found[0]
    assert "Django never commits on close" in found[0]
    with override_settings(DJPOOL_OPTIONS={"reset_on_return": "commit"}):
        with pytest.raises(Exception, match="Django never commits on close"):
            conf.get_config()


@pytest.mark.parametrize("alias", ALIASES)
@pytest.mark.parametrize("reset_on_return", ["rollback", None])
def test_crashed_request__half_done_work_is_never_committed(
    alias, reset_on_return, request_cycle
):
    Item.objects.using(alias).create(name="alice", value=100)
    options = {"pool_size": 1, "max_overflow": 0, "reset_on_return": reset_on_return}
    with override_settings(DJPOOL_OPTIONS=options):
        status, _ = request_cycle(f"/crash-after-update/{alias}/")
        assert status == 500
        assert Item.objects.using(alias).get(name="alice").value == 100
    djpoolapp.dispose(alias)
    assert Item.objects.using(alias).get(name="alice").value == 100


# -- 4. an idle connection never holds a transaction --------------------------
@pytest.mark.parametrize("alias", ALIASES)
@pytest.mark.parametrize("reset_on_return", ["rollback", None])
def test_idle_connection__never_holds_locks(alias, reset_on_return, request_cycle):
    item = Item.objects.using(alias).create(name="locked")
    with override_settings(DJPOOL_OPTIONS={"reset_on_return": reset_on_return}):
        status, _ = request_cycle(f"/lock-rows/{alias}/")
        assert status == 200
        assert djpoolapp.pool_status(alias)[alias].idle == 1
        assert idle_in_transaction(alias) == 0
        outside_update(alias, item.pk)  # an outside session writes at once
    assert Item.objects.using(alias).get(pk=item.pk).value == 7


def outside_update(alias: str, pk: int) -> None:
    """UPDATE the row from an unpooled session that waits at most 2 s for
    locks (lock timeout errors fail the test)."""
    settings_dict = connections[alias].settings_dict
    kwargs = {
        "host": settings_dict["HOST"],
        "port": int(settings_dict["PORT"]),
        "user": settings_dict["USER"],
        "password": settings_dict["PASSWORD"],
    }
    module = driver_module(alias)
    if connections[alias].vendor == "postgresql":
        conn = module.connect(
            dbname=settings_dict["NAME"], options="-c lock_timeout=2000", **kwargs
        )
        conn.autocommit = True
    else:
        conn = module.connect(database=settings_dict["NAME"], **kwargs)
        conn.autocommit(True)
    try:
        cursor = conn.cursor()
        if connections[alias].vendor == "mysql":
            cursor.execute("SET SESSION innodb_lock_wait_timeout = 2")
        cursor.execute("UPDATE testapp_item SET value = 7 WHERE id = %s", [pk])
    finally:
        conn.close()


# -- 5. dead owners -------------------------------------------------------------
def _select_one(alias: str) -> None:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1")


def _leave_transaction_open(alias: str) -> None:
    transaction.set_autocommit(False, using=alias)
    Item.objects.using(alias).create(name="orphan")


@pytest.mark.parametrize("alias", ALIASES)
@pytest.mark.parametrize("owner", ["thread", "executor", "wrapper"])
def test_dead_owner__checkout_comes_back_rolled_back_within_one_gc(alias, owner):
    options = {"pool_size": 2, "max_overflow": 0, "timeout": 2}
    with override_settings(DJPOOL_OPTIONS=options):
        if owner == "thread":
            threads = [
                threading.Thread(target=_select_one, args=(alias,)),
                threading.Thread(target=_leave_transaction_open, args=(alias,)),
            ]
            for thread in threads:
                thread.start()
                thread.join()
        elif owner == "executor":
            with ThreadPoolExecutor(2) as executor:
                executor.submit(_select_one, alias).result()
                executor.submit(_leave_transaction_open, alias).result()
        else:
            first = connections.create_connection(alias)
            first.ensure_connection()
            second = connections.create_connection(alias)
            second.set_autocommit(False)
            with second.cursor() as cursor:
                cursor.execute(
                    "INSERT INTO testapp_item (name, value, created) "
                    "VALUES ('orphan', 0, CURRENT_TIMESTAMP)"
                )
            del first, second, cursor  # the cursor wrapper refers to second
        gc.collect()
        status = djpoolapp.pool_status(alias)[alias]
        assert status.checked_out == 0
        assert idle_in_transaction(alias) == 0
        assert not Item.objects.using(alias).filter(name="orphan").exists()
        # Both slots serve again (a stranded one would raise PoolTimeout).
        other = connections.create_connection(alias)
        other.ensure_connection()
        _select_one(alias)
        other.close()


# -- 6. stale raw handles -------------------------------------------------------
@pytest.mark.parametrize("alias", ALIASES)
def test_raw_close__closes_the_session_as_without_the_app(alias):
    connection = connections[alias]
    sid = session_id(alias)
    before = djpoolapp.pool_status(alias)[alias].invalidated
    connection.connection.close()
    assert connection.is_usable() is False  # Django's own expectation
    with contextlib.suppress(DatabaseError):
        connection.close()  # stock mysqlclient raises on a second close too
    status = djpoolapp.pool_status(alias)[alias]
    assert status.checked_out == 0
    assert status.idle == 0
    assert status.invalidated == before + 1
    assert wait_session_gone(alias, sid)
    assert session_id(alias) != sid


@pytest.mark.parametrize("alias", ALIASES)
@override_settings(DJPOOL_OPTIONS={"pool_size": 1, "max_overflow": 0, "timeout": 2})
def test_stale_raw_handle__never_hands_the_current_holder_to_another(alias):
    connection = connections[alias]
    connection.ensure_connection()
    stored = connection.connection  # request A keeps its raw handle
    connection.close()
    errors = (DjangoError, driver_module(alias).Error)
    with pytest.raises(errors):
        with transaction.atomic(using=alias):  # request B, same session
            Item.objects.using(alias).create(name="b")
            b_session = session_id(alias)
            stored.close()  # A's stale close
            # Request C, another thread, never gets B's session meanwhile.
            assert in_thread(session_id, alias) != b_session
            Item.objects.using(alias).count()  # B: its session is gone
    connection.close()
    assert djpoolapp.pool_status(alias)[alias].checked_out == 0
    assert not Item.objects.using(alias).filter(name="b").exists()


# -- 7. server-side cursors -------------------------------------------------------
@pytest.mark.postgres
@pytest.mark.filterwarnings("ignore::ResourceWarning")  # psycopg 3's, on GC
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_server_side_cursor__garbage_collected_never_survives_a_checkin():
    connection = connections["default"]
    sid = session_id("default")
    connection.close()
    for _ in range(3):
        cursor = connection.chunked_cursor()  # as QuerySet.iterator() does
        cursor.execute("SELECT generate_series(1, 10000)")
        cursor.fetchone()
        del cursor  # the client went away mid-stream
        gc.collect()
        connection.close()
    assert session_id("default") == sid
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_cursors")
        assert cursor.fetchone()[0] == 0


@pytest.mark.postgres
@pytest.mark.filterwarnings("ignore::ResourceWarning")  # psycopg 3's, on GC
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@override_settings(DJPOOL_OPTIONS={"reset_session": False})
def test_server_side_cursor__closed_even_without_session_reset():
    connection = connections["default"]
    with connection.cursor() as cursor:
        cursor.execute("SET application_name = 'kept'")
    raw = connection.connection.cursor(name="raw_named", withhold=True)
    raw.execute("SELECT generate_series(1, 10)")
    raw.fetchone()
    connection.close()
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_cursors")
        assert cursor.fetchone()[0] == 0
        cursor.execute("SHOW application_name")
        assert cursor.fetchone()[0] == "kept"  # reset_session=False keeps it


# -- 8. CONN_HEALTH_CHECKS --------------------------------------------------------
@pytest.mark.parametrize("alias", ALIASES)
def test_health_check__unusable_connection_is_never_handed_out_again(alias):
    from unittest import mock

    connection = connections[alias]
    connection.close()
    # As Django's ConnectionHealthChecksTests patch it (at run time: the app
    # refuses a non-zero CONN_MAX_AGE at start-up only).
    connection.settings_dict["CONN_HEALTH_CHECKS"] = True
    connection.settings_dict["CONN_MAX_AGE"] = None
    try:
        old = session_id(alias)
        if modes.current(alias) == "transaction":
            # Django's health check judges the connection it holds between
            # requests; in transaction mode only a pinned one is held (docs/
            # pool_mode.rst), and this reads connection.connection: pinned.
            assert connection.connection is not None
        connection.close_if_unusable_or_obsolete()  # request_finished
        before = djpoolapp.pool_status(alias)[alias].invalidated
        # As in Django's own ConnectionHealthChecksTests.
        with mock.patch.object(connection, "is_usable", return_value=False):
            new = session_id(alias)
        assert new != old
        assert djpoolapp.pool_status(alias)[alias].invalidated == before + 1
        assert wait_session_gone(alias, old)
    finally:
        connection.close()
        connection.settings_dict["CONN_HEALTH_CHECKS"] = False
        connection.settings_dict["CONN_MAX_AGE"] = 0


# -- 13. CONN_MAX_AGE with the app --------------------------------------------------
@only("request", why="settings validation in a subprocess: no pool, no connection")
def test_conn_max_age__refused_at_startup():
    import subprocess
    import sys

    script = (
        "import django\n"
        "from django.conf import settings\n"
        "settings.configure(INSTALLED_APPS=['djpoolapp'], DATABASES={'default': {"
        "'ENGINE': 'django.db.backends.postgresql', 'NAME': 'x', "
        "'CONN_MAX_AGE': 60}})\n"
        "django.setup()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "ImproperlyConfigured" in done.stderr
    assert "DATABASES['default']['CONN_MAX_AGE'] is 60: set it to 0" in done.stderr


@pytest.mark.parametrize("alias", ALIASES)
def test_pool_timeout__names_a_nonzero_conn_max_age(alias):
    options = {"pool_size": 1, "max_overflow": 0, "timeout": 0.2}
    with override_settings(DJPOOL_OPTIONS=options):
        connections[alias].ensure_connection()  # holds the only connection
        settings_dict = connections.settings[alias]
        settings_dict["CONN_MAX_AGE"] = 60
        try:
            with pytest.raises(djpoolapp.PoolTimeout, match="CONN_MAX_AGE'] is 60"):
                in_thread(session_id, alias)
        finally:
            settings_dict["CONN_MAX_AGE"] = 0
            connections[alias].close()


# -- issue 15 item 13: a failed connect is the driver's error -----------------------
@pytest.mark.parametrize("alias", ALIASES)
def test_failed_connect__raises_the_drivers_error_without_sqlalchemy_frames(alias):
    import traceback

    connection = connections.create_connection(alias)
    connection.settings_dict = {**connection.settings_dict, "PORT": "1"}
    with pytest.raises(DatabaseError) as caught:
        connection.ensure_connection()
    cause = caught.value.__cause__
    assert isinstance(cause, driver_module(alias).Error)
    chain = caught.value
    frames = []
    while chain is not None:
        frames += traceback.extract_tb(chain.__traceback__)
        chain = chain.__cause__ or chain.__context__
    assert not [frame for frame in frames if "sqlalchemy" in frame.filename]
