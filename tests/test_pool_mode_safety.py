"""``pool_mode`` safety (issue 13, "Safety"), proven on the server side.

- ``select_for_update()`` inside ``atomic()`` holds its row lock until the
  commit, however long the block waits between its statements: another
  session's ``SELECT ... FOR UPDATE NOWAIT`` fails until then (an unpooled
  session, and requests of other threads through the same pool, which would
  *succeed* if they were handed the holder's session).
- No statement of one request ever runs on a server session while another
  request's transaction is open on it: many threads (more than the pool
  holds) run transactions with several statements and waits, and autocommit
  statements, and every statement asks the server which session and which
  transaction it ran in.

Both modes (``tests/modes.py``), PostgreSQL and MariaDB (``ALIASES``); run
with ``DJPOOL_TEST_DRIVER=psycopg2`` for Django's psycopg2 path.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.db import Error as DatabaseErrors
from django.db import (
    InterfaceError,
    OperationalError,
    connections,
    transaction,
)
from django.test import override_settings

import djpoolapp
from tests import modes
from tests.conftest import ALIASES, driver_module
from tests.modes import pool_mode  # noqa: F401  (every test, both modes)
from tests.testapp.models import Item

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

#: The session, the open transaction (None outside one) and the server's
#: clock, as the server sees them at this statement.  PostgreSQL: the
#: transaction's id (assigned by the INSERT that starts each block).
PROBE = {
    "postgresql": "SELECT pg_backend_pid(), txid_current_if_assigned()::text, "
    "clock_timestamp()",
    # MariaDB has no function for the transaction's id (information_schema.
    # innodb_trx is a cache refreshed at most every 0.1 s): whether one is
    # open, tagged with the session.
    "mysql": "SELECT CONNECTION_ID(), IF(@@in_transaction, "
    "CONCAT('open on ', CONNECTION_ID()), NULL), SYSDATE(6)",
}
INSERT = (
    "INSERT INTO testapp_item (name, value, created) VALUES (%s, 0, CURRENT_TIMESTAMP)"
)


def direct_connection(alias: str) -> Any:
    """An unpooled driver connection to the alias's own (test) database, in
    autocommit, that waits at most 1 s for a lock."""
    conf = connections[alias].settings_dict
    module = driver_module(alias)
    kwargs = {"host": conf["HOST"], "port": int(conf["PORT"]), "user": conf["USER"],
              "password": conf["PASSWORD"]}  # fmt: skip
    if connections[alias].vendor == "postgresql":
        conn = module.connect(dbname=conf["NAME"], **kwargs)
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("SET lock_timeout = '1s'")
    else:
        conn = module.connect(database=conf["NAME"], **kwargs)
        conn.autocommit(True)
        cursor = conn.cursor()
        cursor.execute("SET SESSION innodb_lock_wait_timeout = 1")
        cursor.close()
    return conn


def is_lock_error(alias: str, error: BaseException) -> bool:
    """*error* (driver's or Django's) says a row lock is held by another."""
    cause = error.__cause__ or error
    if connections[alias].vendor == "postgresql":
        code = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
        return code == "55P03"  # lock_not_available (NOWAIT, lock_timeout)
    return bool(cause.args) and cause.args[0] in (1205, 3572)  # wait timeout/NOWAIT


def try_lock_directly(conn: Any, alias: str, pk: int) -> BaseException | None:
    """``SELECT ... FOR UPDATE NOWAIT`` on the row from the unpooled *conn*,
    rolled back at once; the error, or None if it got the lock."""
    cursor = conn.cursor()
    try:
        cursor.execute("BEGIN")
        cursor.execute("SELECT id FROM testapp_item WHERE id = %s FOR UPDATE NOWAIT",
                       [pk])  # fmt: skip
        return None
    except driver_module(alias).Error as error:
        return error
    finally:
        cursor.execute("ROLLBACK")
        cursor.close()


def transaction_of_session(conn: Any, alias: str, session: int) -> Any:
    """What the server lists for *session*: PostgreSQL ``(state,
    backend_xid)``, MySQL ``(trx_id, trx_rows_locked)``, or None."""
    cursor = conn.cursor()
    try:
        if connections[alias].vendor == "postgresql":
            cursor.execute(
                "SELECT state, backend_xid::text FROM pg_stat_activity "
                "WHERE pid = %s", [session])  # fmt: skip
        else:
            cursor.execute(
                "SELECT CAST(trx_id AS CHAR), trx_rows_locked FROM "
                "information_schema.innodb_trx WHERE trx_mysql_thread_id = %s",
                [session],
            )
        return cursor.fetchone()
    finally:
        cursor.close()


def probe(alias: str) -> tuple[int, str | None, Any]:
    """``(session, transaction, server clock)`` of this statement."""
    with connections[alias].cursor() as cursor:
        cursor.execute(PROBE[connections[alias].vendor])
        session, trx, clock = cursor.fetchone()
    return int(session), trx, clock


def run_threads(targets: list[Callable[[], None]], timeout: float = 120) -> None:
    """Run each target in its own thread (its own Django connections, closed
    after); re-raise the first error."""
    errors: list[BaseException] = []

    def run(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as error:  # re-raised below
            errors.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "threads hung"
    if errors:
        raise errors[0]


# -- select_for_update ---------------------------------------------------------
@pytest.mark.parametrize("alias", ALIASES)
def test_select_for_update__row_lock_held_until_commit_despite_waits(alias):
    """A request locks a row with ``select_for_update()`` and then runs more
    statements with waits between them.  Until it commits, an unpooled
    session and the requests of four other threads sharing its pool
    (``pool_size=2``) all fail ``FOR UPDATE NOWAIT`` on that row; the server
    lists the holder's transaction open all along; right after the commit
    the row is free and the holder's write is there."""
    item = Item.objects.using(alias).create(name="locked")
    other = Item.objects.using(alias).create(name="free")
    locked = threading.Event()
    done = threading.Event()
    holder: dict[str, Any] = {}
    options = {"pool_size": 2, "max_overflow": 0, "timeout": 20}

    def hold() -> None:
        with transaction.atomic(using=alias):
            Item.objects.using(alias).select_for_update().get(pk=item.pk)
            holder["probe"] = probe(alias)
            locked.set()
            for step in range(4):  # statements with waits between them
                time.sleep(0.25)
                Item.objects.using(alias).filter(pk=item.pk).update(value=step + 1)
                assert probe(alias)[:2] == holder["probe"][:2]
            holder["before_commit"] = time.monotonic()
        holder["committed"] = time.monotonic()
        done.set()

    contended: list[tuple[float, bool]] = []  # (when, got the lock)

    def contend() -> None:
        assert locked.wait(20)
        while not done.is_set():
            try:
                with transaction.atomic(using=alias):
                    Item.objects.using(alias).select_for_update(nowait=True).get(
                        pk=item.pk
                    )
                    # another row, no waiting: this session works
                    Item.objects.using(alias).filter(pk=other.pk).update(value=1)
                contended.append((time.monotonic(), True))
            except OperationalError as error:
                assert is_lock_error(alias, error), error
                contended.append((time.monotonic(), False))
            connections[alias].close()  # the end of this "request"
            time.sleep(0.02)

    monitor = direct_connection(alias)
    monitored: list[tuple[Any, BaseException | None]] = []

    def watch() -> None:
        assert locked.wait(20)
        # MariaDB serves information_schema.INNODB_TRX from a cache that a
        # read refreshes only when it is 100 ms old or more (InnoDB's
        # TRX_I_S_CACHE_MIN_REFRESH_TIME): a read just after the lock may
        # show the transactions of 100 ms earlier (seen once under load).
        time.sleep(0.15)
        session = holder["probe"][0]
        while not done.is_set():
            listed = transaction_of_session(monitor, alias, session)
            error = try_lock_directly(monitor, alias, item.pk)
            if not done.is_set() and "before_commit" not in holder:
                monitored.append((listed, error))
            time.sleep(0.05)

    try:
        with override_settings(DJPOOL_OPTIONS={"aliases": {alias: options}}):
            run_threads([hold, watch] + [contend] * 4)
            assert try_lock_directly(monitor, alias, item.pk) is None  # free now
    finally:
        monitor.close()
    assert Item.objects.using(alias).get(pk=item.pk).value == 4
    assert len(monitored) >= 3, monitored
    for listed, error in monitored:
        assert error is not None and is_lock_error(alias, error), (listed, error)
        if connections[alias].vendor == "postgresql":
            assert listed[0].startswith("idle in transaction") or listed[0] == "active"
            assert listed[1] is not None  # the transaction the lock belongs to
        else:
            assert listed is not None and listed[1] >= 1  # rows locked
    during = [got for when, got in contended if when < holder["before_commit"]]
    assert len(during) >= 4 and not any(during), contended  # nobody got it


