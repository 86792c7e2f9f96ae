"""MySQL/MariaDB: no session state and no transaction reaches the next request.

Each test runs one request that changes its server session (several
statements in one ``execute()``, executable comments, ``USE``, locks,
variables, ...) and then another request through Django's request cycle with
``pool_size=1, max_overflow=0``, so that a pool that kept the session would
hand it to that next request.  The next request must see what a fresh
connection sees, as it does with stock Django (the ``stock`` parameter runs
the same steps with djpoolapp's patches undone).  See docs/behaviour_sql.rst.
"""

from __future__ import annotations

import json
import threading

import pytest
from django.conf import settings
from django.db import connections
from django.test import override_settings

import djpoolapp
from djpoolapp.sql import classify
from tests.conftest import monitor_connection, wait_session_gone
from tests.modes import only, pool_mode  # noqa: F401  (every test, both modes)
from tests.testapp import views_sql

pytestmark = [
    pytest.mark.mysql,
    pytest.mark.django_db(transaction=True, databases="__all__"),
]

ALIAS = "mysql"
ONE_CONNECTION = {"pool_size": 1, "max_overflow": 0, "timeout": 10}
OTHER_DB = f"djpool_other_{settings.RUN_ID}"


@pytest.fixture(params=["pooled", "stock"])
def mode(request):
    """Run the test with the app, then with stock Django (see
    ``BOTH_MODES_AND_STOCK``)."""
    if request.param == "stock":
        request.getfixturevalue("unpatched")
    with override_settings(DJPOOL_OPTIONS={"aliases": {ALIAS: ONE_CONNECTION}}):
        yield request.param


#: A test of ``mode``: pooled in both pool_modes, and once with stock Django
#: (which has no pool_mode: a second stock copy would repeat the first).
BOTH_MODES_AND_STOCK = pytest.mark.parametrize(
    ("pool_mode", "mode"),
    [("request", "pooled"), ("transaction", "pooled"), ("request", "stock")],
    indirect=True,
)


@pytest.fixture
def pooled():
    with override_settings(DJPOOL_OPTIONS={"aliases": {ALIAS: ONE_CONNECTION}}):
        yield


@pytest.fixture
def monitor():
    conn = monitor_connection(ALIAS)
    yield conn
    conn.close()


@pytest.fixture
def other_db(monitor):
    cursor = monitor.cursor()
    cursor.execute(f"CREATE DATABASE IF NOT EXISTS {OTHER_DB}")
    cursor.execute(f"CREATE TABLE IF NOT EXISTS {OTHER_DB}.marker (a int)")
    yield OTHER_DB
    cursor.execute(f"DROP DATABASE IF EXISTS {OTHER_DB}")


@pytest.fixture(autouse=True)
def _statements():
    yield
    views_sql.STATEMENTS.clear()
    for cursor in views_sql.KEPT:
        try:
            cursor.close()
        except Exception:  # its connection is gone: nothing to free
            pass
    views_sql.KEPT.clear()


def get(request_cycle, path):
    status, body = request_cycle(path)
    assert status == 200, body[:2000]
    return json.loads(body)


def run(request_cycle, sql):
    name = f"s{len(views_sql.STATEMENTS)}"
    views_sql.STATEMENTS[name] = sql
    return get(request_cycle, f"/sql/{ALIAS}/run/{name}/")


def probe(request_cycle):
    return get(request_cycle, f"/sql/{ALIAS}/probe/")


def without_session(state):
    return {key: value for key, value in state.items() if key != "session"}


# -- item 2: statements that change the session ------------------------------
#: Each leaves state a fresh connection does not have (or looks as if it
#: might); the next request must not see any of it.
CHANGES = {
    "trace_transaction": "SET @trace = 'a'; START TRANSACTION; SELECT 1",
    "use_after_set": "SET @x=1; USE {other}",
    "use_in_comment": "/*!USE {other}*/",
    "isolation_in_comment": (
        "/*!40101 SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE */"
    ),
    "flush_read_lock": "FLUSH TABLES testapp_item WITH READ LOCK",
    "lock_tables": "LOCK TABLES testapp_item READ",
    "mariadb_comment": "/*M!100100 SET @x = 5 */",
    "assign_in_select": "SELECT @x := 7",
    "select_into": "SELECT 8 INTO @x",
    "names": "SET NAMES latin1",
    "sql_mode": "SET SESSION sql_mode = 'ANSI_QUOTES'",
    "wait_timeout": "SET SESSION wait_timeout = 77",
    "read_only": "SET SESSION TRANSACTION READ ONLY",
    "temp_table": "CREATE TEMPORARY TABLE djpool_tmp (a int)",
    "prepare": "PREPARE djpool_stmt FROM 'SELECT 1'",
    "get_lock": "SELECT GET_LOCK('djpool_lock', 0)",
    "autocommit_off": "SET autocommit = 0",
    "xa": "XA START 'djpool'",
    "begin_then_read": "BEGIN; SELECT COUNT(*) FROM testapp_item",
    "string_hides_nothing": "SELECT 'a\\'; SET @x = 9; -- '",
}


