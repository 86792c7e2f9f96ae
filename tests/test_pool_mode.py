"""``pool_mode="transaction"`` proven on the server side (docs/pool_mode.rst).

Each test runs against PostgreSQL and MariaDB (``ALIASES``); run it with
``DJPOOL_TEST_DRIVER=psycopg2`` for Django's psycopg2 path.  "Released"
means the pool's ``checked_out`` is 0 while Django's connection object lives
on; the server side (``pg_backend_pid()`` / ``CONNECTION_ID()``,
``pg_stat_activity`` / ``PROCESSLIST``) shows which session ran what.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import unittest
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connections, transaction
from django.db.utils import DatabaseError
from django.test import TestCase, override_settings

import djpoolapp
from tests.conftest import ALIASES, monitor_connection
from tests.testapp.models import Item

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

SESSION_ID = {
    "postgresql": "SELECT pg_backend_pid()",
    "mysql": "SELECT CONNECTION_ID()",
}


@contextlib.contextmanager
def transaction_mode(alias: str, **options: Any) -> Iterator[Callable[[], int]]:
    """A transaction-mode pool of *alias* (pool_size=1 unless told), from a
    closed Django connection (as at the start of a request).  Yields
    ``pins()``: pins counted since (the counters are per process)."""
    merged = {"pool_mode": "transaction", "pool_size": 1, "max_overflow": 0}
    merged.update(options)
    connections[alias].close()
    with override_settings(DJPOOL_OPTIONS={"aliases": {alias: merged}}):
        before = status(alias).pins
        yield lambda: status(alias).pins - before


def session_id(alias: str) -> int:
    connection = connections[alias]
    with connection.cursor() as cursor:
        cursor.execute(SESSION_ID[connection.vendor])
        (session,) = cursor.fetchone()
    return int(session)


def status(alias: str) -> djpoolapp.PoolStatus:
    return djpoolapp.pool_status(alias)[alias]


def held(alias: str) -> bool:
    """Django's connection holds a driver connection (read without pinning)."""
    return connections[alias].__dict__.get("connection") is not None