# -- no statement of one request inside another request's transaction ---------
@dataclass(frozen=True)
class Seen:
    """One statement, as the server saw it."""

    thread: int
    block: str | None  # the transaction block (None: autocommit)
    session: int
    trx: str | None
    clock: Any


@pytest.mark.parametrize("alias", ALIASES)
def test_many_threads__no_statement_runs_inside_another_requests_transaction(
    alias, server_sessions
):
    """12 threads share ``pool_size=3``: eight run "requests" of transaction
    blocks (``atomic()`` with a savepoint, or ``set_autocommit(False)`` ...
    ``commit()``), each block several statements with waits between them,
    one block in three rolled back; four run autocommit statements with
    waits.  Every statement reports ``(session, transaction, server clock)``.

    - each block ran on one session in one server transaction, which no
      statement of another block or thread ever reports (PostgreSQL's
      transaction ids; MariaDB shows only whether one is open);
    - autocommit statements report no transaction;
    - on each session, no statement of anybody else falls between the first
      and last statement of a block;
    - every committed row is in the table, no rolled-back row is;
    - the server never had more sessions than the pool allows, and sessions
      served several threads."""
    seen: list[Seen] = []
    seen_lock = threading.Lock()
    committed: set[str] = set()
    rolled_back: set[str] = set()
    sessions_seen: list[int] = []

    def record(thread: int, block: str | None) -> Seen:
        entry = Seen(thread, block, *probe(alias))
        with seen_lock:
            seen.append(entry)
        return entry

    def insert(name: str) -> None:
        with connections[alias].cursor() as cursor:
            cursor.execute(INSERT, [name])

    def transactions(me: int) -> None:
        for request in range(3):
            for b in range(2):
                block = f"t{me}-r{request}-b{b}"
                rollback = (me + request + b) % 3 == 0
                names = [f"{block}-{k}" for k in range(3)]
                if (me + b) % 2:
                    try:
                        with transaction.atomic(using=alias):
                            insert(names[0])
                            record(me, block)
                            time.sleep(0.01 * (me % 3 + 1))
                            with transaction.atomic(using=alias):  # savepoint
                                insert(names[1])
                                record(me, block)
                            time.sleep(0.01)
                            insert(names[2])
                            record(me, block)
                            if rollback:
                                raise _RollBack
                    except _RollBack:
                        pass
                else:
                    transaction.set_autocommit(False, using=alias)
                    try:
                        for name in names:
                            insert(name)
                            record(me, block)
                            time.sleep(0.01)
                        if rollback:
                            transaction.rollback(using=alias)
                        else:
                            transaction.commit(using=alias)
                    finally:
                        transaction.set_autocommit(True, using=alias)
                with seen_lock:
                    (rolled_back if rollback else committed).update(names)
                time.sleep(0.01)  # between blocks: nothing open
            connections[alias].close()  # the end of this "request"

    def autocommits(me: int) -> None:
        for request in range(3):
            for k in range(4):
                name = f"a{me}-r{request}-{k}"
                insert(name)
                with seen_lock:
                    committed.add(name)
                record(me, None)
                time.sleep(0.015)
            connections[alias].close()

    def count_sessions() -> None:
        while not finished.is_set():
            sessions_seen.append(server_sessions(alias))
            time.sleep(0.05)

    finished = threading.Event()
    options = {"pool_size": 3, "max_overflow": 0, "timeout": 60}
    with override_settings(DJPOOL_OPTIONS={"aliases": {alias: options}}):
        counter = threading.Thread(target=count_sessions)
        counter.start()
        try:
            run_threads(
                [lambda m=m: transactions(m) for m in range(8)]
                + [lambda m=m: autocommits(m) for m in range(8, 12)]
            )
        finally:
            finished.set()
            counter.join(10)

    blocks: dict[str, list[Seen]] = defaultdict(list)
    owners: dict[str, set[tuple[int, str | None]]] = defaultdict(set)
    for entry in seen:
        if entry.block is not None:
            blocks[entry.block].append(entry)
        if entry.trx is not None:
            owners[entry.trx].add((entry.thread, entry.block))
    assert len(blocks) == 8 * 3 * 2
    for entries in blocks.values():
        assert len(entries) == 3
        assert len({(e.session, e.trx) for e in entries}) == 1, entries
        assert entries[0].trx is not None, entries
    if connections[alias].vendor == "postgresql":  # transaction ids are unique
        shared = {trx: who for trx, who in owners.items() if len(who) > 1}
        assert not shared, f"statements of others inside a transaction: {shared}"
    autocommit = [e for e in seen if e.block is None]
    assert len(autocommit) == 4 * 3 * 4
    assert all(e.trx is None for e in autocommit), [e for e in autocommit if e.trx]
    for block, entries in blocks.items():
        session = entries[0].session
        first = min(e.clock for e in entries)
        last = max(e.clock for e in entries)
        inside = [e for e in seen if e.session == session and e.block != block
                  and first <= e.clock <= last]  # fmt: skip
        assert not inside, (block, entries, inside)

    assert djpoolapp.pool_status(alias)[alias].checked_out == 0
    names = set(Item.objects.using(alias).values_list("name", flat=True))
    assert committed <= names, committed - names
    assert not rolled_back & names, rolled_back & names
    assert len(committed) == 4 * 3 * 4 + 3 * sum(map(_committed_block, blocks))
    sessions = {e.session for e in seen}
    assert len(sessions) <= 3
    assert sessions_seen and max(sessions_seen) <= 3, sessions_seen
    threads_per_session = {s: {e.thread for e in seen if e.session == s}
                           for s in sessions}  # fmt: skip
    assert max(len(t) for t in threads_per_session.values()) > 1


