"""``pool_mode="transaction"``: hold a server connection only while needed.

In request mode Django's connection holds its pooled driver connection from
its first query to its ``close()`` at the end of the request.  In
transaction mode the driver connection goes back to the pool as soon as
nothing depends on it, and the next statement checks one out again (often
the same one).  "Nothing depends on it" means, all at once (see
:func:`release_if_idle`):

- autocommit, outside ``atomic()``, no ``on_commit`` hook pending, no
  error Django has not cleared yet;
- no open cursor of this checkout, Django's or raw (client-side cursors
  hold their whole result: once closed, nothing is left to read on the
  session);
- the driver says no transaction is open (PostgreSQL exactly; MySQL from
  the statements seen and the server's autocommit flag);
- nothing *pinned* it.

Where the release happens
    Django's wrapper keeps ``connection.connection`` set between statements
    and every one of its methods starts with ``ensure_connection()``.  So a
    release checks the driver connection in (``Lease.checkin``: the same
    checks and reset as Django's close at request end) and sets the wrapper's
    ``connection`` to None, the state Django itself knows as "not connected
    yet": its next query, cursor or ``atomic()`` runs Django's ``connect()``.
    With ``park`` (the default) the checkin parks the connection with the
    wrapper, or hands it straight to the longest waiting checkout, exactly
    as Django's close at request end does in request mode, and ``connect()``
    takes a parked or already set-up connection back without Django's
    set-up (the fast path: ``parking.py``, patch.py's ``connect()``);
    another thread may take a parked one whenever the pool has none idle.
    Releases are attempted where a statement group ends: when a Django
    cursor is closed (the ORM closes each cursor after reading its rows;
    ``with connection.cursor()`` at block exit) and at the end of
    ``set_autocommit(True)`` (the last step of the outermost ``atomic()``).
    A cursor left open holds the connection until it is closed, garbage, or
    the request ends; that includes a server-side cursor
    (``QuerySet.iterator()`` / ``aiterator()`` on PostgreSQL), which holds it
    while open and does not pin (the checkin after it closes every
    server-side cursor of the session).

Async views (ASGI)
    Django runs a request's ``sync_to_async`` work (the async ORM) on a
    thread of its own (asgiref's ``ThreadSensitiveContext``), and Django's
    connections are per thread: each request has its own wrapper, released
    between statements exactly as a sync request's, so a request awaiting
    external I/O holds no server connection.  ``sync_to_async(...,
    thread_sensitive=False)`` work runs on executor threads that outlive the
    request; their connections are released after each statement as well.

Pinning
    Session state that must outlive its statement pins the driver connection
    to the Django connection until Django closes it (the end of the
    request), where the checkin resets the session (``reset_session``) as in
    request mode.  Causes, each with its reason in the DEBUG log and counted
    in ``pool_status()[alias].pins``:

    - a statement ``sql.classify()`` labels with anything but
      ``"transaction"``: ``SET``, ``set_config(..., false)``, ``SET ROLE``,
      temporary tables, advisory locks, ``PREPARE``, ``LISTEN``, ``USE``,
      ``LOCK TABLES``, MySQL user variables, several statements in one
      ``execute()``, executable comments, anything unknown;
    - ``callproc()`` (a procedure may change anything);
    - user code reading ``connection.connection`` (the driver connection
      itself): a reference kept past a release would reach a session
      another thread holds.  Reading it when Django's connection was
      released checks one out again, so code written for request mode sees
      the connection it expects.  Django's own code and djpoolapp's read it
      without pinning (judged by the caller's source file; ``from
      django.db import connection``, Django's proxy, is looked through to
      its caller; code run by ``manage.py shell -c`` is the user's).  The
      same through a Django cursor (``cursor.connection``, which Django's
      ``CursorWrapper`` hands to the driver cursor); not through the
      driver's own cursor (``cursor.cursor.connection``).
"""

from __future__ import annotations

import _thread
import functools
import inspect
import logging
import os
import sys
from typing import Any

import django
import django.utils.connection
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.utils import CursorWrapper