def in_thread(function: Callable[[], Any]) -> Any:
    """Run *function* in a new thread with its own Django connections;
    close them after (the end of that thread's "request")."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(function())
        except BaseException as error:  # re-raised below
            errors.append(error)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    if errors:
        raise errors[0]
    return result[0]


# -- the option ----------------------------------------------------------------
@pytest.mark.django_db(transaction=False, databases=[])
def test_pool_mode__option_is_checked():
    from djpoolapp import conf

    assert conf.problems({"aliases": {"default": {"pool_mode": "transaction"}}},
                         ["default"]) == []  # fmt: skip
    assert conf.problems({"pool_mode": "statement"}, ["default"]) == [
        "DJPOOL_OPTIONS['pool_mode'] must be one of 'request' or 'transaction'; "
        "got 'statement'"
    ]


# -- release -------------------------------------------------------------------
@pytest.mark.parametrize("alias", ALIASES)
def test_autocommit_statement__returns_the_connection(alias):
    with transaction_mode(alias) as pins:
        Item.objects.using(alias).create(name="a")
        assert not held(alias)
        assert status(alias).checked_out == 0
        assert Item.objects.using(alias).count() == 1  # takes one again
        assert not held(alias)
        assert list(Item.objects.using(alias).values_list("name", flat=True)) == ["a"]
        assert (status(alias).checked_out, pins()) == (0, 0)


@pytest.mark.parametrize("alias", ALIASES)
def test_two_threads__alternate_statements_on_one_server_session(
    alias, server_sessions
):
    """pool_size=1: two Django connections, each in the middle of its own
    request, run statements turn by turn on one server session; in request
    mode the second would wait for the first request to end."""
    turns = 10
    token = [threading.Semaphore(1), threading.Semaphore(0)]
    seen: dict[int, list[int]] = {0: [], 1: []}
    sessions: list[int] = []

    def client(me: int) -> None:
        if connections[alias].vendor == "mysql":
            # Django reads @@ variables once per connection object; the
            # classifier cannot prove that harmless and pins for it.
            connections[alias].mysql_server_data  # noqa: B018
            connections[alias].close()
        for _ in range(turns):
            token[me].acquire()
            seen[me].append(session_id(alias))
            Item.objects.using(alias).create(name=f"t{me}")
            sessions.append(server_sessions(alias))
            token[1 - me].release()
        # Django's connection of this thread was never closed until here.

    with transaction_mode(alias, timeout=5):
        # Sessions of earlier tests' pools end asynchronously: start from none.
        deadline = time.monotonic() + 15
        while server_sessions(alias) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server_sessions(alias) == 0
        opened = status(alias).opened  # counters are per process
        threads = [threading.Thread(target=in_thread, args=(lambda m=m: client(m),))
                   for m in (0, 1)]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(seen[0]) == len(seen[1]) == turns
        assert len(set(seen[0]) | set(seen[1])) == 1
        assert max(sessions) == 1
        assert Item.objects.using(alias).count() == 2 * turns
        assert status(alias).opened - opened == 1


@pytest.mark.parametrize("alias", ALIASES)
def test_request_cycle__a_waiting_view_holds_no_server_connection(alias, request_cycle):
    """Two requests at once, pool_size=1: each runs a query, waits, runs
    another; the pool never times out because neither holds the connection
    while waiting."""
    results: list[tuple[int, bytes]] = []

    def one() -> None:
        results.append(request_cycle(f"/pool-mode/wait/{alias}/?sleep=0.3"))

    with (
        transaction_mode(alias, timeout=0.2),
        override_settings(ROOT_URLCONF="tests.pool_mode_urls"),
    ):
        timeouts = status(alias).timeouts  # counters are per process
        threads = [threading.Thread(target=one) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert [code for code, _ in results] == [200, 200, 200], results
        sessions = {json.loads(body)["sessions"][0] for _, body in results}
        assert len(sessions) == 1
        assert status(alias).timeouts == timeouts


# -- no release while something depends on the connection ---------------------
@pytest.mark.parametrize("alias", ALIASES)
def test_atomic__holds_the_connection_and_on_commit_hooks_run(alias):
    ran: list[int] = []
    with transaction_mode(alias):
        with transaction.atomic(using=alias):
            first = session_id(alias)
            assert held(alias) and status(alias).checked_out == 1
            Item.objects.using(alias).create(name="in atomic")
            with transaction.atomic(using=alias):  # a savepoint
                Item.objects.using(alias).create(name="in savepoint")
                assert held(alias)
                assert session_id(alias) == first
            assert held(alias) and session_id(alias) == first
            transaction.on_commit(
                lambda: ran.append(Item.objects.using(alias).count()), using=alias
            )
            assert ran == []
        assert ran == [2]  # after the commit, with a query of its own
        assert not held(alias) and status(alias).checked_out == 0


@pytest.mark.parametrize("alias", ALIASES)
def test_atomic_durable__and_rollback_release_after_the_block(alias):
    with transaction_mode(alias):
        with transaction.atomic(using=alias, durable=True):
            Item.objects.using(alias).create(name="kept")
        assert not held(alias)
        with pytest.raises(ZeroDivisionError):
            with transaction.atomic(using=alias):
                Item.objects.using(alias).create(name="rolled back")
                1 / 0  # noqa: B018
        assert not held(alias)
        assert list(Item.objects.using(alias).values_list("name", flat=True)) == [
            "kept"
        ]


@pytest.mark.parametrize("alias", ALIASES)
def test_set_autocommit_false__holds_until_autocommit_is_back(alias):
    connection = connections[alias]
    with transaction_mode(alias):
        transaction.set_autocommit(False, using=alias)
        try:
            first = session_id(alias)
            Item.objects.using(alias).create(name="manual")
            assert held(alias) and session_id(alias) == first
            transaction.commit(using=alias)
            assert held(alias)
        finally:
            transaction.set_autocommit(True, using=alias)
        assert not held(alias)
        assert connection.get_autocommit()
        assert Item.objects.using(alias).count() == 1


@pytest.mark.parametrize("alias", ALIASES)
def test_open_cursor__holds_the_connection_until_closed(alias):
    connection = connections[alias]
    with transaction_mode(alias) as pins:
        cursor = connection.cursor()
        cursor.execute(SESSION_ID[connection.vendor])
        (first,) = cursor.fetchone()
        assert held(alias)
        cursor.execute(SESSION_ID[connection.vendor])  # the same cursor again
        assert cursor.fetchone() == (first,)
        cursor.close()
        assert not held(alias)
        assert pins() == 0


@pytest.mark.parametrize("alias", ALIASES)
def test_select_for_update__lock_held_for_the_whole_atomic_block(alias):
    """Another session cannot take the row lock until the block commits,
    although the block waits between its statements."""
    item = Item.objects.using(alias).create(name="locked")
    locked = threading.Event()
    finish = threading.Event()

    def holder() -> int:
        with transaction.atomic(using=alias):
            Item.objects.using(alias).select_for_update().get(pk=item.pk)
            locked.set()
            finish.wait(10)
            time.sleep(0.2)
            Item.objects.using(alias).filter(pk=item.pk).update(value=1)
            return session_id(alias)

    monitor = monitor_connection(alias)
    database = connections[alias].settings_dict["NAME"]
    table = (
        f"{database}.testapp_item"
        if connections[alias].vendor == "mysql"
        else ("testapp_item")
    )
    try:
        if connections[alias].vendor == "postgresql":
            monitor.close()
            monitor = _database_monitor(alias)
        with transaction_mode(alias, pool_size=2):
            result: list[int] = []
            thread = threading.Thread(target=lambda: result.append(in_thread(holder)))
            thread.start()
            assert locked.wait(10)
            for _ in range(3):  # the lock stays while the block waits
                time.sleep(0.1)
                with pytest.raises(Exception) as raised:
                    _lock_row_nowait(monitor, alias, table, item.pk)
                assert "lock" in str(raised.value).lower()
            finish.set()
            thread.join(20)
            _lock_row_nowait(monitor, alias, table, item.pk)  # free now
            assert Item.objects.using(alias).get(pk=item.pk).value == 1
    finally:
        finish.set()
        monitor.close()


def _database_monitor(alias: str) -> Any:
    """An unpooled driver connection to the alias's own (test) database."""
    from tests.conftest import driver_module

    conf = connections[alias].settings_dict
    module = driver_module(alias)
    conn = module.connect(
        host=conf["HOST"], port=int(conf["PORT"]), user=conf["USER"],
        password=conf["PASSWORD"], dbname=conf["NAME"],
    )  # fmt: skip
    conn.autocommit = True
    return conn


def _lock_row_nowait(monitor: Any, alias: str, table: str, pk: int) -> None:
    cursor = monitor.cursor()
    try:
        if connections[alias].vendor == "postgresql":
            cursor.execute("BEGIN")
            cursor.execute(
                f"SELECT id FROM {table} WHERE id = %s FOR UPDATE NOWAIT", [pk]
            )
        else:
            cursor.execute("SET SESSION innodb_lock_wait_timeout = 1")
            cursor.execute("START TRANSACTION")
            cursor.execute(f"SELECT id FROM {table} WHERE id = %s FOR UPDATE", [pk])
    finally:
        cursor.execute("ROLLBACK")  # the drivers do not track the BEGIN above
        cursor.close()