def _committed_block(block: str) -> bool:
    """Whether the test above commits *block* (``t<me>-r<request>-b<b>``)."""
    me, request, b = (int(part[1:]) for part in block.split("-"))
    return (me + request + b) % 3 != 0


class _RollBack(Exception):
    """Ends an ``atomic()`` block with a rollback."""


# -- a cursor closed in another thread ------------------------------------------
@pytest.mark.parametrize("alias", ALIASES)
def test_cursor_closed_by_another_thread__never_releases_the_owners_connection(
    alias,
):
    """A request keeps a cursor open (a cache, an iterator parked in a
    closure); another thread closes it, as tests/faults/test_leaks.py's
    abandoned cursors are.  That close neither raises nor checks in the
    connection its owner still uses: the owner's next statement runs on the
    same session, and the owner's own cursor close releases it (transaction
    mode) as usual."""
    connection = connections[alias]
    with override_settings(DJPOOL_OPTIONS={"aliases": {alias: {"pool_size": 1}}}):
        cursor = connection.cursor()
        cursor.execute(PROBE[connection.vendor])
        session = int(cursor.fetchone()[0])
        errors: list[BaseException] = []

        def close_elsewhere() -> None:
            try:
                cursor.close()
            except BaseException as error:  # reported below
                errors.append(error)

        thread = threading.Thread(target=close_elsewhere)
        thread.start()
        thread.join(10)
        assert errors == []
        assert connection.__dict__.get("connection") is not None  # still held
        assert djpoolapp.pool_status(alias)[alias].checked_out == 1
        with connection.cursor() as again:
            again.execute(PROBE[connection.vendor])
            assert int(again.fetchone()[0]) == session
        held = connection.__dict__.get("connection") is not None
        assert held == (modes.current(alias) == "request")
        connection.close()
        assert djpoolapp.pool_status(alias)[alias].checked_out == 0