from .exceptions import SessionValueLost
from .hooks import set_hook
from .lease import PARKED
from .parking import _settings_generation, want_park
from .sql import (
    _MEMO_MAX_ENTRIES,
    _MEMO_MAX_LENGTH,
    PINS_VALUE,
    READS_DIAGNOSTICS,
    READS_ID,
    READS_PREVIOUS,
    READS_SEQUENCE,
    SETS_ID,
    SETS_SEQUENCE,
    _memo,
    _value_memo,
    classify,
    session_value_use,
)

logger = logging.getLogger("djpoolapp")

_TRANSACTION = frozenset({"transaction"})
#: Bound once: ``sys`` may already be None when a weak reference callback
#: reads ``connection`` at interpreter exit.
_getframe = sys._getframe
#: Source directories of the callers whose reads of the driver connection do
#: not pin: Django's and djpoolapp's own code.  Judged by the caller's file,
#: not its module name: code that ``manage.py shell -c`` (or a piped script)
#: runs has the shell command's module globals, but a file of its own
#: ("<string>", "<stdin>").
_INTERNAL = (
    os.path.dirname(os.path.abspath(django.__file__)) + os.sep,
    os.path.dirname(os.path.abspath(__file__)) + os.sep,
)
#: ``django.db.connection`` (``ConnectionProxy``) reads attributes on behalf
#: of its caller: looked through.
_PROXY_FILE = os.path.abspath(django.utils.connection.__file__)


def _user_frame(frame: Any) -> Any:
    """The frame of the user code behind *frame* (which reads the driver
    connection), or None when Django's or djpoolapp's own code reads it.
    Frames of ``ConnectionProxy`` are looked through."""
    filename = frame.f_code.co_filename
    if not filename.startswith(_INTERNAL):
        return frame
    if filename != _PROXY_FILE:
        return None
    frame = frame.f_back
    if frame is None or frame.f_code.co_filename.startswith(_INTERNAL):
        return None
    return frame


#: Code objects of Django's and djpoolapp's own functions (not
#: ``ConnectionProxy``'s) seen reading the driver connection: those reads
#: never pin, and Django reads it several times per statement, so the
#: answer of :func:`_user_frame` for them is remembered (one set look-up
#: instead of reading the caller's file name).  Bounded by the number of
#: such functions.
_internal_readers: set[Any] = set()


def _module_of(frame: Any) -> str:
    return str(frame.f_globals.get("__name__", "?"))


# -- the decisions ------------------------------------------------------------
def release_if_idle(db: Any) -> bool:
    """Check the driver connection of Django's *db* wrapper back in if nothing
    depends on it any more; return True if it did.

    Only the thread that owns *db* releases it (or any thread, when Django
    allows sharing it): a cursor closed elsewhere, e.g. by the garbage
    collector finalising an abandoned ``aiterator()`` in the event loop's
    thread, must not check in a connection its owner may be using."""
    if db._djpool_pin is not None or db._djpool_connecting:
        return False
    # (other_thread() inline: this runs after every statement group.)
    if db._thread_ident != _thread.get_ident() and not db.allow_thread_sharing:
        return False
    conn = db.__dict__.get("connection")
    if conn is None:
        return False
    lease = getattr(conn, "_djpool_lease", None)
    if lease is None or lease.fresh or lease.in_setup:
        return False  # (fresh: Django's connect() has not set it up yet)
    holder = lease.holder  # (Lease.held_by inline)
    if holder is None or holder() is not db:
        return False
    if (
        db.in_atomic_block
        or not db.autocommit
        or db.run_on_commit
        or db.errors_occurred
        or db.closed_in_transaction
    ):
        return False
    cursors = lease.cursors
    if cursors:
        for reference in cursors:
            cursor = reference()
            if cursor is None:
                continue
            # Open?  (A look-up on the class: a missing attribute of a
            # mysqlclient cursor runs its __getattr__, which imports two
            # modules and raises.)
            if getattr(type(cursor), "closed", None) is None:
                # MySQLdb: a closed cursor forgets its connection
                if getattr(cursor, "connection", None) is not None:
                    return False
            elif not cursor.closed:
                return False
    driver = lease.driver
    changed = lease.changed
    if (
        (changed and not changed <= _TRANSACTION)  # (no new set when empty)
        or conn._djpool_discard
        or driver.snapshot(conn) != lease.snapshot
        or driver.session_changes(conn)
    ):
        # (_pin_reason's checks inline, for the common case: nothing.)
        reason = _pin_reason(lease, conn)
        if reason is not None:
            pin(db, reason)
        return False
    if driver.in_transaction(conn) is not False or driver.busy(conn):
        # (busy: a call on it is still running, e.g. another thread's while
        # Django lets it share the connection: not idle.)
        return False
    db._djpool_released = True
    db.__dict__["connection"] = None
    want_park(db, lease)
    # The checks above compared the driver's session attributes with the
    # snapshot just now: the checkin need not read them again.
    lease.snapshot_checked = True
    try:
        lease.checkin()
    finally:
        lease.snapshot_checked = False  # (also if the checkin was cut short)
    # (As patch.py's close does: the checkin cleared park_wanted; after a
    # hand-over the lease is another thread's, with another holder, and is
    # not touched.)
    if lease.state is PARKED and lease.holder is holder:
        db._djpool_park = lease
        db._djpool_park_generation = _settings_generation[0]
    return True