# -- pinning -----------------------------------------------------------------
#: cause -> vendor -> (statements that pin, probe, value on a fresh session)
PIN_CASES: dict[str, dict[str, tuple[list[str], str, Any]]] = {
    "set": {
        "postgresql": (
            ["SET search_path TO pg_catalog"],
            "SHOW search_path",
            '"$user", public',
        ),
        "mysql": (
            ["SET SESSION sql_mode = 'ANSI'"],
            "SELECT @@SESSION.sql_mode = 'ANSI'",
            0,
        ),
    },
    "set_config": {
        "postgresql": (
            ["SELECT set_config('app.tenant', 'A', false)"],
            "SELECT coalesce(current_setting('app.tenant', true), '')",
            "",
        ),
    },
    "set_role": {
        "postgresql": (["SET ROLE pg_monitor"], "SELECT current_user", "root"),
    },
    "temp_table": {
        "postgresql": (
            ["CREATE TEMPORARY TABLE pinned_tmp (x int)"],
            "SELECT count(*) FROM pg_tables WHERE tablename = 'pinned_tmp'",
            0,
        ),
        "mysql": (
            ["CREATE TEMPORARY TABLE pinned_tmp (x int)"],
            "SELECT COUNT(*) FROM pinned_tmp",
            DatabaseError,  # no such table
        ),
    },
    "advisory_lock": {
        "postgresql": (
            ["SELECT pg_advisory_lock(4242)"],
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
            " AND objid = 4242 AND pid = pg_backend_pid()",
            0,
        ),
        "mysql": (
            ["SELECT GET_LOCK('djpool_pinned', 0)"],
            "SELECT IS_USED_LOCK('djpool_pinned') IS NULL",
            1,
        ),
    },
    "prepare": {
        "postgresql": (
            ["PREPARE pinned_stmt AS SELECT 1"],
            "SELECT count(*) FROM pg_prepared_statements WHERE name = 'pinned_stmt'",
            0,
        ),
        "mysql": (["PREPARE pinned_stmt FROM 'SELECT 1'"], "SELECT 1", 1),
    },
    "listen": {
        "postgresql": (
            ["LISTEN pinned_channel"],
            "SELECT count(*) FROM pg_listening_channels()",
            0,
        ),
    },
    "user_variable": {
        "mysql": (["SET @pinned = 42"], "SELECT @pinned", None),
    },
    "use": {
        "mysql": (
            ["USE information_schema"],
            "SELECT DATABASE() = 'information_schema'",
            0,
        ),
    },
    "lock_tables": {
        "mysql": (
            ["LOCK TABLES testapp_item READ"],
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE 0",
            0,
        ),
    },
}

PIN_PARAMS = [
    pytest.param(cause, alias, id=f"{cause}-{alias.id}", marks=alias.marks)
    for cause, vendors in PIN_CASES.items()
    for alias in ALIASES
    if {"default": "postgresql", "mysql": "mysql"}[alias.values[0]] in vendors
]


@pytest.mark.parametrize(("cause", "alias"), PIN_PARAMS)
def test_pin__session_state_pins_until_close_then_is_reset(cause, alias, caplog):
    alias = alias.values[0] if hasattr(alias, "values") else alias
    vendor = connections[alias].vendor
    statements, probe, fresh = PIN_CASES[cause][vendor]
    connection = connections[alias]
    caplog.set_level(logging.DEBUG, logger="djpoolapp")
    with transaction_mode(alias, timeout=0.5) as pins:
        first = session_id(alias)
        assert not held(alias)
        with connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
        assert held(alias), "pinned: kept after the cursor closed"
        assert pins() == 1
        assert session_id(alias) == first
        assert held(alias) and pins() == 1  # pinned once
        assert any("Pinned a connection" in r.getMessage() for r in caplog.records)

        # Another request meanwhile waits (pool_size=1): the session is not
        # shared while it carries this state.
        with pytest.raises(DatabaseError):
            in_thread(lambda: session_id(alias))

        connection.close()  # the request ends
        assert status(alias).checked_out == 0
        assert pins() == 1

        def probe_fresh() -> tuple[int, Any]:
            conn = connections[alias]
            try:
                with conn.cursor() as cursor:
                    cursor.execute(probe)
                    (value,) = cursor.fetchone()
            except DatabaseError:
                value = DatabaseError
            return session_id(alias), value

        session, value = in_thread(probe_fresh)
        if connections[alias].vendor == "postgresql":
            assert session == first  # the same session, reset (DISCARD ALL)
        else:
            # MySQL: a changed session is closed at checkin, never reset in
            # place (drivers.MySQLdbDriver.checkin_problem).
            assert session != first
        assert value == fresh


def _pin_params(vendors: tuple[str, ...]) -> list[Any]:
    names = {"default": "postgresql", "mysql": "mysql"}
    return [a for a in ALIASES if names[a.values[0]] in vendors]


def assert_pinned_session(
    alias: str, raw: Any, first: int, pins: Callable[[], int]
) -> None:
    """*raw*, the driver connection user code read, is held, pinned once, and
    the session (*first*) of the request's earlier statement."""
    assert raw is not None and held(alias)
    assert pins() == 1
    cursor = raw.cursor()
    cursor.execute(SESSION_ID[connections[alias].vendor])
    assert cursor.fetchone()[0] == first
    cursor.close()


@pytest.mark.parametrize("alias", ALIASES)
def test_pin__raw_connection_read_by_user_code(alias):
    connection = connections[alias]
    with transaction_mode(alias) as pins:
        assert connection.connection is None  # not connected: as stock Django
        assert pins() == 0
        first = session_id(alias)
        assert not held(alias)
        raw = connection.connection  # released: taken again, and pinned
        assert_pinned_session(alias, raw, first, pins)
        Item.objects.using(alias).count()
        assert connection.connection is raw and held(alias)
        connection.close()
        assert status(alias).checked_out == 0


@pytest.mark.parametrize(
    "how", ["proxy", "shell"], ids=["django.db.connection", "manage.py-shell-c"]
)
def test_pin__raw_connection_read_through_djangos_proxy_or_shell(how):
    """Reads that reach the descriptor through Django's own code on the
    user's behalf: ``from django.db import connection`` (``ConnectionProxy``
    reads the attribute inside ``django.utils.connection``) and code that
    ``manage.py shell -c`` runs (``exec`` with the shell command's module
    globals, file ``<string>``).  Both are user code: after a release the read
    takes a connection again and pins, as ``connections[alias].connection``
    does (before: None, and no pin)."""
    from django.db import connection as proxy

    alias = "default"
    connection = connections[alias]
    with transaction_mode(alias) as pins:
        first = session_id(alias)
        assert not held(alias) and pins() == 0
        if how == "proxy":
            raw = proxy.connection
        else:
            namespace = {"__name__": "django.core.management.commands.shell"}
            namespace["proxy"] = proxy
            exec(compile("raw = proxy.connection", "<string>", "exec"), namespace)
            raw = namespace["raw"]
        assert_pinned_session(alias, raw, first, pins)
        connection.close()
        assert status(alias).checked_out == 0