# -- an abandoned iterator finalised by the garbage collector ---------------------
class _Finaliser:
    """Garbage whose finaliser runs first in its collection (created before
    the iterator) and waits for *proceed*: the collector's thread stops
    between clearing the weak references and finalising the iterator."""

    def __init__(self, started: threading.Event, proceed: threading.Event) -> None:
        self.started, self.proceed, self.cycle = started, proceed, self

    def __del__(self) -> None:
        self.started.set()
        self.proceed.wait(30)


@pytest.mark.parametrize("alias", ALIASES)
@pytest.mark.parametrize("when", ["while-held", "after-close", "during-close"])
def test_abandoned_iterator_finalised_elsewhere__never_reaches_the_next_holder(
    alias, when
):
    """An ``iterator()`` abandoned in a reference cycle (the frames of a
    cancelled ASGI view: a client went away mid-stream) is finalised by the
    garbage collector in another thread, which closes its cursor: while its
    request still holds the connection (``while-held``), after the request
    closed it (``after-close``), or in a collection that started before the
    request closed it and finalises the iterator after (``during-close``:
    the collector clears weak references before it runs finalisers, so the
    checkin cannot see that cursor).

    Whatever the order, nothing of the old cursor reaches the session's next
    holder, here another request inside a transaction (on PostgreSQL a
    ``CLOSE`` of a cursor it does not have would abort it), and the cursor
    ends closed (no ``ResourceWarning`` from the driver when it is freed)."""
    import gc
    import warnings

    connection = connections[alias]
    Item.objects.using(alias).bulk_create([Item(name=str(n)) for n in range(3)])
    connection.close()
    # One session: the other request is handed the iterator's.
    options = {"aliases": {alias: {"pool_size": 1, "max_overflow": 0}}}
    started, proceed = threading.Event(), threading.Event()
    began, done = threading.Event(), threading.Event()
    outcome: list[Any] = []

    def other_request() -> None:
        with transaction.atomic(using=alias):
            Item.objects.using(alias).create(name="other")
            began.set()
            assert done.wait(30)
            # Still a healthy transaction: its statements succeed.
            outcome.append(Item.objects.using(alias).filter(name="other").count())

    gc.collect()
    gc.disable()  # the collections below are the only ones
    try:
        with (
            override_settings(DJPOOL_OPTIONS=options),
            warnings.catch_warnings(record=True) as caught,
        ):
            warnings.simplefilter("always", ResourceWarning)
            if when == "during-close":
                _Finaliser(started, proceed)  # garbage at once (a cycle)
            else:
                started.set()
                proceed.set()
            rows = Item.objects.using(alias).iterator(chunk_size=1)
            next(rows)
            trap: list[Any] = [rows]
            trap.append(trap)
            del rows, trap  # garbage now, reclaimable only by the collector

            if when == "after-close":
                connection.close()
            collector = threading.Thread(target=gc.collect)
            collector.start()
            assert started.wait(30)
            if when == "while-held":
                collector.join(30)  # finalised before the request ends
            connection.close()  # the request ends (no-op if closed above)
            other = threading.Thread(target=lambda: run_threads([other_request]))
            other.start()
            assert began.wait(30)
            proceed.set()  # the iterator is finalised now, if not yet
            collector.join(30)
            done.set()
            other.join(60)
            assert outcome == [1]
            assert Item.objects.using(alias).filter(name="other").count() == 1
            connection.close()
            gc.collect()
        warned = [str(w.message) for w in caught if w.category is ResourceWarning]
        assert [w for w in warned if "cursor" in w.lower()] == []
        assert djpoolapp.pool_status(alias)[alias].checked_out == 0
    finally:
        proceed.set()
        done.set()
        gc.enable()