def other_thread(db: Any) -> bool:
    """Whether the calling thread is not the one holding Django's *db*
    wrapper and Django does not allow sharing it (``_thread.get_ident``
    looked up at each call, as Django's own ``_thread_ident`` is: gevent's
    monkey-patching applies whenever it ran)."""
    return db._thread_ident != _thread.get_ident() and not db.allow_thread_sharing


def _pin_reason(lease: Any, conn: Any) -> str | None:
    """Session state the lease or driver saw that must outlive this checkout.

    A server-side cursor does not pin: while open it holds the connection
    (as any open cursor does); once closed nothing of it is left on the
    session, and one dropped unclosed is closed by the checkin's session
    reset (``Lease.named_cursors``)."""
    changed = lease.changed
    if changed and not changed <= _TRANSACTION:  # (no new set when empty)
        changed = changed - _TRANSACTION
        return "session state changed: " + ", ".join(sorted(changed))
    if conn._djpool_discard:
        return "USE / LOCK TABLES"
    # Seen by the driver connection only (mysqlclient's query()): a
    # statement Django's cursor did not send as it was given -- one that an
    # execute_wrapper() rewrote or added, a raw cursor's.  A changed MySQL
    # session cannot be reset: released, it would be closed at checkin and
    # the request's next statement would run without the change.
    seen = lease.driver.session_changes(conn)
    if seen:
        return "session state changed: " + ", ".join(sorted(seen))
    if lease.driver.snapshot(conn) != lease.snapshot:
        return "driver session attributes changed (read_only, isolation_level...)"
    return None


def pin(db: Any, reason: str) -> None:
    """Keep *db*'s driver connection until Django closes it; count and log
    why (first reason only)."""
    if db._djpool_pin is not None:
        return
    conn = db.__dict__.get("connection")
    lease = getattr(conn, "_djpool_lease", None)
    if lease is None:
        return
    db._djpool_pin = reason
    lease.pool.stats.add("pins")
    logger.debug(
        "Pinned a connection of %r to Django's connection %r until it is "
        "closed (pool_mode='transaction'): %s",
        lease.pool,
        db.alias,
        reason,
    )


def _check_value(db: Any, source: Any, now: Any, text: Any) -> None:
    """Raise :class:`SessionValueLost` when a statement reading a value of an
    earlier statement (*source*: that statement's session, as *now* gives
    this one's: ``(lease, epoch[, the pool's own statements sent])``; None:
    none in this request) is about to run on another session, or on the same
    one after another Django connection held it or the pool's own statements
    (a checkin's clear of the warnings, a pre-ping) overwrote the value."""
    if source is None or source == now:
        return
    raise SessionValueLost(
        f"djpoolapp: {str(text)[:200]!r} reads a value the session kept from "
        "an earlier statement (the last generated id: lastval(), currval(), "
        "LAST_INSERT_ID(); or the previous statement's FOUND_ROWS(), "
        "ROW_COUNT(), warnings), but with pool_mode='transaction' the "
        f"connection of {db.alias!r} was released after that statement and "
        "another request has used this server session since, another "
        "session serves this statement, or the pool's own statements on it "
        "since (the release's clear of the MySQL warnings, a pre-ping) "
        "cleared or overwrote the value: it would not be this request's.  Read it with the "
        "statement that sets it (INSERT ... RETURNING, cursor.lastrowid), in "
        "the same cursor block, or inside one transaction.atomic() with it; "
        "or use pool_mode='request' for this alias."
    )