def test_pin__djangos_own_reads_through_the_proxy_do_not_pin():
    """Django's own code reading the driver connection through the proxy
    (the caller behind ``ConnectionProxy`` is a file of Django's package) does
    not pin, and reads what Django holds: None once released."""
    import os

    import django
    from django.db import connection as proxy

    alias = "default"
    django_file = os.path.join(os.path.dirname(django.__file__), "db", "_djpool_t.py")
    code = compile("raw = proxy.connection", django_file, "exec")
    with transaction_mode(alias) as pins:
        session_id(alias)
        namespace = {"__name__": "django.db._djpool_t", "proxy": proxy}
        exec(code, namespace)
        assert namespace["raw"] is None
        assert pins() == 0 and not held(alias)


# -- values the session keeps from an earlier statement -----------------------
#: The raw INSERT of an item, and the statement that reads its id back.
INSERT_SQL = (
    "INSERT INTO testapp_item (name, value, created) "
    "VALUES ('raw', 0, CURRENT_TIMESTAMP)"
)
LAST_ID = {"postgresql": "SELECT lastval()", "mysql": "SELECT LAST_INSERT_ID()"}
#: A statement that sets such a value on purpose, and its reader.
SETTER = {
    "postgresql": (
        "SELECT nextval(pg_get_serial_sequence('testapp_item', 'id'))",
        "SELECT currval(pg_get_serial_sequence('testapp_item', 'id'))",
    ),
    "mysql": ("SELECT LAST_INSERT_ID(424242)", "SELECT LAST_INSERT_ID()"),
}


def _run(alias: str, sql: str) -> Any:
    with connections[alias].cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchone() if cursor.description else None


def _insert_raw(alias: str) -> int:
    """A raw INSERT in its own cursor block (released after it); the id."""
    _run(alias, INSERT_SQL)
    return int(Item.objects.using(alias).order_by("-id").values_list("id")[0][0])


@pytest.mark.parametrize("alias", ALIASES)
def test_session_value__read_back_on_the_same_session_is_the_requests_own(alias):
    """An id read back in a later statement group (lastval() /
    LAST_INSERT_ID()) after a raw INSERT or an ORM create(): while no other
    request used the session in between, it is the request's own value, as
    in request mode (the released connection is taken back from its
    parking); nothing pins."""
    connection = connections[alias]
    with transaction_mode(alias) as pins:
        _run(alias, INSERT_SQL)
        assert not held(alias)
        (last,) = _run(alias, LAST_ID[connection.vendor])
        assert last == Item.objects.using(alias).get(name="raw").pk
        item = Item.objects.using(alias).create(name="orm")
        (last,) = _run(alias, LAST_ID[connection.vendor])
        assert last == item.pk
        assert pins() == 0 and not held(alias)
        connection.close()


@pytest.mark.parametrize("alias", ALIASES)
def test_session_value__read_after_another_request_used_the_session_raises(alias):
    """Adversarial review, finding 1: request A inserts, its connection goes
    back, request B (another thread, pool of one) inserts on the same
    server session; A's later lastval() / LAST_INSERT_ID() would read B's id.
    It raises SessionValueLost (Django's ProgrammingError) before it runs;
    the request's other statements are unaffected."""
    from djpoolapp import SessionValueLost

    connection = connections[alias]
    with transaction_mode(alias):
        mine = _insert_raw(alias)
        theirs = in_thread(lambda: _insert_raw(alias))
        assert theirs != mine
        with pytest.raises(SessionValueLost, match="another request"):
            _run(alias, LAST_ID[connection.vendor])
        with pytest.raises(DatabaseError):  # Django's class, as documented
            _run(alias, LAST_ID[connection.vendor])
        assert Item.objects.using(alias).filter(pk=mine).exists()
        with transaction.atomic(using=alias):  # one transaction: one session
            _run(alias, INSERT_SQL)
            (last,) = _run(alias, LAST_ID[connection.vendor])
        assert last == Item.objects.using(alias).order_by("-id")[0].pk
        connection.close()
        # A new request starts afresh: nothing of the last one is checked.
        _run(alias, "SELECT 1")
        connection.close()


#: Other roads to a value of an earlier statement (review, round 2).
OTHER_READERS = {"mysql": ["SELECT @@identity", "SELECT @@SESSION.last_insert_id"]}


@pytest.mark.parametrize("alias", ALIASES)
@pytest.mark.parametrize("between", ["nothing", "orm", "select"])
def test_session_value__statements_in_between_do_not_hide_a_lost_id(alias, between):
    """Round 2 of the review: the id read back is judged against the
    statement that may have set it, not the request's previous statement:
    an ORM query or a plain SELECT between the other request's use of the
    session and the read does not let the other request's id through."""
    from djpoolapp import SessionValueLost

    connection = connections[alias]
    with transaction_mode(alias):
        _insert_raw(alias)
        in_thread(lambda: _insert_raw(alias))
        if between == "orm":
            Item.objects.using(alias).count()
        elif between == "select":
            _run(alias, "SELECT 1")
        readers = [LAST_ID[connection.vendor]]
        if connection.vendor == "mysql":
            readers += OTHER_READERS["mysql"]
        for reader in readers:
            with pytest.raises(SessionValueLost):
                _run(alias, reader)
        connection.close()