def _in_other_thread(function: Callable[[], Any]) -> tuple[str, Any]:
    """``("ok", result)`` or ``("error", exception)`` of *function* run in a
    new thread (its own Django connections, unused)."""
    outcome: list[tuple[str, Any]] = []

    def run() -> None:
        try:
            outcome.append(("ok", function()))
        except Exception as error:  # returned
            outcome.append(("error", error))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    return outcome[0]


@pytest.mark.parametrize("alias", ALIASES[:1])  # PostgreSQL: pg_cursors
def test_cursors_closed_by_another_thread__are_closed_as_stock_django_closes_them(
    alias,
):
    """Server-side cursors (``iterator()``, ``chunked_cursor()``) closed by a
    thread that does not hold the connection (the garbage collector or an
    event loop finalising an abandoned ``aiterator()`` does this) are closed
    on the client at once, as stock Django's are: every later use raises
    ``InterfaceError`` (psycopg2's named cursor included), and on the server
    the holder's next statement closes them (a ``WITH HOLD`` cursor keeps its
    whole result there), instead of letting them pile up until the request
    ends.  In transaction mode that statement also releases the connection."""
    connection = connections[alias]
    Item.objects.using(alias).bulk_create([Item(name=str(n)) for n in range(5)])
    connection.close()
    options = {"aliases": {alias: {"pool_size": 1, "max_overflow": 0}}}
    with override_settings(DJPOOL_OPTIONS=options):
        invalidated = djpoolapp.pool_status(alias)[alias].invalidated
        for _ in range(5):
            rows = Item.objects.using(alias).iterator(chunk_size=1)
            next(rows)
            assert _in_other_thread(rows.close) == ("ok", None)
            del rows
        cursor = connection.chunked_cursor()
        cursor.execute("SELECT generate_series(1, 100)")
        assert cursor.fetchmany(1) == [(1,)]
        assert _in_other_thread(cursor.close) == ("ok", None)
        assert cursor.cursor.closed

        assert Item.objects.using(alias).count() == 5  # the holder's next statement
        if modes.current(alias) == "transaction":
            assert djpoolapp.pool_status(alias)[alias].checked_out == 0
        with connection.cursor() as check:  # the same session (pool_size=1)
            check.execute("SELECT count(*) FROM pg_cursors")
            assert check.fetchone()[0] == 0
        assert djpoolapp.pool_status(alias)[alias].invalidated == invalidated

        # Every later use raises Django's InterfaceError wrapping the
        # driver's, as for a cursor stock Django closed.
        for use in (lambda: cursor.fetchmany(1), lambda: cursor.execute("SELECT 1")):
            with pytest.raises(InterfaceError) as raised:
                use()
            assert isinstance(
                raised.value.__cause__, driver_module(alias).InterfaceError
            )
            kind, error = _in_other_thread(use)
            assert kind == "error"
            assert isinstance(error, InterfaceError), error
        connection.close()
        assert djpoolapp.pool_status(alias)[alias].checked_out == 0