#: A value source no statement's session ever equals (its reads raise).
_UNKNOWN_SOURCE: Any = ("unknown",)

#: Vendors whose statements ``sql.classify()`` reads.
_READ_VENDORS = frozenset({"postgresql", "mysql"})


def _forget_values(db: Any) -> None:
    """At a request boundary: no earlier statement's session values (last
    statement, last generated id, sequence values) are the request's."""
    db._djpool_last_statement = db._djpool_id_source = None
    db._djpool_sequence_source = None


#: ``(vendor, statement)`` of the statements (str or bytes) that neither pin
#: nor read or set a session value (``classify()`` finds nothing but
#: ``"transaction"``, ``session_value_use()`` nothing): for them
#: :func:`_wrap_execute`'s ``execute()`` only records the session
#: (``_djpool_last_statement``), without calling :func:`_note_statement`.
#: Bounded as ``sql.py``'s memos are (cleared when full, long statements not
#: kept).
_harmless: set[tuple[str, Any]] = set()


def _remember_harmless(vendor: str, sql: str | bytes) -> None:
    if len(sql) <= _MEMO_MAX_LENGTH:
        if len(_harmless) >= _MEMO_MAX_ENTRIES:
            _harmless.clear()
        try:
            _harmless.add((vendor, sql))
        except TypeError:  # (an unhashable str or bytes subclass)
            pass


def _note_statement(db: Any, sql: Any, what: str = "statement") -> None:
    conn = db.__dict__.get("connection")
    lease = getattr(conn, "_djpool_lease", None)
    if lease is None or lease.in_setup or db._djpool_connecting:
        return
    text: Any = None
    vendor = db.vendor
    if vendor not in _READ_VENDORS:
        # (SQLite, pooled on request, a third-party backend's vendor): its
        # statements are not read, so none can be proven harmless to release
        # after: held until the request ends, as in request mode.
        if db._djpool_pin is None:
            pin(db, f"statements of a {vendor} connection are not read")
        return
    if what != "statement":
        labels = frozenset({what})
    elif isinstance(sql, (str, bytes)):
        text = sql
        # classify()'s remembered answer first (the ORM repeats its SQL text:
        # a look-up, no call); classify() reads and remembers the rest.
        try:
            labels = _memo[(vendor, sql)]
        except KeyError:
            labels = classify(vendor, sql)
    else:  # psycopg's composed queries (sql.SQL(...).format(...))
        try:
            text = sql.as_string(conn)
            labels = classify(vendor, text)
        except Exception:
            labels = frozenset({"unknown"})
    if labels and labels != _TRANSACTION:
        # Recorded on the lease too, so that the checkin resets it
        # (reset_session="auto") on every driver.
        lease.note_statement(labels - _TRANSACTION)
        if db._djpool_pin is None:
            pin(db, f"{', '.join(sorted(labels))}: {str(sql)[:200]!r}")
    if text is None:
        return
    try:  # (remembered, as classify()'s answers are)
        use = _value_memo[(vendor, text)]
    except KeyError:
        use = session_value_use(vendor, text)
    if not use and text is sql and (not labels or labels == _TRANSACTION):
        _remember_harmless(vendor, sql)
    epoch = lease.epoch
    sent = conn._djpool_pool_statements
    if use:
        if use & PINS_VALUE and db._djpool_pin is None:
            # nextval() / LAST_INSERT_ID(x) / SQL_CALC_FOUND_ROWS are there
            # for a later statement to read: kept (no reset needed).
            pin(db, f"sets a value for a later statement: {str(text)[:200]!r}")
        last = db._djpool_last_statement
        if use & READS_ID:
            _check_value(db, db._djpool_id_source, (lease, epoch), text)
        if use & READS_SEQUENCE:
            _check_value(db, db._djpool_sequence_source, (lease, epoch), text)
        if use & READS_PREVIOUS:
            # (and the pool's own statements since: a pre-ping, MySQL's
            # clear of the warnings overwrite FOUND_ROWS(), ROW_COUNT())
            _check_value(db, last, (lease, epoch, sent), text)
        if use & READS_DIAGNOSTICS:
            _check_value(db, last, (lease, epoch, sent), text)
        now = (lease, epoch)
        if use & SETS_ID:
            db._djpool_id_source = now
        if use & SETS_SEQUENCE:
            # MariaDB's sequence values are per sequence: an INSERT (which
            # may draw from one through a column default, or may not) takes
            # over as their source only when no earlier possible source on
            # another session or epoch is recorded; otherwise the request's
            # last draw may be on either session, and a later read raises (a
            # false alarm at worst).  NEXTVAL() / NEXT VALUE FOR draw for
            # sure (and pin).
            source = db._djpool_sequence_source
            if use & PINS_VALUE or source is None or source == now:
                db._djpool_sequence_source = now
            else:
                # Which session holds this request's last draw is unknown
                # from here on: every later read raises.
                db._djpool_sequence_source = _UNKNOWN_SOURCE
    db._djpool_last_statement = (lease, epoch, sent)