@pytest.mark.parametrize("alias", _pin_params(("mysql",)))
def test_session_value__mysql_warnings_of_the_previous_statement(alias):
    """SHOW WARNINGS / @@warning_count read what the previous statement did:
    in the same cursor block they are the request's own; in a later statement
    group after another request used the session they raise (they would show
    the other request's warnings, data included)."""
    from djpoolapp import SessionValueLost

    warn = "SELECT CAST('secret' AS SIGNED)"
    with transaction_mode(alias):
        with connections[alias].cursor() as cursor:
            cursor.execute(warn)
            cursor.execute("SHOW WARNINGS")
            assert "secret" in str(cursor.fetchall())
        in_thread(lambda: _run(alias, warn))
        for reader in ("SHOW WARNINGS", "SELECT @@warning_count"):
            with pytest.raises(SessionValueLost):
                _run(alias, reader)
        # Nobody else in between, but the release cleared the warnings (so
        # that no other request would see them): lost as well, not empty.
        _run(alias, warn)
        with pytest.raises(SessionValueLost, match="cleared"):
            _run(alias, "SHOW WARNINGS")
        # FOUND_ROWS() of the request's own previous statement, same session.
        _run(alias, "SELECT 1")
        assert _run(alias, "SELECT FOUND_ROWS()") == (1,)
        connections[alias].close()


#: Three rows, three warnings (a CAST of words in a SELECT).
THREE_ROWS_WITH_WARNINGS = (
    "SELECT CAST(x AS SIGNED) FROM "
    "(SELECT 'a' AS x UNION ALL SELECT 'b' UNION ALL SELECT 'c') AS t"
)
THREE_ROWS = (
    "SELECT x FROM (SELECT 'a' AS x UNION ALL SELECT 'b' UNION ALL SELECT 'c') AS t"
)


@pytest.mark.parametrize("alias", _pin_params(("mysql",)))
def test_session_value__previous_statement_values_overwritten_by_the_pool(alias):
    """FOUND_ROWS() / ROW_COUNT() in the statement group after the previous
    statement's: the request's own value while the pool sent nothing on the
    session in between; SessionValueLost once the pool's own statements
    overwrote it -- the release's clear of the warnings (FOUND_ROWS() became
    1, ROW_COUNT() -1) or the re-checkout's pre-ping (COM_PING: ROW_COUNT()
    0) -- never the pool's value (adversarial review 49; these reads
    compared the session and its epoch only)."""
    from djpoolapp import SessionValueLost

    table = "pool_mode_row_count"
    with transaction_mode(alias):
        _run(alias, THREE_ROWS)
        assert _run(alias, "SELECT FOUND_ROWS()") == (3,)  # nothing in between
        _run(alias, THREE_ROWS_WITH_WARNINGS)  # the release clears them
        with pytest.raises(SessionValueLost, match="overwrote"):
            _run(alias, "SELECT FOUND_ROWS()")
        _run(alias, f"CREATE TABLE {table} (id int primary key)")
        try:
            _run(alias, f"INSERT INTO {table} VALUES (1)")
            _run(alias, f"INSERT IGNORE INTO {table} VALUES (1), (2), (3)")
            with pytest.raises(SessionValueLost, match="overwrote"):
                _run(alias, "SELECT ROW_COUNT()")
            _run(alias, f"UPDATE {table} SET id = id + 10")
            assert _run(alias, "SELECT ROW_COUNT()") == (3,)
        finally:
            _run(alias, f"DROP TABLE {table}")
            connections[alias].close()
    with transaction_mode(alias, ping_after_idle=0):  # a pre-ping per checkout
        _run(alias, f"CREATE TABLE {table} (id int primary key)")
        try:
            _run(alias, f"INSERT INTO {table} VALUES (1), (2), (3)")
            with pytest.raises(SessionValueLost, match="overwrote"):
                _run(alias, "SELECT ROW_COUNT()")
            with connections[alias].cursor() as cursor:  # one group: no ping
                cursor.execute(f"DELETE FROM {table}")
                cursor.execute("SELECT ROW_COUNT()")
                assert cursor.fetchone() == (3,)
        finally:
            _run(alias, f"DROP TABLE {table}")
            connections[alias].close()


@pytest.mark.parametrize("alias", _pin_params(("postgresql", "mysql")))
def test_pin__session_change_sent_by_an_execute_wrapper(alias):
    """A statement an ``execute_wrapper()`` rewrites into a session change
    (tenant routing) pins, as the statement itself would: the rest of the
    request sees the change on the same session, as with stock Django
    (adversarial review 49: on MariaDB only mysqlclient's query() saw the
    SET; the connection was released unpinned, closed at checkin, and the
    next statement ran on a new session without it)."""
    vendor = connections[alias].vendor
    change, read = {
        "postgresql": (
            "SELECT set_config('djpool.tenant', 'acme', false)",
            "SELECT current_setting('djpool.tenant', true)",
        ),
        "mysql": ("SET @djpool_tenant = 'acme'", "SELECT @djpool_tenant"),
    }[vendor]

    def tenant(execute, sql, params, many, context):
        if sql == "SELECT 'route'":
            sql = change
        return execute(sql, params, many, context)

    connection = connections[alias]
    with transaction_mode(alias) as pins:
        first = session_id(alias)
        with connection.execute_wrapper(tenant):
            _run(alias, "SELECT 'route'")
        assert pins() == 1
        assert held(alias)
        assert _run(alias, read) == ("acme",)
        assert session_id(alias) == first
        connection.close()
        assert _run(alias, read) in ((None,), ("",))  # reset / a new session


@pytest.mark.parametrize("alias", _pin_params(("mysql",)))
def test_session_value__last_insert_id_with_an_argument_sets_and_runs(alias):
    """``UPDATE seq SET id = LAST_INSERT_ID(id + 10)`` (the MySQL manual's
    sequence idiom) sets the id and reads nothing: it runs whoever used the
    session before, and pins; the id read back is its own."""
    with transaction_mode(alias) as pins:
        _run(alias, "CREATE TABLE IF NOT EXISTS djpool_seq (id INT NOT NULL)")
        _run(alias, "DELETE FROM djpool_seq")
        _run(alias, "INSERT INTO djpool_seq VALUES (0)")
        in_thread(lambda: _insert_raw(alias))
        _run(alias, "UPDATE djpool_seq SET id = LAST_INSERT_ID(id + 10)")
        assert pins() == 1
        assert _run(alias, "SELECT LAST_INSERT_ID()") == (10,)
        _run(alias, "DROP TABLE djpool_seq")
        connections[alias].close()