@pytest.mark.parametrize("change", sorted(CHANGES))
@BOTH_MODES_AND_STOCK
def test_next_request__sees_a_fresh_session_after(
    change, mode, request_cycle, other_db
):
    fresh = probe(request_cycle)
    changed = run(request_cycle, CHANGES[change].format(other=other_db))
    seen = probe(request_cycle)
    assert without_session(seen) == without_session(fresh)
    if mode == "pooled" and classify("mysql", CHANGES[change]) - {"transaction"}:
        # The changed session was closed, not handed on.
        assert seen["session"] != changed["session"]
        assert wait_session_gone(ALIAS, changed["session"])


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "BEGIN",
        "START TRANSACTION",
        "INSERT INTO testapp_item (name, value, created) VALUES ('a', 1, NOW())",
        "SELECT @x",
        "SELECT * FROM testapp_item WHERE name = 'x; SET @x = 1'",
        "/*+ MAX_EXECUTION_TIME(1000) */ SELECT 1",
        "SAVEPOINT a",
    ],
)
def test_next_request__reuses_a_session_nothing_changed(
    sql, pooled, request_cycle, monitor
):
    """Precision: what cannot change the session keeps the connection
    (a transaction opened by hand is rolled back at checkin)."""
    first = run(request_cycle, sql)
    second = run(request_cycle, "SELECT @@in_transaction, @x")
    assert second["session"] == first["session"]
    assert second["results"] == [[[0, None]]]


@BOTH_MODES_AND_STOCK
def test_issue_input__hidden_transaction_never_swallows_another_threads_write(
    mode, request_cycle, monitor
):
    """Issue 11, item 2: request A opens a transaction inside a
    multi-statement; request B, another thread, inserts in autocommit."""
    run(request_cycle, "SET @trace = 'a'; START TRANSACTION; SELECT 1")
    answers = []

    def request_b():
        try:
            answers.append(get(request_cycle, f"/sql/{ALIAS}/insert/?name=from-b"))
        finally:
            connections.close_all()

    thread = threading.Thread(target=request_b)
    thread.start()
    thread.join(30)
    assert answers and "id" in answers[0]
    test_db = connections[ALIAS].settings_dict["NAME"]

    def visible() -> int:
        cursor = monitor.cursor()
        cursor.execute(
            f"SELECT COUNT(*) FROM `{test_db}`.testapp_item WHERE name = 'from-b'"
        )
        return cursor.fetchone()[0]

    assert visible() == 1
    djpoolapp.dispose()
    assert visible() == 1


def test_select_db__is_a_change(pooled, request_cycle, other_db, monitor):
    fresh = probe(request_cycle)
    first = run(request_cycle, "SELECT 1")
    get(request_cycle, f"/sql/{ALIAS}/select-db/{other_db}/")
    seen = probe(request_cycle)
    assert seen["database"] == fresh["database"]
    assert seen["session"] != first["session"]


def test_django_setup__is_not_a_change(pooled, request_cycle):
    """Django's own SET statements at connect (isolation level,
    SQL_AUTO_IS_NULL) and mysqlclient's SET NAMES are the baseline."""
    sessions = {run(request_cycle, "SELECT 1")["session"] for _ in range(5)}
    assert len(sessions) == 1
    connection = connections[ALIAS]
    connection.ensure_connection()
    assert connection.connection._djpool_session_changes == frozenset()
    assert connection.connection._djpool_session_ready is True