def _user_reads_connection(db: Any, conn: Any, caller: Any) -> Any:
    """``connection.connection`` read outside Django (from frame *caller*):
    pin (checking a connection out again if Django's was released)."""
    if conn is None:
        if not db._djpool_released:
            return None  # not connected yet, as without the app
        db.ensure_connection()
        conn = db.__dict__.get("connection")
    pin(db, f"connection.connection read by {_module_of(caller)}")
    return conn


def _get_connection(db: Any) -> Any:
    """``DatabaseWrapper.connection``'s getter (installed only once a
    transaction-mode pool exists): the driver connection, pinned when user
    code reads it (:func:`_user_reads_connection`).

    A plain ``property`` (:data:`CONNECTION`), not a descriptor class:
    CPython 3.12+ runs a property's Python getter without a C-level call
    (``LOAD_ATTR_PROPERTY``), and Django reads ``connection`` several times
    per statement group.  The value stays in the instance ``__dict__`` under
    the same name, so removing the property leaves every wrapper as it
    was."""
    try:
        conn = db.__dict__["connection"]
    except KeyError:  # (read before Django's __init__ set it)
        conn = None
    if conn is None:
        if not db._djpool_released:
            # Not connected yet (or not since the request started): None for
            # every reader, as without the app (what _user_reads_connection
            # answers user code), without looking at the caller.  Every
            # backend's reads of a closed connection, once a
            # transaction-mode pool exists, return here.
            return None
        if not db._djpool_txmode or db._djpool_pin is not None:
            return None
    elif not db._djpool_txmode or db._djpool_pin is not None:
        # (Every backend's reads, once a transaction-mode pool exists:
        # request-mode and unpooled aliases return here.)
        return conn
    try:
        # Django's own reads next (several per statement): they never pin.
        code = _getframe(1).f_code
        if code in _internal_readers:
            return conn
    except Exception:  # interpreter exit: this module's globals are gone
        return conn
    try:
        caller = _user_frame(_getframe(1))
        if caller is None and code.co_filename != _PROXY_FILE:
            _internal_readers.add(code)
    except Exception:  # interpreter exit: this module's globals are gone
        return conn
    if caller is None:
        return conn
    return _user_reads_connection(db, conn, caller)


def _set_connection(db: Any, value: Any) -> None:
    db.__dict__["connection"] = value


#: The data descriptor installed as ``BaseDatabaseWrapper.connection``.
CONNECTION = property(_get_connection, _set_connection, doc=_get_connection.__doc__)