@pytest.mark.parametrize("alias", _pin_params(("postgresql",)))
def test_session_value__lost_after_an_iterator_release_raises(alias):
    """INSERT, an iterator() (a server-side cursor) read to its end, then
    lastval(): the release after a server-side cursor resets the whole
    session (its statement is not always classified: review 3), which
    clears lastval(); the read raises SessionValueLost, with the advice,
    instead of the server's "lastval is not yet defined in this session"."""
    from djpoolapp import SessionValueLost

    Item.objects.using(alias).bulk_create([Item(name=str(n)) for n in range(3)])
    with transaction_mode(alias) as pins:
        _insert_raw(alias)
        assert len(list(Item.objects.using(alias).iterator(chunk_size=2))) == 4
        assert not held(alias)
        with pytest.raises(SessionValueLost, match="RETURNING"):
            _run(alias, "SELECT lastval()")
        assert pins() == 0
        connections[alias].close()


@pytest.mark.parametrize("alias", _pin_params(("postgresql",)))
def test_session_value__operators_with_an_ampersand_do_not_pin(alias):
    """Round 2, finding 6: ``&&``, ``&`` and ``?&`` (ArrayField, ranges, bit
    and, JSONField has_keys) no longer pin."""
    with transaction_mode(alias) as pins:
        _run(
            alias,
            "SELECT ARRAY[1] && ARRAY[1], 5 & 1, '{\"a\": 1}'::jsonb ?& array['a']",
        )
        assert pins() == 0 and not held(alias)


def _setter_pins(alias: str, setter: str, reader: str, other: str) -> Any:
    """In a transaction-mode pool of one connection: *setter* pins, so a
    request on another thread (running *other*) waits; *reader* then reads
    the setter's value, and the end of the request hands the connection to
    the waiter.  Returns (the setter's value, the waiter's row)."""
    connection = connections[alias]
    with transaction_mode(alias, timeout=10) as pins:
        (value,) = _run(alias, setter)
        assert pins() == 1 and held(alias)
        rows: list[Any] = []
        waiting = threading.Thread(
            target=in_thread, args=(lambda: rows.append(_run(alias, other)),)
        )
        waiting.start()
        time.sleep(0.2)
        assert status(alias).waiting == 1  # the other request waits
        (read,) = _run(alias, reader)
        assert read == value
        connection.close()  # the end of the request: the waiter gets it
        waiting.join(10)
        assert not waiting.is_alive()
        assert status(alias).checked_out == 0
    return value, rows[0]


@pytest.mark.parametrize("alias", ALIASES)
def test_session_value__statement_that_sets_one_on_purpose_pins(alias):
    """nextval() / LAST_INSERT_ID(expr) exist for a later statement to read:
    they pin, so the reader gets the request's value even though another
    request wants a connection meanwhile (it waits, then gets it)."""
    setter, reader = SETTER[connections[alias].vendor]
    _setter_pins(alias, setter, reader, "SELECT 1")


@contextlib.contextmanager
def _mariadb_sequence(alias: str) -> Iterator[None]:
    """``djpool_seq`` on *alias* for the block (MariaDB only: skips on
    MySQL), dropped after; the Django connection is closed at both ends."""
    connection = connections[alias]
    if not connection.mysql_is_mariadb:
        pytest.skip("MariaDB's sequences")
    _run(alias, "CREATE SEQUENCE IF NOT EXISTS djpool_seq")
    connection.close()
    try:
        yield
    finally:
        _run(alias, "DROP SEQUENCE IF EXISTS djpool_seq")
        connection.close()


#: MariaDB's sequences: a setter and the reader of its value in this session.
MARIADB_SEQUENCE = [
    ("SELECT NEXTVAL(djpool_seq)", "SELECT LASTVAL(djpool_seq)"),
    ("SELECT NEXT VALUE FOR djpool_seq", "SELECT PREVIOUS VALUE FOR djpool_seq"),
    ("SELECT NEXTVAL(djpool_seq)", "SELECT PREVIOUS VALUE FOR djpool_seq"),
    (
        "SELECT NEXT/* x */VALUE FOR djpool_seq",
        "SELECT PREVIOUS/**/VALUE FOR djpool_seq",
    ),
]


@pytest.mark.parametrize("alias", _pin_params(("mysql",)))
@pytest.mark.parametrize(
    "setter, reader",
    MARIADB_SEQUENCE,
    ids=["nextval", "next-value-for", "mixed", "comments"],
)
def test_session_value__mariadb_sequence_value_pins(alias, setter, reader):
    """An adversarial review: MariaDB's ``NEXTVAL(seq)`` / ``NEXT VALUE FOR
    seq`` were not seen as setting a value for a later statement, so
    ``LASTVAL(seq)`` / ``PREVIOUS VALUE FOR seq`` in a later statement group
    read the value another request drew on the same session meanwhile
    (silently; stock Django reads its own).  They pin, as ``nextval()`` does
    on PostgreSQL: the other request (drawing from the sequence too) waits,
    the reader gets its own value."""
    with _mariadb_sequence(alias):
        value, drawn = _setter_pins(alias, setter, reader, setter)
        assert drawn[0] != value


@pytest.mark.parametrize("alias", _pin_params(("mysql",)))
def test_session_value__mariadb_sequence_draw_does_not_hide_a_lost_id(alias):
    """Second review of the MariaDB sequence change: a draw from a sequence
    was taken as setting LAST_INSERT_ID() too (one marker for both), so
    after another request inserted on the session, ``NEXTVAL(seq)`` made the
    lost ``LAST_INSERT_ID()`` read as the request's own (silently B's id).
    On MariaDB they are separate values: the read still raises."""
    from djpoolapp import SessionValueLost

    with _mariadb_sequence(alias), transaction_mode(alias):
        _insert_raw(alias)
        in_thread(lambda: _insert_raw(alias))
        _run(alias, "SELECT NEXTVAL(djpool_seq)")  # pins, draws
        with pytest.raises(SessionValueLost):
            _run(alias, "SELECT LAST_INSERT_ID()")
        connections[alias].close()