def test_checkout__never_hands_out_a_changed_session_that_skipped_the_checkin(
    pooled,
):
    """Defence in depth: a connection that reached the pool some other way
    (SQLAlchemy's own return of an abandoned checkout) is checked again."""
    connection = connections[ALIAS]
    connection.close()  # start from this test's one-connection pool
    invalidated = djpoolapp.pool_status(ALIAS)[ALIAS].invalidated
    with connection.cursor() as cursor:
        cursor.execute("SET @x = 1")
        cursor.execute("SELECT CONNECTION_ID()")
        (first,) = cursor.fetchone()
    raw = connection.connection
    lease = raw._djpool_lease
    fairy, lease.fairy, lease.holder, lease.owner = lease.fairy, None, None, None
    connection.connection = None  # Django forgets it, as a dead thread would
    fairy.close()  # straight back into SQLAlchemy's queue: no djpoolapp checkin
    with connection.cursor() as cursor:
        cursor.execute("SELECT @x, CONNECTION_ID()")
        x, session = cursor.fetchone()
    assert x is None
    assert session != first
    assert connection.connection._djpool_pool is raw._djpool_pool
    assert djpoolapp.pool_status(ALIAS)[ALIAS].invalidated == invalidated + 1


def test_invalidations__are_counted_and_logged(pooled, request_cycle, caplog):
    before = djpoolapp.pool_status(ALIAS)[ALIAS].invalidated
    with caplog.at_level("INFO", logger="djpoolapp"):
        run(request_cycle, "SET @x = 1")
    assert djpoolapp.pool_status(ALIAS)[ALIAS].invalidated == before + 1
    assert "session state changed (user_variable)" in caplog.text


# -- item 3: unread results ----------------------------------------------------
@pytest.mark.parametrize("ping_after_idle", [0, 1.0])
@pytest.mark.parametrize(
    ("sql", "query"),
    [
        ("SELECT seq FROM seq_1_to_100", "cursor=ss&fetch=1"),
        ("SELECT seq FROM seq_1_to_100", "cursor=ss&fetch=0"),
        ("SELECT seq FROM seq_1_to_100000", "cursor=ss&fetch=10"),
        ("SELECT 1; SELECT 2; SELECT 3", "fetch=1"),
        ("SELECT 1; SELECT 2", "cursor=ss&fetch=1"),
    ],
)
def test_unread_results__never_break_the_next_request(
    sql, query, ping_after_idle, request_cycle
):
    """Issue 11, item 3: a raw cursor left with rows or result sets unread."""
    options = {**ONE_CONNECTION, "ping_after_idle": ping_after_idle}
    with override_settings(DJPOOL_OPTIONS={"aliases": {ALIAS: options}}):
        views_sql.STATEMENTS["kept"] = sql
        first = get(request_cycle, f"/sql/{ALIAS}/raw/kept/?{query}")
        for _ in range(3):
            seen = probe(request_cycle)
            assert seen["select_42"] == 42
            assert seen["session"] != first["session"]
        assert wait_session_gone(ALIAS, first["session"])


@pytest.mark.parametrize("cursor", ["ss", "plain"])
def test_read_results__keep_the_connection(cursor, pooled, request_cycle):
    """Precision: a raw cursor whose rows were all read leaves nothing
    pending, and the connection is reused."""
    views_sql.STATEMENTS["kept"] = "SELECT seq FROM seq_1_to_100"
    first = get(request_cycle, f"/sql/{ALIAS}/raw/kept/?cursor={cursor}")
    assert first["rows"] == 100
    assert run(request_cycle, "SELECT 42")["session"] == first["session"]


@only("request", why="stock Django (the app's patches undone): no pool_mode")
def test_unread_results__stock_django_is_unaffected(unpatched, request_cycle):
    views_sql.STATEMENTS["kept"] = "SELECT seq FROM seq_1_to_100"
    get(request_cycle, f"/sql/{ALIAS}/raw/kept/?cursor=ss&fetch=1")
    assert probe(request_cycle)["select_42"] == 42


# -- what Django and mysqlclient send -----------------------------------------
def test_multi_statements__are_accepted_by_djangos_connections(pooled):
    """Django passes client_flag=CLIENT.FOUND_ROWS; mysqlclient adds
    MULTI_STATEMENTS and MULTI_RESULTS unless told not to, so one execute()
    may run several statements: the reason the classifier must see them."""
    from MySQLdb.constants import CLIENT

    connection = connections[ALIAS]
    assert connection.get_connection_params()["client_flag"] == CLIENT.FOUND_ROWS
    with connection.cursor() as cursor:
        cursor.execute("SET @x = 1; SELECT @x")
        cursor.nextset()
        assert cursor.fetchone() == (1,)
    assert "multi_statement" in connection.connection._djpool_session_changes