# -- the patches (installed with the first transaction-mode pool) -----------
def _plain_signature(function: Any, names: tuple[str, ...], defaults: Any) -> bool:
    """Whether *function* is a Python function taking exactly the positional
    or keyword parameters *names*, with *defaults*, and nothing else."""
    code = getattr(function, "__code__", None)
    return (
        code is not None
        and code.co_argcount == len(names)
        and not code.co_kwonlyargcount
        and not code.co_posonlyargcount
        and not code.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS)
        and code.co_varnames[: len(names)] == names
        and function.__defaults__ == defaults
        and not function.__kwdefaults__
    )


def _wrap_execute(original: Any, what: str = "statement") -> Any:
    """``CursorWrapper.execute`` / ``executemany`` / ``callproc`` (*what*):
    note the statement (:func:`_note_statement`), then run it.

    Django's ``execute(self, sql, params=None)`` gets a wrapper of that same
    signature (called with ``*args, **kwargs`` a wrapper costs about twice as
    much; it runs for every statement), which notes a statement known to be
    harmless (:data:`_harmless`) inline; any other signature, a generic
    wrapper."""
    execute: Any
    if what == "statement" and _plain_signature(
        original, ("self", "sql", "params"), (None,)
    ):

        def execute_sql(self: Any, sql: Any, params: Any = None) -> Any:
            db = self.db
            if db._djpool_txmode:
                try:
                    harmless = (db.vendor, sql) in _harmless
                except TypeError:  # (psycopg's composed queries)
                    harmless = False
                if harmless:
                    # (_note_statement's whole work for such a statement.)
                    conn = db.__dict__.get("connection")
                    lease = getattr(conn, "_djpool_lease", None)
                    if not (lease is None or lease.in_setup or db._djpool_connecting):
                        db._djpool_last_statement = (
                            lease,
                            lease.epoch,
                            conn._djpool_pool_statements,
                        )
                else:
                    _note_statement(db, sql)
            return original(self, sql, params)

        execute = execute_sql
        # (A wrong call raises its TypeError here: under Django's name.)
        execute.__qualname__ = original.__qualname__
    else:

        def execute_any(self: Any, sql: Any, *args: Any, **kwargs: Any) -> Any:
            db = self.db
            if db._djpool_txmode:
                _note_statement(db, sql, what)
            return original(self, sql, *args, **kwargs)

        execute = execute_any

    execute.__name__ = original.__name__
    execute.__doc__ = original.__doc__
    execute._djpool_patched = True
    return execute


def _cursor_connection(cursor: Any) -> Any:
    """``CursorWrapper.connection``: the driver cursor's connection (which
    Django's ``CursorWrapper.__getattr__`` would hand on), pinned as
    ``connection.connection`` is when user code reads it.  A property of its
    own, so that the cursor's other attributes (``fetchone`` ...) still go
    straight to Django's ``__getattr__``."""
    value = cursor.cursor.connection
    db = cursor.db
    if db._djpool_txmode and db._djpool_pin is None and value is not None:
        caller = _user_frame(_getframe(1))
        if caller is not None:
            pin(db, f"cursor.connection read by {_module_of(caller)}")
    return value


def _driver_autocommit(db: Any, conn: Any) -> bool | None:
    """The driver connection's autocommit as the client knows it, without a
    round trip (mysqlclient: the status flags of the server's last reply);
    None when unknown."""
    try:
        if db.vendor == "postgresql":
            return bool(conn.autocommit)
        if db.vendor == "mysql":
            return bool(conn.get_autocommit())
    except Exception:
        return None
    return None


def _wrap_set_autocommit(original: Any) -> Any:
    @functools.wraps(original)
    def set_autocommit(self: Any, autocommit: bool, *args: Any, **kwargs: Any) -> Any:
        if self._djpool_released and self._djpool_connecting and not (args or kwargs):
            # Django's connect() of a re-checkout (this wrapper released its
            # connection earlier in the request).  When the pooled connection
            # is in that mode already, what Django's set_autocommit() would
            # do comes down to its flag: its checks and the driver call
            # are skipped (no round trip either way: psycopg and
            # mysqlclient 2.x skip an unchanged autocommit themselves).
            # connect() has just cleared the atomic state and the health
            # check, and no commit hook can be pending on a released
            # connection.
            conn = self.__dict__.get("connection")
            if conn is not None and _driver_autocommit(self, conn) is bool(autocommit):
                self.autocommit = autocommit
                return None
        result = original(self, autocommit, *args, **kwargs)
        if autocommit and self._djpool_txmode:
            release_if_idle(self)  # the end of the outermost atomic()
        return result

    set_autocommit._djpool_patched = True  # type: ignore[attr-defined]
    return set_autocommit