@pytest.mark.parametrize("alias", _pin_params(("mysql",)))
def test_session_value__mariadb_sequence_default_draw_lost_raises(alias):
    """Second review: an INSERT whose column default draws from a sequence
    (``DEFAULT NEXT VALUE FOR seq``), another request drawing from it on the
    same session, then an INSERT into an unrelated table: ``PREVIOUS VALUE
    FOR seq`` read the other request's value silently.  An INSERT takes
    over as the sequence value's source only when no earlier possible source
    on another epoch is recorded: the read raises."""
    from djpoolapp import SessionValueLost

    connection = connections[alias]
    with _mariadb_sequence(alias):
        _run(
            alias,
            "CREATE TABLE djpool_doc (id bigint DEFAULT NEXT VALUE FOR djpool_seq "
            "PRIMARY KEY, who varchar(5))",
        )
        connection.close()
        try:
            with transaction_mode(alias):
                _run(alias, "INSERT INTO djpool_doc (who) VALUES ('A')")
                in_thread(lambda: _run(alias, "SELECT NEXTVAL(djpool_seq)"))
                _insert_raw(alias)  # another table: draws from no sequence
                with pytest.raises(SessionValueLost):
                    _run(alias, "SELECT PREVIOUS VALUE FOR djpool_seq")
                connection.close()
                # Without another request in between, the request's own value.
                _run(alias, "INSERT INTO djpool_doc (who) VALUES ('A2')")
                (mine,) = _run(alias, "SELECT MAX(id) FROM djpool_doc")
                assert _run(alias, "SELECT PREVIOUS VALUE FOR djpool_seq") == (mine,)
                connection.close()
        finally:
            _run(alias, "DROP TABLE IF EXISTS djpool_doc")
            connection.close()


#: A session change made through a raw handle, and how to read it back.
RAW_CHANGE = {
    "postgresql": ("SET application_name = 'raw_handle'", "SHOW application_name"),
    "mysql": ("SET @raw_handle = 'raw_handle'", "SELECT @raw_handle"),
}


@pytest.mark.parametrize("alias", ALIASES)
def test_pin__driver_connection_read_through_a_cursor(alias):
    """The other road to the driver connection: Django's cursor hands
    ``connection`` to the driver cursor.  Read by user code it pins, so a
    session change made through it after the cursor closed is still there at
    the request's next statement (as in request mode), and reset after."""
    connection = connections[alias]
    change, read = RAW_CHANGE[connection.vendor]
    with transaction_mode(alias) as pins:
        with connection.cursor() as cursor:  # attributes other than
            cursor.execute(SESSION_ID[connection.vendor])  # connection: no pin
            first = cursor.fetchone()[0]
        assert pins() == 0 and not held(alias)
        with connection.cursor() as cursor:
            raw = cursor.connection
        assert pins() == 1 and held(alias)
        raw_cursor = raw.cursor()
        raw_cursor.execute(change)
        raw_cursor.close()
        Item.objects.using(alias).count()
        with connection.cursor() as cursor:
            cursor.execute(SESSION_ID[connection.vendor])
            assert cursor.fetchone()[0] == first
            cursor.execute(read)
            assert cursor.fetchone()[0] == "raw_handle"
        assert held(alias)
        connection.close()  # the end of the request: reset, returned
        assert status(alias).checked_out == 0
        with connection.cursor() as cursor:
            cursor.execute(read)
            assert cursor.fetchone()[0] != "raw_handle"
        assert pins() == 1
        connection.close()


@pytest.mark.parametrize("alias", _pin_params(("postgresql",)))
def test_iterator__server_side_cursor_holds_while_open_without_pinning(alias):
    """PostgreSQL: iterator() reads through a server-side cursor; it holds
    the connection while open, and once exhausted (cursor closed) the
    connection goes back, with no server-side cursor left on it."""
    Item.objects.using(alias).bulk_create([Item(name=str(n)) for n in range(5)])
    with transaction_mode(alias) as pins:
        names = Item.objects.using(alias).values_list("name", flat=True)
        iterator = names.iterator(chunk_size=2)
        assert next(iterator) == "0"
        assert held(alias)
        assert list(iterator) == ["1", "2", "3", "4"]
        assert not held(alias) and pins() == 0
        assert status(alias).checked_out == 0
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_cursors")
            assert cursor.fetchone() == (0,)


@pytest.mark.parametrize("alias", _pin_params(("postgresql",)))
def test_iterator__abandoned_server_side_cursor_is_closed_at_checkin(alias):
    """An iterator dropped half-read: its cursor is closed (by the generator's
    end, or the checkin's session reset); the next checkout sees none."""
    Item.objects.using(alias).bulk_create([Item(name=str(n)) for n in range(5)])
    with transaction_mode(alias) as pins:
        iterator = Item.objects.using(alias).iterator(chunk_size=2)
        assert next(iterator).name == "0"
        assert held(alias)
        del iterator
        assert not held(alias) and pins() == 0
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_cursors")
            assert cursor.fetchone() == (0,)


@pytest.mark.parametrize("alias", _pin_params(("mysql",)))
def test_iterator__mysql_holds_while_open_without_pinning(alias):
    """MySQL: Django reads iterator() results client-side; an open iterator
    holds its cursor (and so the connection) until it is exhausted."""
    Item.objects.using(alias).bulk_create([Item(name=str(n)) for n in range(5)])
    with transaction_mode(alias) as pins:
        iterator = (
            Item.objects.using(alias)
            .values_list("name", flat=True)
            .iterator(chunk_size=2)
        )
        assert next(iterator) == "0"
        assert held(alias)
        assert list(iterator) == ["1", "2", "3", "4"]
        assert not held(alias) and pins() == 0