@pytest.mark.parametrize("alias", ALIASES)
def test_cursor_kept_past_its_request__never_reaches_the_next_checkout(alias):
    """A server-side cursor (``chunked_cursor()``) kept past the end of its
    request and used again in a later one, inside a transaction on the same
    session: it raises ``InterfaceError`` and sends nothing, so the
    transaction goes on and commits (psycopg 3's closed server cursor would
    send ``CLOSE`` for its old portal, aborting the transaction; stock
    Django's cursor would find its connection closed)."""
    connection = connections[alias]
    options = {"aliases": {alias: {"pool_size": 1, "max_overflow": 0}}}
    with override_settings(DJPOOL_OPTIONS=options):
        kept = connection.chunked_cursor()
        kept.execute("SELECT id FROM testapp_item")
        kept.fetchmany(1)
        connection.close()  # the request ends
        with transaction.atomic(using=alias):
            Item.objects.using(alias).create(name="after")
            uses = [lambda: kept.execute("SELECT 1")]
            if connection.vendor == "postgresql":  # (MySQL: rows read client-side)
                uses.append(lambda: kept.fetchmany(1))
            for use in uses:
                with pytest.raises(DatabaseErrors):  # Django's, as stock raises
                    use()
            Item.objects.using(alias).create(name="still in the transaction")
        assert Item.objects.using(alias).count() == 2
        connection.close()