def _wrap_connect(original: Any) -> Any:
    @functools.wraps(original)
    def connect(self: Any) -> Any:
        self._djpool_connecting += 1
        try:
            return original(self)
        finally:
            self._djpool_connecting -= 1
            self._djpool_released = False

    connect._djpool_patched = True  # type: ignore[attr-defined]
    return connect


def _wrap_close(original: Any) -> Any:
    def close(self: Any) -> Any:
        try:
            return original(self)
        finally:
            if self.__dict__.get("connection") is None:
                self._djpool_pin = None  # the request (or its owner) ended
                self._djpool_released = False
                _forget_values(self)

    close._djpool_patched = True  # type: ignore[attr-defined]
    return close


def _wrap_close_if_unusable_or_obsolete(original: Any) -> Any:
    def close_if_unusable_or_obsolete(self: Any) -> Any:
        if self.__dict__.get("connection") is None:
            # Not connected (not yet, or released): Django's method only
            # reads ``connection`` (None for it either way).  A request
            # boundary: nothing to re-take, no earlier statement's values
            # are the request's (_forget_values() inline: this runs twice
            # per request).  Reset first, so that _get_connection answers
            # that read without looking at the caller.
            self._djpool_released = False
            self._djpool_last_statement = self._djpool_id_source = None
            self._djpool_sequence_source = None
            return original(self)
        result = original(self)
        if self.__dict__.get("connection") is None:  # closed it
            self._djpool_released = False  # request boundary: nothing to re-take
            _forget_values(self)
        return result

    close_if_unusable_or_obsolete._djpool_patched = True  # type: ignore[attr-defined]
    return close_if_unusable_or_obsolete


def install() -> None:
    """Install the transaction-mode hooks on Django's classes (idempotent;
    undone by ``patch.uninstall()``)."""
    if "connection" in BaseDatabaseWrapper.__dict__:
        return
    base = BaseDatabaseWrapper
    set_hook(base, "_djpool_txmode", False)
    set_hook(base, "_djpool_pin", None)
    set_hook(base, "_djpool_released", False)
    set_hook(base, "_djpool_connecting", 0)
    #: ``(lease, lease.epoch, the pool's own statements sent on it)`` of this
    #: Django connection's last statement in the request (``_note_statement``;
    #: ``PooledConnection._djpool_pool_statements``); None at its start.
    set_hook(base, "_djpool_last_statement", None)
    #: ``(lease, lease.epoch)`` of its last statement that may have set the
    #: last generated id (``sql.SETS_ID``).
    set_hook(base, "_djpool_id_source", None)
    #: The same for MariaDB's sequence values (``sql.SETS_SEQUENCE``).
    set_hook(base, "_djpool_sequence_source", None)
    set_hook(base, "connect", _wrap_connect(base.connect))
    set_hook(base, "close", _wrap_close(base.close))
    set_hook(base, "set_autocommit", _wrap_set_autocommit(base.set_autocommit))
    set_hook(
        base,
        "close_if_unusable_or_obsolete",
        _wrap_close_if_unusable_or_obsolete(base.close_if_unusable_or_obsolete),
    )
    set_hook(CursorWrapper, "execute", _wrap_execute(CursorWrapper.execute))
    set_hook(CursorWrapper, "executemany", _wrap_execute(CursorWrapper.executemany))
    set_hook(
        CursorWrapper, "callproc", _wrap_execute(CursorWrapper.callproc, "callproc")
    )
    if not hasattr(CursorWrapper, "connection"):  # (Django defines none)
        set_hook(CursorWrapper, "connection", property(_cursor_connection))
    # Last: from here on Django's connection attribute goes through it.
    set_hook(base, "connection", CONNECTION)
    logger.debug("Installed the pool_mode='transaction' hooks")