@pytest.mark.parametrize("alias", ALIASES)
def test_pin__never_reaches_another_request(alias, request_cycle):
    """Through the request cycle: a view sets session state and waits while
    another request runs; the other request never sees the state, and the
    next one on the same session does not either."""
    with (
        transaction_mode(alias, pool_size=2) as pins,
        override_settings(ROOT_URLCONF="tests.pool_mode_urls"),
    ):
        results: dict[str, Any] = {}

        def pinning() -> None:
            results["pinning"] = request_cycle(f"/pool-mode/pin/{alias}/?sleep=0.4")

        thread = threading.Thread(target=pinning)
        thread.start()
        time.sleep(0.15)
        during = [request_cycle(f"/pool-mode/probe/{alias}/") for _ in range(5)]
        thread.join(20)
        after = [request_cycle(f"/pool-mode/probe/{alias}/") for _ in range(5)]
        code, body = results["pinning"]
        assert code == 200, body
        pinned = json.loads(body)
        assert pinned["value"] == "pinned"
        for code, body in during + after:
            assert code == 200, body
            assert json.loads(body)["value"] in (None, "")
        sessions = {json.loads(body)["session"] for _, body in during + after}
        if connections[alias].vendor == "postgresql":  # reset and reused
            assert pinned["session"] in {json.loads(b)["session"] for _, b in after}
        else:  # MySQL: the changed session was closed at the end of its request
            assert pinned["session"] not in {json.loads(b)["session"] for _, b in after}
        assert pinned["session"] not in {json.loads(b)["session"] for _, b in during}
        assert len(sessions) <= 2
        assert pins() == 1


# -- works as in request mode ------------------------------------------------
@pytest.mark.parametrize("alias", ALIASES)
def test_queries_log_and_health_checks__as_in_request_mode(alias):
    connection = connections[alias]
    with transaction_mode(alias):
        previous = connection.settings_dict.get("CONN_HEALTH_CHECKS", False)
        connection.settings_dict["CONN_HEALTH_CHECKS"] = True
        connection.force_debug_cursor = True
        try:
            for _ in range(3):
                connection.close_if_unusable_or_obsolete()  # as at request start
                assert Item.objects.using(alias).count() == 0
            # (plus, on MySQL, Django's own set-up statements of a connection)
            counts = [q for q in connection.queries if "COUNT(*)" in q["sql"]]
            assert len(counts) == 3
            assert not held(alias)
        finally:
            connection.force_debug_cursor = False
            connection.settings_dict["CONN_HEALTH_CHECKS"] = previous


class _RunsInsideATestCase(TestCase):
    """Django's TestCase wraps every test in a transaction: in transaction
    mode the connection is held (not pinned) for the whole test."""

    __test__ = False  # run by test_django_testcase__works, not collected
    databases = {"default", "mysql"}
    alias = "default"

    def test_create_and_read(self) -> None:
        Item.objects.using(self.alias).create(name="in test")
        self.assertEqual(Item.objects.using(self.alias).count(), 1)
        self.assertTrue(connections[self.alias].in_atomic_block)
        self.assertTrue(held(self.alias))
        first = session_id(self.alias)
        with transaction.atomic(using=self.alias):
            self.assertEqual(session_id(self.alias), first)
        self.assertFalse(connections[self.alias]._djpool_pin)


@pytest.mark.parametrize("alias", ALIASES)
def test_django_testcase__works(alias):
    with transaction_mode(alias, pool_size=2):
        case = type("Case", (_RunsInsideATestCase,), {"alias": alias,
                    "databases": {alias}})  # fmt: skip
        suite = unittest.defaultTestLoader.loadTestsFromTestCase(case)
        result = unittest.TestResult()
        suite.run(result)
        assert result.wasSuccessful(), result.errors + result.failures
        assert result.testsRun == 1
        assert Item.objects.using(alias).count() == 0  # rolled back
        assert not held(alias)


# -- capacity (benchmarks/capacity.py, CI-sized) ---------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    "database",
    [
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ],
)
def test_capacity__waiting_views_share_a_small_pool(database, monkeypatch):
    """16 threads, a view doing query, sleep 0.1 s, query, pool_size=2: in
    transaction mode no request fails and at most 2 server sessions serve
    them all; request mode, in the same run, cannot pass 2 / 0.1 s = 20 req/s."""
    from django.conf import settings

    from benchmarks import capacity

    monkeypatch.setenv("DJPOOL_BENCH_POSTGRES_URL", settings.POSTGRES_URL)
    monkeypatch.setenv("DJPOOL_BENCH_MYSQL_URL", settings.MYSQL_URL)
    options = {"threads": 16, "seconds": 3, "sleep": 0.1, "pool_size": 2,
               "timeout": 2}  # fmt: skip
    transaction_run = capacity.run(database, "transaction", **options)
    request_run = capacity.run(database, "request", **options)
    assert transaction_run["errors"] == 0, transaction_run
    assert transaction_run["peak_server_sessions"] <= 2, transaction_run
    # Every server session that answered is one of the pool's: its two, or
    # a replacement the pool counted (invalidated or recycled; CI saw
    # seven sessions once on a loaded machine, with no request failing).
    replaced = transaction_run["invalidated"] + transaction_run["recycled"]
    assert transaction_run["distinct_sessions"] <= 2 + replaced, transaction_run
    assert transaction_run["opened"] <= 2 + replaced, transaction_run
    # Holding a connection through each 0.1 s sleep, 2 connections serve at
    # most 2 / 0.1 = 20 requests a second, however fast the machine: request
    # mode stays under that bound, transaction mode (which shares the
    # connections during the sleeps) must go beyond it.  No other figure is
    # asserted (ideal: 160 req/s; a loaded machine gets far less).
    bound = options["pool_size"] / options["sleep"]
    assert request_run["req_per_s"] <= bound * 1.1, request_run
    assert transaction_run["req_per_s"] > bound, transaction_run
