"""What djpoolapp needs to know about each DB-API driver.

Django must receive a *real* driver connection: psycopg2's
``register_default_jsonb()`` rejects wrappers, and psycopg 3 and SQLAlchemy
proxies shadow attributes such as ``info`` and swallow attribute writes such as
``autocommit = True``.  So each driver's own connection class is subclassed
with :class:`PooledConnection`, whose ``close()`` checks the connection back
into its pool instead of closing it, and whose state-changing entry points
(methods and attribute setters) refuse a thread that does not hold the
checkout (``Lease.check_caller``).  Everything else is the driver's.
"""

from __future__ import annotations

import _thread
import contextlib
import errno
import functools
import os
import random
import select
import sys
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .deadline import bounded
from .exceptions import SessionChanged, UnreadResults
from .lease import IN_USE, _owners
from .sql import _memo, classify

if TYPE_CHECKING:
    from .lease import Lease, LeasePool


#: The driver connection Django's own ``_close()`` of its current checkout is
#: closing (set by ``patch.py``): only that ``close()`` returns it to the pool.
closing: ContextVar[Any] = ContextVar("djpoolapp_closing", default=None)


#: ``WatchedCursor._djpool_guard`` serial of a cursor made while no checkout
#: held the connection (the pool's own round trips, or a stale handle).
_NO_CHECKOUT = -1


class PooledConnection:
    """Mixin for a driver connection class: Django's close returns it.

    ``close()`` called by Django's ``_close()`` of the checkout that holds
    the connection checks it in (:meth:`Lease.checkin`); the holder's own
    ``close()`` (user code holding ``connection.connection`` in its request)
    really closes the session, as without the app, and the pool forgets it
    (:meth:`Lease.close_raw`); a stale handle's (another thread's, or
    anybody's while no request holds the session) does nothing, as closing
    stock Django's already closed handle does nothing.
    """

    #: The :class:`~djpoolapp.lease.Lease` of this connection (its pool
    #: state); None for a connection opened outside a pool.
    _djpool_lease: Lease | None = None
    #: The :class:`~djpoolapp.pool.AliasPool` that opened the connection.
    _djpool_pool: LeasePool | None = None
    #: Set when a statement made the session unusable for others (MySQL
    #: LOCK TABLES, USE): invalidate instead of reusing.
    _djpool_discard: bool = False
    #: ``(fd, device, inode)`` of its socket when opened (Driver.socket_fd).
    _djpool_socket: tuple[int, int, int] | None = None
    #: How many statements or commands the pool itself sent on this session
    #: (pre-ping, the checkin's commit or rollback, MySQL's clear of the
    #: warnings): each overwrites what the previous statement left for a
    #: later one to read (``FOUND_ROWS()``, ``ROW_COUNT()``, the warnings).
    #: Read by ``txmode._note_statement``.
    _djpool_pool_statements = 0

    def close(self) -> None:
        lease = self._djpool_lease
        if lease is None:
            super().close()  # type: ignore[misc]
        elif closing.get() is self:
            lease.checkin()
        elif lease.refusal() is None:
            lease.close_raw()  # its holder's own close: for real, as stock
        # else: a stale handle's close (another thread's while a request
        # holds the session, anybody's while it is parked or idle).  Stock
        # Django's stale handle is closed already: closing it again does
        # nothing to anybody's session (psycopg), so neither does this.

    def _djpool_close(self) -> None:
        """The driver's own ``close()``: ends the server session."""
        super().close()  # type: ignore[misc]

    # A raw handle of another thread never acts on the current checkout
    # (Lease.check_caller); the pool's own round trips run with no checkout.
    # Every cursor made during a checkout -- Django's and raw ones of
    # ``connection.connection`` alike -- is the lease's (Lease.track_cursor):
    # the checkin closes it if still open, as stock Django's close of the
    # connection would.  (Cursors made with no checkout are the pool's own
    # round trips, or a stale handle's: see WatchedCursor.)
    #
    # It runs for every query (Django makes a cursor for each statement):
    # Django's case -- no arguments, during a checkout -- is inline, with
    # Lease.check_caller's common case (the holder's own thread); the rest
    # is _djpool_cursor().
    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        lease = self._djpool_lease
        if lease is None or args or kwargs or lease.state is not IN_USE:
            return self._djpool_cursor(lease, args, kwargs)
        try:
            holder = lease.owner() is _owners.token  # type: ignore[misc]
        except (AttributeError, TypeError):  # no token here; no owner
            holder = False
        if not holder:
            lease.check_caller()
        cursor = super().cursor()  # type: ignore[misc]
        lease.track_cursor(cursor)
        if self._djpool_guard_cursors:
            try:
                cursor._djpool_guard = (lease, lease.serial, _thread.get_ident())
            except AttributeError:  # a cursor class without __dict__
                pass
        return cursor

    def _djpool_cursor(
        self, lease: Lease | None, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """:meth:`cursor`, every case."""
        args, kwargs = self._djpool_cursor_arguments(args, kwargs)
        cursor_method = super().cursor  # type: ignore[misc]
        if lease is None:
            return self._djpool_made(cursor_method(*args, **kwargs))
        lease.check_caller()
        cursor = self._djpool_made(cursor_method(*args, **kwargs))
        guard: tuple[Any, int, int | None]
        if lease.state is IN_USE:
            lease.track_cursor(cursor)
            guard = (lease, lease.serial, _thread.get_ident())
        else:
            guard = (lease, _NO_CHECKOUT, None)
        if self._djpool_guard_cursors:
            try:
                cursor._djpool_guard = guard
            except AttributeError:  # a cursor class without __dict__
                pass
        return cursor

    #: The driver's cursors check the checkout and thread they were made in
    #: (``WatchedCursor._djpool_guard``): set by the PostgreSQL connections.
    _djpool_guard_cursors = False

    def _djpool_cursor_arguments(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The arguments of a ``cursor()`` call as the driver gets them."""
        return args, kwargs

    def _djpool_made(self, cursor: Any) -> Any:
        """*cursor*, just made by ``cursor()`` with arguments (a named one
        always has some)."""
        return cursor

    def commit(self) -> None:
        lease = self._djpool_lease
        if lease is not None:
            lease.check_caller()
        super().commit()  # type: ignore[misc]

    def rollback(self) -> None:
        lease = self._djpool_lease
        if lease is not None:
            lease.check_caller()
        super().rollback()  # type: ignore[misc]

    # Every other entry point of the driver's connection that changes what
    # the holder's session or its driver-side state does is checked the same
    # way (:func:`pooled_class` builds the guards from these names; a name
    # the installed driver lacks is skipped).  Reads stay the driver's own.
    #: Attributes defined on the driver's class (properties, C descriptors):
    #: their setter is checked, their getter is the driver's own.
    _djpool_guarded_properties: tuple[str, ...] = ()
    #: C descriptors read on the hot path (psycopg2's ``autocommit``): writes
    #: are checked by the pooled class's ``__setattr__``, reads stay the C
    #: descriptor's (a property around it costs 30-45 ns per read).
    _djpool_guarded_slots: tuple[str, ...] = ()
    #: Attributes kept in the instance ``__dict__``: a data descriptor with a
    #: ``__set__`` only checks writes; reads still find the instance value.
    _djpool_guarded_fields: tuple[str, ...] = ()
    #: Methods checked before the driver's own runs.
    _djpool_guarded_methods: tuple[str, ...] = ()


class _PostgresPooledConnection(PooledConnection):
    """The PostgreSQL drivers' connections: each cursor also records the
    checkout and thread it was made in (``WatchedCursor._djpool_guard``),
    checked by every call of the cursor that reaches the session."""

    _djpool_guard_cursors = True


class PooledPsycopgConnection(_PostgresPooledConnection):
    """psycopg 3's connection (see :class:`PooledConnection`).

    Guarded: the session characteristics and prepared-statement settings
    (property setters and ``set_*()``), the row and cursor factories (part
    of ``PsycopgDriver.snapshot``), statements and transactions that do not
    go through ``cursor()`` (``transaction()``, ``pipeline()``, two-phase
    commit), the notification stream and the notice/notify handlers (they
    would receive the holder's), and ``wait()``, through which every
    statement of every cursor reaches the server: a cursor built from its
    class (``psycopg.ClientCursor(conn)``, ``psycopg.ServerCursor(conn,
    name)``), which neither the connection's ``cursor()`` nor its factories
    see, is refused by another thread too.  Not guarded: ``cancel()`` /
    ``cancel_safe()`` (made to be called from another thread, over a
    connection of their own; on a wrong session the holder sees an error,
    never a silent change), ``pgconn`` and ``adapters`` (escape hatches to
    libpq and to the adaptation map, which cannot be watched), reads.
    """

    def wait(self, gen: Any, *args: Any, **kwargs: Any) -> Any:
        lease = self._djpool_lease
        if lease is not None:
            # Only the case Lease.check_caller always passes (the holder's
            # own thread during its checkout) is decided inline, as in
            # PooledConnection.cursor; any other calls it (parked or idle:
            # the pool's own round trips pass, a stale handle's are refused).
            if lease.state is IN_USE:
                try:
                    holder = lease.owner() is _owners.token  # type: ignore[misc]
                except (AttributeError, TypeError):
                    holder = False
            else:
                holder = False
            if not holder:
                lease.check_caller()
        return super().wait(gen, *args, **kwargs)  # type: ignore[misc]

    _djpool_guarded_properties = (
        "autocommit", "isolation_level", "read_only", "deferrable",
        "prepare_threshold", "prepared_max",
    )  # fmt: skip
    _djpool_guarded_fields = ("row_factory", "cursor_factory", "server_cursor_factory")
    _djpool_guarded_methods = (
        "set_autocommit", "set_isolation_level", "set_read_only", "set_deferrable",
        "execute", "transaction", "pipeline", "notifies",
        "tpc_begin", "tpc_prepare", "tpc_commit", "tpc_rollback", "tpc_recover",
        "add_notice_handler", "remove_notice_handler",
        "add_notify_handler", "remove_notify_handler",
    )  # fmt: skip


class PooledPsycopg2Connection(_PostgresPooledConnection):
    """psycopg2's connection (see :class:`PooledConnection`).

    Guarded: the session characteristics (setters of ``autocommit``,
    ``isolation_level``, ``readonly``, ``deferrable``; ``set_session()``,
    ``set_isolation_level()``), ``cursor_factory``, the client encoding,
    ``reset()``, two-phase commit and large objects.  Not guarded:
    ``cancel()`` (made for another thread, see psycopg 3's), ``poll()``
    (the wait callback of green threads calls it for every statement; on a
    synchronous connection it only moves pending notifications into
    ``notifies``, the same list the holder reads), ``get_native_connection()``
    / ``pgconn_ptr`` (libpq itself), ``notices`` / ``notifies`` and the
    type-caster dictionaries (mutable containers), reads.
    """

    _djpool_guarded_slots = (
        "autocommit", "isolation_level", "readonly", "deferrable", "cursor_factory",
    )  # fmt: skip
    _djpool_guarded_methods = (
        "set_session", "set_isolation_level", "set_client_encoding", "reset",
        "tpc_begin", "tpc_prepare", "tpc_commit", "tpc_rollback", "tpc_recover",
        "lobject",
    )  # fmt: skip

    def _djpool_made(self, cursor: Any) -> Any:
        # A named cursor marks the lease (its session is reset at checkin)
        # and becomes a _NamedPsycopg2Cursor, whose fetches are checked.
        # Done here rather than in the cursor's __init__, which would run
        # for every cursor: a named one is only made by cursor(name, ...).
        if isinstance(cursor, WatchedPsycopg2Cursor) and cursor.name is not None:
            _note_named_cursor(self)
            klass: Any = type(cursor)
            cursor.__class__ = _named_psycopg2(klass)
        return cursor

    def _djpool_cursor_arguments(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        # A cursor class given for this call (``cursor_factory=RealDictCursor``)
        # is watched as the connection's own is.
        factory = kwargs.get("cursor_factory")
        if factory is not None:
            kwargs = {**kwargs, "cursor_factory": _watched_psycopg2(factory)}
        elif len(args) > 1 and args[1] is not None:
            args = (args[0], _watched_psycopg2(args[1]), *args[2:])
        return args, kwargs


class _GuardedField:
    """Class attribute that checks writes of the instance attribute *name*
    (``Lease.check_caller``).  It has no ``__get__``: a read finds the value
    in the instance ``__dict__`` as if the descriptor were not there."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __set__(self, conn: Any, value: Any) -> None:
        lease = conn._djpool_lease
        if lease is not None:
            lease.check_caller()
        conn.__dict__[self.name] = value

    def __delete__(self, conn: Any) -> None:
        lease = conn._djpool_lease
        if lease is not None:
            lease.check_caller()
        try:
            del conn.__dict__[self.name]
        except KeyError:
            raise AttributeError(self.name) from None


def _class_attribute(base: type, name: str) -> Any:
    for klass in base.__mro__:
        if name in vars(klass):
            return vars(klass)[name]
    return None


def _guarded_property(descriptor: Any) -> property | None:
    """*descriptor* (a property or a C getset/member descriptor) with its
    setter checked; its getter is the driver's own (a property's ``fget``
    function, or the C descriptor's ``__get__``: no Python frame on reads)."""
    if isinstance(descriptor, property):
        fget, fset, doc = descriptor.fget, descriptor.fset, descriptor.__doc__
    elif hasattr(descriptor, "__set__") and hasattr(descriptor, "__get__"):
        fget, fset = descriptor.__get__, descriptor.__set__
        doc = getattr(descriptor, "__doc__", None)
    else:
        return None
    if fset is None:
        return None  # read-only: nothing to guard

    def setter(conn: Any, value: Any) -> None:
        lease = conn._djpool_lease
        if lease is not None:
            lease.check_caller()
        fset(conn, value)

    return property(fget, setter, doc=doc)


def _guarded_setattr(names: frozenset[str], setattr_: Any) -> Any:
    """A ``__setattr__`` that checks writes of *names* (C descriptors whose
    reads must stay free), then sets as the driver's class does."""

    def __setattr__(conn: Any, name: str, value: Any) -> None:
        if name in names:
            lease = conn._djpool_lease
            if lease is not None:
                lease.check_caller()
        setattr_(conn, name, value)

    return __setattr__


def _guarded_method(function: Any) -> Any:
    """*function* (the driver's method), run after ``Lease.check_caller``."""

    def guarded(conn: Any, *args: Any, **kwargs: Any) -> Any:
        lease = conn._djpool_lease
        if lease is not None:
            lease.check_caller()
        return function(conn, *args, **kwargs)

    guarded.__name__ = getattr(function, "__name__", "guarded")
    guarded.__qualname__ = f"Pooled.{guarded.__name__}"
    guarded.__doc__ = getattr(function, "__doc__", None)
    return guarded


def _guards(base: type, mixin: type) -> dict[str, Any]:
    """The checked entry points of *mixin* (``_djpool_guarded_*``) that
    *base* has, for the pooled class's namespace."""
    namespace: dict[str, Any] = {}
    if not issubclass(mixin, PooledConnection):
        return namespace  # (a cursor mixin)
    for name in mixin._djpool_guarded_properties:
        descriptor = _class_attribute(base, name)
        guarded = _guarded_property(descriptor) if descriptor is not None else None
        if guarded is not None:
            namespace[name] = guarded
    slots = frozenset(
        name
        for name in mixin._djpool_guarded_slots
        if hasattr(_class_attribute(base, name), "__set__")
    )
    if slots:
        namespace["__setattr__"] = _guarded_setattr(slots, base.__setattr__)
    for name in mixin._djpool_guarded_fields:
        if _class_attribute(base, name) is None:
            namespace[name] = _GuardedField(name)
    for name in mixin._djpool_guarded_methods:
        function = _class_attribute(base, name)
        if callable(function) and name not in vars(mixin):
            namespace[name] = _guarded_method(function)
    return namespace


@functools.cache
def pooled_class(base: type, mixin: type = PooledConnection) -> type:
    """The pooled subclass of a driver connection class (one per base)."""
    return type(f"Pooled{base.__name__}", (mixin, base), _guards(base, mixin))


class _NoLease:
    """``WatchedCursor._djpool_guard``'s lease for a cursor the pooled
    connection's ``cursor()`` did not make (a cursor class called directly)."""

    serial = -2  # never a cursor's: such a cursor always takes the slow path


_NO_LEASE: Any = _NoLease()


class WatchedCursor:
    """Mixin for a PostgreSQL driver cursor class: every statement it runs is
    classified (``sql.classify``) and one that may change session state marks
    the connection's lease, so that ``reset_session="auto"`` resets it at
    checkin.  Set as the connection's ``cursor_factory``, so raw cursors of
    ``connection.connection`` are watched too.  A named (server-side) cursor
    marks the lease as well (psycopg2 names its cursors here).

    Every call that reaches the session (statements, ``COPY``, a named
    cursor's fetches and moves) is checked first (:func:`_check_cursor`): a
    cursor acts only for the checkout it was made in, from a thread that
    holds it (or that Django lets share it).  A raw cursor kept past its
    request would otherwise run its statements -- a ``COMMIT`` -- inside
    another request's transaction on the same server session.  The cheap
    case, the thread that made it within its checkout, is two comparisons."""

    #: The driver cursor's own attribute (annotation only: no class value).
    connection: Any
    #: ``(lease, serial, thread)``: the checkout the cursor was made in and
    #: the thread that made it (``_PostgresPooledConnection.cursor``).
    _djpool_guard: tuple[Any, int, Any] = (_NO_LEASE, _NO_CHECKOUT, None)

    # (No __init__: psycopg 3's client cursors are never named, and the
    # driver's own runs without a Python frame of ours.  The named ones note
    # themselves: WatchedPsycopg2Cursor, WatchedServerCursor.)

    def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        lease, serial, thread = self._djpool_guard
        if serial != lease.serial or thread != _thread.get_ident():
            _check_cursor(self)
        # classify()'s remembered answer first (the ORM repeats its SQL text:
        # one look-up, no call); _classify_pg reads and remembers the rest.
        try:
            labels = _memo[("postgresql", query)]
        except (KeyError, TypeError):  # new, or unhashable
            labels = _classify_pg(query, self)
        if labels and labels != _TRANSACTION:
            _note_statement(self.connection, labels)
        return super().execute(query, *args, **kwargs)  # type: ignore[misc]

    def executemany(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        self._djpool_note(query)
        return super().executemany(query, *args, **kwargs)  # type: ignore[misc]

    def _djpool_note(self, query: Any) -> None:
        """Check the caller, then classify *query* (``execute()`` does the
        same inline: it runs for every statement)."""
        self._djpool_check()
        labels = _classify_pg(query, self)
        if labels and labels != _TRANSACTION:
            _note_statement(self.connection, labels)

    def _djpool_check(self) -> None:
        """Check the caller (a call that talks to the session)."""
        lease, serial, thread = self._djpool_guard
        if serial != lease.serial or thread != _thread.get_ident():
            _check_cursor(self)


def _check_cursor(cursor: Any) -> None:
    """The slow path of the cursor check (another thread, another checkout,
    or a cursor made with no checkout): raise the driver's
    error (:meth:`Driver.refused`) unless the call is allowed."""
    lease, serial, _ = cursor._djpool_guard
    if lease is _NO_LEASE:
        # Not made by the pooled connection's cursor(): the connection's check.
        lease = getattr(cursor.connection, "_djpool_lease", None)
        if lease is not None:
            lease.check_caller()
        return
    if serial == lease.serial:
        lease.check_caller()  # this checkout: the holder, or Django's sharing
        return
    if serial == _NO_CHECKOUT and lease.state is not IN_USE:
        return  # the pool's own round trip (no checkout holds the session)
    raise lease.driver.refused(
        "djpoolapp: this cursor was made for a checkout of the connection that "
        "has ended (the request that made it closed its connection; a cursor "
        "of a raw handle kept from an earlier request); it cannot act on the "
        "session, which may be another request's by now (without the app its "
        "connection would be closed)"
    )


class WatchedPsycopgCursor(WatchedCursor):
    """psycopg 3's client cursors (never named: psycopg 3's named cursors
    are WatchedServerCursor): also ``stream()`` and ``copy()``."""

    def stream(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        self._djpool_note(query)
        return super().stream(query, *args, **kwargs)  # type: ignore[misc]

    def copy(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
        self._djpool_note(statement)
        return super().copy(statement, *args, **kwargs)  # type: ignore[misc]


class WatchedPsycopg2Cursor(WatchedCursor):
    """psycopg2's cursors: also ``copy_expert()``, ``copy_from()``,
    ``copy_to()`` and ``callproc()``; a named cursor becomes a
    :class:`_NamedPsycopg2Cursor` (its fetches talk to the server) as the
    connection's ``cursor()`` makes it (``PooledPsycopg2Connection``)."""

    #: The driver cursor's own attribute (annotation only: no class value).
    name: str | None

    def copy_expert(self, sql: Any, *args: Any, **kwargs: Any) -> Any:
        self._djpool_note(sql)
        return super().copy_expert(sql, *args, **kwargs)  # type: ignore[misc]

    def copy_from(self, *args: Any, **kwargs: Any) -> Any:
        self._djpool_check()
        return super().copy_from(*args, **kwargs)  # type: ignore[misc]

    def copy_to(self, *args: Any, **kwargs: Any) -> Any:
        self._djpool_check()
        return super().copy_to(*args, **kwargs)  # type: ignore[misc]

    def callproc(self, procname: Any, *args: Any, **kwargs: Any) -> Any:
        self._djpool_check()
        # A function call: what it does to the session cannot be read.
        _note_statement(self.connection, _UNKNOWN)
        return super().callproc(procname, *args, **kwargs)  # type: ignore[misc]


class _ServerFetches:
    """A named (server-side) cursor's calls that talk to the server besides
    its statements: ``FETCH`` and ``MOVE`` (checked as statements are)."""

    _djpool_check: Any

    def fetchone(self, *args: Any, **kwargs: Any) -> Any:
        self._djpool_check()
        return super().fetchone(*args, **kwargs)  # type: ignore[misc]

    def fetchmany(self, *args: Any, **kwargs: Any) -> Any:
        self._djpool_check()
        return super().fetchmany(*args, **kwargs)  # type: ignore[misc]

    def fetchall(self, *args: Any, **kwargs: Any) -> Any:
        self._djpool_check()
        return super().fetchall(*args, **kwargs)  # type: ignore[misc]

    def scroll(self, *args: Any, **kwargs: Any) -> Any:
        self._djpool_check()
        return super().scroll(*args, **kwargs)  # type: ignore[misc]

    def __iter__(self) -> Any:
        # (Checked when iteration starts; the checkin makes a named cursor
        # of its checkout a ForgottenCursor, whose iteration refuses.)
        self._djpool_check()
        return super().__iter__()  # type: ignore[misc]


class _NamedPsycopg2Cursor(_ServerFetches):
    """Mixin of a psycopg2 cursor that was given a name."""


@functools.cache
def _named_psycopg2(base: type) -> type:
    """The named-cursor class of watched psycopg2 cursor class *base*."""
    return type(f"Named{base.__name__}", (_NamedPsycopg2Cursor, base), {})


@functools.cache
def _watched_psycopg2(factory: Any) -> Any:
    """A psycopg2 ``cursor_factory`` given to ``cursor()``, watched."""
    if not isinstance(factory, type) or issubclass(factory, WatchedCursor):
        return factory  # watched already, or a callable (not a class)
    base: Any = factory
    mixin: Any = WatchedPsycopg2Cursor
    return pooled_class(base, mixin)


class ForgottenCursor:
    """Mixin for a server-side cursor whose checkout ended or that was closed
    on the client only (``forget_cursor``): it reads as closed and every use
    raises the driver's ``InterfaceError`` with the driver's own message,
    without a byte to the session (psycopg2 cannot mark a named cursor
    closed without its ``CLOSE``; psycopg 3's closed server cursor sends
    ``CLOSE`` for its old portal when executed again).  Its server-side part
    is closed by the holder or the checkin."""

    _djpool_message = "cursor already closed"
    _djpool_error: type[Exception] = Exception

    @property
    def closed(self) -> bool:
        return True

    def close(self) -> None:
        return None

    def _djpool_refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise self._djpool_error(self._djpool_message)

    execute = executemany = callproc = stream = _djpool_refuse
    fetchone = fetchmany = fetchall = scroll = _djpool_refuse
    copy = copy_expert = copy_from = copy_to = _djpool_refuse

    def __iter__(self) -> Any:
        return self._djpool_refuse()

    def __next__(self) -> Any:
        return self._djpool_refuse()


_forgotten: dict[type, type] = {}


def _forget(cursor: Any, error: type[Exception], message: str) -> None:
    """Make *cursor* a :class:`ForgottenCursor` (same layout: its
    ``__class__`` is switched to a subclass of its own class)."""
    base = type(cursor)
    if issubclass(base, ForgottenCursor):
        return
    klass = _forgotten.get(base)
    if klass is None:
        namespace = {"_djpool_error": error, "_djpool_message": message}
        klass = _forgotten[base] = type(
            f"Forgotten{base.__name__}", (ForgottenCursor, base), namespace
        )
    cursor.__class__ = klass


class _EndedMySQLConnection:
    """What a mysqlclient cursor kept past its request holds as its
    ``connection`` once the checkin closed it (``MySQLdbDriver
    .close_at_checkin``): stock Django's closed connection, as far as the
    cursor can tell.  Every method of the driver connection raises
    ``OperationalError`` (2006), so mysqlclient's own cursor code fails as
    on a closed connection -- after clearing what it clears first (the
    previous result, ``rowcount``) -- and ``close()`` raises once, as
    stock's does; the client-side helpers of ``mogrify()`` (``literal``,
    ``encoding``, ``client_flag``) answer, as on a closed connection; ``open``
    is 0.  Nothing reaches the session, which is another request's by now."""

    __slots__ = ("_djpool_conn", "_djpool_error")

    _CLIENT_SIDE = frozenset(
        {"encoding", "literal", "string_literal", "escape", "escape_string",
         "client_flag", "converter", "charset"}
    )  # fmt: skip

    def __init__(self, conn: Any, error: type[Exception]) -> None:
        self._djpool_conn = conn
        self._djpool_error = error

    def __repr__(self) -> str:
        return f"<closed {type(self._djpool_conn).__name__} (its request ended)>"

    def _djpool_refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise self._djpool_error(
            2006,
            "djpoolapp: this cursor's request ended (its connection went back "
            "to the pool; without the app it would be closed)",
        )

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._djpool_conn, name)
        if name in self._CLIENT_SIDE:
            return value
        if name == "open":
            return 0
        return self._djpool_refuse if callable(value) else value


class WatchedServerCursor(_ServerFetches, WatchedCursor):
    """psycopg 3's named cursors (``connection.server_cursor_factory``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _note_named_cursor(self.connection)


def _classify_pg(query: Any, cursor: Any) -> frozenset[str]:
    """``classify()`` for what a psycopg cursor accepts: text, bytes, or a
    composed query (``psycopg.sql`` / ``psycopg2.sql``), rendered with the
    cursor's own quoting; anything else cannot be read, so it is "unknown"."""
    if isinstance(query, (str, bytes)):
        return classify("postgresql", query)
    try:
        text = query.as_string(cursor)
    except Exception:
        return _UNKNOWN
    return classify("postgresql", text)


_UNKNOWN = frozenset({"unknown"})
#: PostgreSQL knows its transaction state exactly: this label adds nothing.
_TRANSACTION = frozenset({"transaction"})


def _note_statement(conn: Any, labels: frozenset[str]) -> None:
    lease = getattr(conn, "_djpool_lease", None)
    if lease is not None:
        lease.note_statement(labels)


def _note_named_cursor(conn: Any) -> None:
    lease = getattr(conn, "_djpool_lease", None)
    if lease is not None:
        lease.named_cursors = True


class PooledMySQLConnection(PooledConnection):
    """mysqlclient connection that watches the statements it runs.

    Every statement goes through ``query()``, where :func:`djpoolapp.sql.classify`
    labels it (a substring test for plain DML, about 1.5 µs).  mysqlclient
    cannot tell whether a transaction is open, and MySQL keeps session state
    (variables, the current database, temporary tables, locks, the isolation
    level Django set) across a checkin.  So:

    - ``transaction`` sets :attr:`_djpool_txn_suspect`: the checkin rolls back;
    - any other label adds to :attr:`_djpool_session_changes` (and clears
      :attr:`_djpool_session_ready`, so Django's set-up runs again): the
      checkin does not hand such a session to the next request (see
      :meth:`MySQLdbDriver.checkin_problem`).

    The statements mysqlclient's own ``__init__`` and Django's
    ``init_connection_state()`` run are the baseline, not changes (see
    :meth:`MySQLdbDriver.connect` and :meth:`_djpool_setting_up`).
    """

    #: Set by Django's connection set-up; cleared by any session change.
    _djpool_session_ready = False
    #: A statement may have opened a transaction (BEGIN, START, XA, CALL,
    #: SET autocommit, or one the classifier could not read).
    _djpool_txn_suspect = False
    #: Labels (:data:`djpoolapp.sql.LABELS`) of the session changes seen since
    #: the connection was opened; empty: its session is as Django set it up.
    _djpool_session_changes: frozenset[str] = frozenset()

    # (Lease.check_caller, see PooledConnection.)  Guarded besides query(),
    # send_query(), select_db() and set_character_set() below: every other
    # call that sends a command on the session (mysqlclient has no lock: one
    # from another thread would also interleave with the holder's protocol
    # exchange) and the client-side settings that decide how the holder's
    # statements and rows are encoded and built.  begin(), set_sql_mode()
    # and show_warnings() go through query().  Not guarded:
    # store_result(), use_result(), next_result(), discard_result() (they
    # read what a statement of this checkout left, and the holder's cursors
    # call them for every statement: a thread that cannot send a statement
    # has nothing of its own to read), reads (insert_id(), get_autocommit(),
    # escape(), ...), the ``encoders`` dictionary (a mutable container).
    _djpool_guarded_properties = ("converter",)
    _djpool_guarded_fields = ("cursorclass", "encoding")
    _djpool_guarded_methods = (
        "change_user", "set_server_option", "kill", "ping", "stat",
        "shutdown", "dump_debug_info", "read_query_result",
    )  # fmt: skip

    @property
    def _djpool_session_dirty(self) -> bool:
        """Whether the session may differ from a freshly set-up one."""
        return bool(self._djpool_session_changes)

    #: A statement of this connection may have left warnings or an error in
    #: the session's diagnostics area (``SHOW WARNINGS`` / ``SHOW ERRORS``,
    #: ``@@warning_count``, ``GET DIAGNOSTICS``), which outlives the checkin:
    #: the checkin then clears it (:meth:`_djpool_clear_diagnostics`).
    _djpool_diagnostics = False

    def query(self, query: bytes | str) -> Any:
        # _djpool_watch inline (every statement of every cursor passes here):
        # the check, then classify()'s remembered answer or classify().  Only
        # the case Lease.check_caller always passes -- the holder's own
        # thread during its checkout -- is decided here; any other calls it.
        lease = self._djpool_lease
        if lease is not None:
            if lease.state is IN_USE:
                try:
                    holder = lease.owner() is _owners.token  # type: ignore[misc]
                except (AttributeError, TypeError):
                    holder = False
            else:
                holder = False
            if not holder:
                lease.check_caller()
        try:
            labels = _memo[("mysql", query)]
        except (KeyError, TypeError):  # new, or unhashable
            labels = classify("mysql", query)
        if labels:
            self._note_statement(labels)
        try:
            # The previous statement's warnings (its reply is read in full by
            # now; the checkin reads the last one's): client-side, no round
            # trip.  A statement without warnings does not clear the area.
            # (_djpool_note_warnings inline.)
            if self.warning_count():  # type: ignore[attr-defined]
                self._djpool_diagnostics = True
            return super().query(query)  # type: ignore[misc]
        except BaseException:
            self._djpool_diagnostics = True  # an error is in the area too
            raise

    # COMMIT, ROLLBACK and SET autocommit are sent by the C client, not
    # query(): the warnings of the statement before them (an INSERT IGNORE
    # that atomic() commits) are noted here, since their replies carry none.
    def _djpool_note_warnings(self) -> None:
        if self.warning_count():  # type: ignore[attr-defined]
            self._djpool_diagnostics = True

    def commit(self) -> None:
        self._djpool_note_warnings()
        super().commit()

    def rollback(self) -> None:
        self._djpool_note_warnings()
        super().rollback()

    def autocommit(self, on: bool) -> Any:
        lease = self._djpool_lease
        if lease is not None:
            lease.check_caller()
        self._djpool_note_warnings()
        return super().autocommit(on)  # type: ignore[misc]

    def store_result(self) -> Any:
        # An error in the middle of a result (``Subquery returns more than 1
        # row``) is raised here, not by query().
        try:
            return super().store_result()  # type: ignore[misc]
        except BaseException:
            self._djpool_diagnostics = True
            raise

    def _djpool_clear_diagnostics(self) -> None:
        """Empty the session's diagnostics area (one round trip, run by the
        checkin): MariaDB and MySQL keep a statement's warnings and errors
        until a later statement that uses a table, so ``DO 0`` or
        ``SELECT 1`` would not do; a derived table does."""
        self._djpool_pool_statements += 1
        super().query(b"SELECT 1 FROM (SELECT 1) AS djpool_clear")  # type: ignore[misc]
        super().store_result()  # type: ignore[misc]
        self._djpool_diagnostics = False

    def _djpool_watch(self, query: bytes | str) -> None:
        """Every statement sent: only by the checkout's own thread, and
        classified (Lease.check_caller, sql.classify)."""
        lease = self._djpool_lease
        if lease is not None:
            lease.check_caller()
        labels = classify("mysql", query)
        if labels:
            self._note_statement(labels)

    def _note_statement(self, labels: frozenset[str]) -> None:
        if "transaction" in labels:
            self._djpool_txn_suspect = True
            labels = labels - _TRANSACTION
        if labels:
            self._djpool_session_ready = False
            self._djpool_session_changes = self._djpool_session_changes | labels

    def send_query(self, query: bytes | str) -> Any:
        # The asynchronous half of query() (send_query + read_query_result):
        # the same statements, watched the same way (its warnings and errors
        # are read by read_query_result(): assumed).
        self._djpool_watch(query)
        self._djpool_diagnostics = True
        return super().send_query(query)  # type: ignore[misc]

    def select_db(self, db: str) -> Any:
        lease = self._djpool_lease
        if lease is not None:
            lease.check_caller()
        self._note_statement(_USE)
        return super().select_db(db)  # type: ignore[misc]

    def set_character_set(self, *args: Any, **kwargs: Any) -> Any:
        # mysql_set_character_set() changes the session without query().
        lease = self._djpool_lease
        if lease is not None:
            lease.check_caller()
        self._note_statement(_SET)
        return super().set_character_set(*args, **kwargs)  # type: ignore[misc]

    @contextlib.contextmanager
    def _djpool_setting_up(self) -> Iterator[None]:
        """Django's own session set-up: what it runs is the baseline."""
        changes = self._djpool_session_changes
        yield
        self._djpool_session_changes = changes
        self._djpool_session_ready = True


_TRANSACTION = frozenset({"transaction"})
_USE = frozenset({"use"})
_SET = frozenset({"set"})


def _gil_holding_poll() -> Any:
    """libc's ``poll`` called through ``ctypes.PyDLL``, which (unlike
    ``CDLL`` and ``select.poll``) keeps the GIL during the call, with errno
    saved; None where there is no ctypes or no libc ``poll`` (Windows)."""
    try:
        import ctypes

        function = ctypes.PyDLL(None, use_errno=True).poll
    except (ImportError, AttributeError, OSError, TypeError):
        return None
    function.restype = ctypes.c_int
    return function


_POLL = _gil_holding_poll()
if _POLL is not None:
    import ctypes

    #: One ``struct pollfd {int fd; short events; short revents;}`` as two C
    #: ints (cheaper to build than a ctypes Structure): the second holds
    #: ``events`` in the half that comes first in memory, ``revents`` 0.
    _POLLFD = ctypes.c_int * 2
    _get_errno = ctypes.get_errno
_POLL_IN = getattr(select, "POLLIN", 0) | getattr(select, "POLLPRI", 0)
_POLL_EVENTS = _POLL_IN if sys.byteorder == "little" else _POLL_IN << 16
_FD_LIMIT = 2**31  # a C int


def _has_pending_input(fd: int) -> bool:
    """True when the socket has data or EOF waiting: for an idle connection
    that means the server said something, usually that it closed it.  Also
    True for a descriptor that is closed, invalid or negative: "cannot tell",
    so that the caller's real ping decides.

    The check is a zero-timeout poll(2), which never blocks.  It runs at
    every checkout, by the thread that has just been given the connection:
    ``select.poll`` releases the GIL around it, and with more threads than
    CPUs another thread may then take the interpreter while this one holds
    a pooled connection it cannot use.  libc's poll through ``ctypes.PyDLL``
    keeps the GIL (about 1 µs, as ``select.poll``); a poll interrupted by a
    signal is retried, as Python's own are (PEP 475).  Measured (Django 6.1,
    Python 3.13, 8 threads on 4 connections, 6 paired rounds each): +3 %
    requests/s on PostgreSQL and on MariaDB, within the noise of a single
    round.  Being a direct system call with no timeout, it bypasses gevent's
    and eventlet's patched ``select`` safely.  ``select.select`` is the
    fallback where there is no libc poll."""
    if not 0 <= fd < _FD_LIMIT:
        return True
    if _POLL is not None:
        pollfd = _POLLFD(fd, _POLL_EVENTS)
        while True:
            result: int = _POLL(pollfd, 1, 0)
            if result >= 0:
                return result > 0
            error = _get_errno()
            if error != errno.EINTR:
                raise OSError(error, f"poll() on file descriptor {fd}")
    try:
        readable, _, _ = select.select([fd], [], [], 0)
    except (OSError, ValueError):  # closed, or beyond select()'s FD_SETSIZE
        return True
    return bool(readable)


_system_random = random.SystemRandom()


def _count_pool_statement(conn: Any) -> None:
    """Count a statement or command the pool is about to send on *conn*
    (:attr:`PooledConnection._djpool_pool_statements`)."""
    try:
        conn._djpool_pool_statements += 1
    except (AttributeError, TypeError):  # not a pooled connection
        pass


class Driver:
    """Base adapter; subclasses cover one DB-API module each."""

    #: ``__name__`` of the DB-API module this adapter handles.
    module_name = ""
    vendor = ""
    #: Its connections note statements that change session state, so that
    #: Django's session set-up can be skipped when nothing changed.
    tracks_session_statements = False

    def __init__(self, module: ModuleType) -> None:
        self.module = module

    def __repr__(self) -> str:
        return f"<{type(self).__name__} for {self.module_name}>"

    # -- opening -----------------------------------------------------------
    def connect(self, kwargs: dict[str, Any]) -> Any:
        raise NotImplementedError

    def refused(self, message: str) -> Exception:
        """The error for a use of the connection the pool refuses (a raw
        handle or cursor kept past its request: ``Lease.check_caller``, the
        cursor check), with djpoolapp's *message*: of the class the driver
        raises when a closed connection is used, as stock Django's handle
        would be closed by then (psycopg2: ``InterfaceError``; psycopg 3:
        ``OperationalError``; mysqlclient: ``OperationalError`` 2006;
        sqlite3: ``ProgrammingError``).  Django's cursor wrapper raises it as
        Django's class of that name.  Not this: a psycopg 3 server-side
        cursor the checkin closed raises the driver's ``InterfaceError`` for
        a closed cursor, where stock Django's would report the closed
        connection (mysqlclient's cursors: ``close_at_checkin``)."""
        return self.module.InterfaceError(message)  # type: ignore[no-any-return]

    def can_pool(self, kwargs: dict[str, Any]) -> bool:
        """False for connect arguments that must never be pooled."""
        return True

    # -- state -------------------------------------------------------------
    def is_broken(self, conn: Any) -> bool:
        """Known unusable without a round trip (closed or failed)."""
        return False

    def in_transaction(self, conn: Any) -> bool | None:
        """Whether a transaction is open, from client-side state; None: unknown."""
        return None

    def socket_identity(self, conn: Any) -> tuple[int, int, int] | None:
        """``(fd, device, inode)`` of the connection's socket, recorded when
        it is opened (see :meth:`socket_fd`); None if it has none."""
        try:
            fd = conn.fileno()
            stat = os.fstat(fd)
        except Exception:
            return None
        return fd, stat.st_dev, stat.st_ino

    def socket_fd(self, conn: Any) -> int | None:
        """The connection's socket descriptor, or None if it has none open.

        After a lost connection mysqlclient closes its socket but keeps
        reporting the old number, which the process may since have given
        to another file or socket: the number is trusted only while it
        still names the socket recorded at connect time.
        """
        try:
            fd = int(conn.fileno())
        except Exception:
            return None
        identity = getattr(conn, "_djpool_socket", None)
        if identity is None:
            return fd if fd >= 0 else None
        try:
            stat = os.fstat(fd)
        except OSError:
            return None
        same = (fd, stat.st_dev, stat.st_ino) == identity
        return fd if same else None

    def in_helper_thread(self, conn: Any) -> bool:
        """Whether the calling thread is one the driver itself started to
        work on *conn* for whoever holds it (see
        :meth:`PsycopgDriver.in_helper_thread`): such a thread may use a
        checked-out connection, as the holder's own thread may."""
        return False

    def has_pending_input(self, conn: Any) -> bool:
        try:
            return _has_pending_input(conn.fileno())
        except Exception:
            return True  # cannot tell: let the real ping decide

    # -- the pool's own round trips: each ends within ping_timeout ----------
    def ping(self, conn: Any) -> None:
        """One round trip; raise if the connection does not answer.

        Bounded by the pool's ``ping_timeout`` (see :mod:`djpoolapp.deadline`):
        on a silent network it raises ``RoundTripTimeout`` after that many
        seconds instead of blocking until the kernel gives up.
        """
        _count_pool_statement(conn)
        with bounded(conn, "pre-ping"):
            self._ping(conn)

    def end_transaction(self, conn: Any, commit: bool = False) -> None:
        """Commit or roll back whatever transaction may be open, within
        ``ping_timeout`` (as :meth:`ping`)."""
        _count_pool_statement(conn)
        with bounded(conn, "commit" if commit else "rollback"):
            conn.commit() if commit else conn.rollback()

    def _ping(self, conn: Any) -> None:
        """The driver's round trip behind :meth:`ping`, unbounded."""
        raise NotImplementedError

    def prepare_for_setup(self, conn: Any) -> None:
        """Put a reused *conn* in the client-side state the driver's
        ``connect()`` gives a new connection, right before Django's own
        set-up runs on it (``get_new_connection()``, then
        ``init_connection_state()`` and ``set_autocommit()``), so that the
        set-up has the effect it has on a fresh connection.  Only the
        holder's thread calls it, during its checkout (``Registry.connect``).
        Nothing to do for most drivers."""

    # -- checkin -----------------------------------------------------------
    def autocommit(self, conn: Any) -> bool | None:
        """Whether the driver connection is in autocommit mode, read
        client-side (no round trip); None when that cannot be told (the
        connection then never parks, see :mod:`djpoolapp.lease`)."""
        return None

    def session_changes(self, conn: Any) -> frozenset[str]:
        """Labels (:data:`djpoolapp.sql.LABELS`) of the session changes the
        application made since the connection was opened or last reset;
        empty when none were seen or the driver does not watch statements."""
        return frozenset()

    def discard_pending_results(self, conn: Any) -> None:
        """Read and drop results the application left unread, so that the
        next statement does not fail; raise if only closing can do that."""

    def checkin_problem(self, conn: Any) -> Exception | None:
        """Why a returned connection must be invalidated rather than pooled
        (:class:`UnreadResults`), or None.  Session changes are the lease's
        business (reset, or close when a reset cannot be done in place).

        Called by the checkin before the rollback; drops unread results on
        the way (no round trip when there are none).
        """
        try:
            self.discard_pending_results(conn)
        except Exception as error:
            return UnreadResults(f"unread results left on it: {error}")
        return None

    # -- session state ---------------------------------------------------
    def snapshot(self, conn: Any) -> Any:
        """Driver-side session attributes (read client-side, no round trip)
        that outlive a checkin; the lease compares them at checkin with their
        value after Django's first set-up of the connection."""
        return None

    def session_changed(self, conn: Any) -> bool:
        """Whether the driver connection itself saw a statement that may have
        changed session state since Django's set-up (mysqlclient)."""
        return False

    def reset_session(self, conn: Any, snapshot: Any) -> bool:
        """Give the session the state a fresh connection has, in one round
        trip; restore the driver-side attributes to *snapshot*.  Return False
        when it cannot be done in place: the pool then closes the connection.
        Called at checkin, with no transaction open."""
        return False

    def reseed(self, conn: Any) -> None:
        """After :meth:`reset_session`, when a statement of the checkout may
        have seeded the session's random number generator (``sql.RESEED_AFTER``,
        or ``reset_session="always"``): seed it from the OS, as a new
        session's is (one round trip; nothing to do for most servers)."""

    def close_server_cursors(self, conn: Any) -> None:
        """Close every server-side cursor of the session (one round trip)."""

    def left_open(self, cursor: Any) -> bool:
        """Whether the checkin must close or forget *cursor*, a live cursor
        of the ending checkout (``Lease._return``).  Default: always; the
        PostgreSQL drivers skip a closed client-side cursor, which holds
        nothing and sends nothing if used again."""
        return True

    def forget_cursor(self, cursor: Any) -> None:
        """Close *cursor* on the client only: not a byte reaches the session,
        which may be another request's by now, or in use by its holder in
        another thread (as closing a cursor of a closed connection in stock
        Django sends nothing).  The checkin closes what it left on the
        session.  Default: the driver's ``close()``, which sends nothing for
        client-side cursors (sqlite3)."""
        cursor.close()

    def close_at_checkin(self, cursor: Any) -> None:
        """The checkin closes *cursor*, left open by its ending checkout, so
        that a later use fails as a cursor of stock Django's closed
        connection does, without a byte to the session (:meth:`forget_cursor`
        runs whatever ``close()`` raised).  Default: ``close()`` (the
        PostgreSQL drivers' cursors check their checkout at every call:
        ``WatchedCursor``)."""
        try:
            cursor.close()
        finally:
            self.forget_cursor(cursor)

    def cursor_name(self, cursor: Any) -> str | None:
        """The name of a server-side (named) cursor, else None."""
        return None

    def close_named_cursors(self, conn: Any, names: list[str]) -> None:
        """Close the server-side cursors *names* (outside a transaction; one
        that no longer exists is ignored)."""

    def busy(self, conn: Any) -> bool:
        """True while the driver is inside a call on *conn* (a finaliser the
        garbage collector runs in the middle of one must not call it)."""
        return False

    def neutralise(self, conn: Any, devnull: int) -> None:
        """After fork: point the inherited socket at /dev/null so that nothing
        the child does (close, GC) reaches the parent's server session."""
        fd = self.socket_fd(conn)
        if fd is not None:
            os.dup2(devnull, fd)


class PostgresDriver(Driver):
    """What psycopg 3 and psycopg2 share."""

    vendor = "postgresql"

    def autocommit(self, conn: Any) -> bool | None:
        return bool(conn.autocommit)

    def _ping(self, conn: Any) -> None:
        # In autocommit, so that the ping never leaves a transaction open
        # (Django's next `autocommit = True` would fail on INTRANS).  Both
        # drivers switch autocommit client-side, without a round trip.
        autocommit = conn.autocommit
        if not autocommit:
            conn.autocommit = True
        try:
            with conn.cursor() as cursor:
                cursor.execute("SELECT 1")
        finally:
            if not autocommit and not conn.closed:
                conn.autocommit = False

    def _run_in_autocommit(self, conn: Any, statement: str) -> None:
        autocommit = conn.autocommit
        if not autocommit:
            conn.autocommit = True
        try:
            with conn.cursor() as cursor:
                cursor.execute(statement)
        finally:
            if not autocommit and not conn.closed:
                conn.autocommit = False

    def reset_session(self, conn: Any, snapshot: Any) -> bool:
        # DISCARD ALL (PgBouncer's server_reset_query): RESET ALL, SET
        # SESSION AUTHORIZATION DEFAULT (undoes SET ROLE), DEALLOCATE ALL,
        # CLOSE ALL, UNLISTEN *, advisory locks, temp tables, plan caches.
        # psycopg 3 empties its prepared-statement cache when it sees it.
        # (It does not reseed random(): see reseed().)
        if not self.restore(conn, snapshot):
            return False  # an attribute that cannot be set back: close it
        self._run_in_autocommit(conn, "DISCARD ALL")
        return True

    def reseed(self, conn: Any) -> None:
        # A new session's random() is seeded from a strong random source;
        # after setseed() it is predictable, and DISCARD ALL keeps that.
        # (One statement: psycopg 3 cannot send DISCARD ALL with it.)
        seed = _system_random.uniform(-1.0, 1.0)
        self._run_in_autocommit(conn, f"SELECT setseed({seed!r})")

    def close_server_cursors(self, conn: Any) -> None:
        self._run_in_autocommit(conn, "CLOSE ALL")

    def cursor_name(self, cursor: Any) -> str | None:
        name = getattr(cursor, "name", None)  # psycopg2: None when unnamed
        return name if isinstance(name, str) and name else None

    def close_named_cursors(self, conn: Any, names: list[str]) -> None:
        with conn.cursor() as cursor:
            for name in names:
                quoted = '"' + name.replace('"', '""') + '"'
                try:
                    cursor.execute(f"CLOSE {quoted}")
                except self.module.Error:  # gone with its transaction
                    pass

    def restore(self, conn: Any, snapshot: Any) -> bool:
        """Set the driver-side session attributes back to *snapshot*; False
        when one of them cannot be (the connection is then closed)."""
        return True


class PsycopgDriver(PostgresDriver):
    """psycopg 3."""

    module_name = "psycopg"

    def refused(self, message: str) -> Exception:
        # psycopg 3 on a closed connection: OperationalError("the connection
        # is closed").
        return self.module.OperationalError(message)  # type: ignore[no-any-return]

    def left_open(self, cursor: Any) -> bool:
        return not cursor.closed or isinstance(cursor, self.module.ServerCursor)

    def in_helper_thread(self, conn: Any) -> bool:
        """Whether the calling thread is the worker psycopg's
        ``QueuedLibpqWriter`` started for a ``COPY`` on *conn*
        (``cursor.copy(..., writer=QueuedLibpqWriter(cursor))``, psycopg
        3.1+; any cursor, class-built ones included): it writes the holder's
        ``COPY`` data through ``conn.wait()`` while the holder's thread
        formats the rows.  Told by the thread itself: it is the writer's own
        worker (``writer._worker``, whose target is the writer's bound
        ``worker``), and the writer was tagged with the checkout running now
        when its worker was started by a caller that may use *conn* then
        (:func:`djpoolapp.patch.tag_queued_writer`).  A writer an earlier
        request left running is refused, as that request's other handles
        are.  (A guard against mistakes, not against code in the process
        that forges these attributes.)"""
        thread = threading.current_thread()
        writer = getattr(getattr(thread, "_target", None), "__self__", None)
        if writer is None or getattr(writer, "_worker", None) is not thread:
            return False
        tag = getattr(writer, "_djpool_checkout", None)
        lease = getattr(conn, "_djpool_lease", None)
        return (
            lease is not None
            and tag is not None
            and tag[0] is lease
            and getattr(writer, "connection", None) is conn
            and bool(lease.is_current(tag[1]))
        )

    def forget_cursor(self, cursor: Any) -> None:
        # The client-side part of close(): a named cursor's own close() would
        # send CLOSE (into another request's transaction); marked closed, the
        # cursor never warns "deleted while still open" either.  A closed
        # server cursor's execute() still sends CLOSE for its old portal
        # before it checks that it is closed: it becomes a ForgottenCursor.
        self.module.Cursor.close(cursor)
        if isinstance(cursor, self.module.ServerCursor):
            _forget(cursor, self.module.InterfaceError, "the cursor is closed")

    def busy(self, conn: Any) -> bool:
        # psycopg 3 holds the connection's (non-reentrant) lock during every
        # call; a server-side cursor's close() takes it.
        try:
            return conn.lock.locked()  # type: ignore[no-any-return]
        except AttributeError:  # (no lock: not a psycopg 3 connection)
            return False

    def connect(self, kwargs: dict[str, Any]) -> Any:
        connection_class: Any = pooled_class(
            self.module.Connection, PooledPsycopgConnection
        )
        conn = connection_class.connect(**kwargs)
        conn.cursor_factory = pooled_class(conn.cursor_factory, WatchedPsycopgCursor)
        conn.server_cursor_factory = pooled_class(
            conn.server_cursor_factory, WatchedServerCursor
        )
        return conn

    def snapshot(self, conn: Any) -> Any:
        # Client-side attributes a raw ``connection.connection`` can change
        # and that a new connection would have as Django set them up: the
        # session characteristics, and how rows, cursors and prepared
        # statements are made (a dict_row row_factory breaks the ORM).
        return (
            conn.read_only, conn.isolation_level, conn.deferrable,
            conn.row_factory, conn.cursor_factory, conn.server_cursor_factory,
            conn.prepare_threshold, conn.prepared_max,
        )  # fmt: skip

    def restore(self, conn: Any, snapshot: Any) -> bool:
        if snapshot is not None and self.snapshot(conn) != snapshot:
            (
                conn.read_only, conn.isolation_level, conn.deferrable,
                conn.row_factory, conn.cursor_factory, conn.server_cursor_factory,
                conn.prepare_threshold, conn.prepared_max,
            ) = snapshot  # fmt: skip
        return True

    def is_broken(self, conn: Any) -> bool:
        return bool(conn.closed or conn.broken)

    def __init__(self, module: ModuleType) -> None:
        super().__init__(module)
        self._idle = module.pq.TransactionStatus.IDLE

    def in_transaction(self, conn: Any) -> bool:
        # pgconn's field is what conn.info reports, without building an
        # enum member on every call (0.02 µs instead of 0.6 µs); IDLE is
        # looked up once (in_transaction runs at every transaction-mode
        # release).
        return conn.pgconn.transaction_status != self._idle  # type: ignore[no-any-return]


class Psycopg2Driver(PostgresDriver):
    """psycopg2 (and psycopg2-binary)."""

    module_name = "psycopg2"

    def left_open(self, cursor: Any) -> bool:
        return not cursor.closed or cursor.name is not None

    def forget_cursor(self, cursor: Any) -> None:
        # A client cursor closes without a round trip.  A named one cannot be
        # marked closed without its CLOSE: it becomes a ForgottenCursor,
        # closed as far as its users can tell (no statement, no fetch).
        if getattr(cursor, "name", None) is None:
            cursor.close()
        else:
            _forget(cursor, self.module.InterfaceError, "cursor already closed")

    def connect(self, kwargs: dict[str, Any]) -> Any:
        kwargs = dict(kwargs)
        base = (
            kwargs.pop("connection_factory", None) or self.module.extensions.connection
        )
        conn = self.module.connect(
            connection_factory=pooled_class(base, PooledPsycopg2Connection), **kwargs
        )
        conn.cursor_factory = pooled_class(
            conn.cursor_factory or self.module.extensions.cursor, WatchedPsycopg2Cursor
        )
        return conn

    def snapshot(self, conn: Any) -> Any:
        # The session characteristics, the cursor class and the client
        # encoding (psycopg2 keeps its own copy of it: after DISCARD ALL the
        # server's and psycopg2's would disagree).
        return (
            conn.readonly, conn.isolation_level, conn.deferrable,
            conn.cursor_factory, conn.encoding,
        )  # fmt: skip

    def prepare_for_setup(self, conn: Any) -> None:
        # psycopg2 applies session characteristics set while in autocommit
        # (Django's get_new_connection() sets ``isolation_level`` from
        # OPTIONS) as session-wide defaults (SET default_transaction_isolation
        # and friends), so that every autocommit statement would run at that
        # level; set before autocommit is on, as on a new connection, they
        # are only used to BEGIN Django's transactions.  Turning autocommit
        # off sets those defaults back (one round trip, only when they are
        # not the server's).
        if conn.autocommit:
            conn.autocommit = False

    def restore(self, conn: Any, snapshot: Any) -> bool:
        if snapshot is None or self.snapshot(conn) == snapshot:
            return True
        readonly, isolation_level, deferrable, cursor_factory, encoding = snapshot
        if conn.encoding != encoding:
            return False
        if (conn.readonly, conn.isolation_level, conn.deferrable) != (
            readonly, isolation_level, deferrable,
        ):  # fmt: skip
            # Set outside autocommit, as Django's set-up set them (see
            # prepare_for_setup): in autocommit psycopg2 would make them the
            # session's defaults for every statement.
            autocommit = conn.autocommit
            if autocommit:
                conn.autocommit = False
            conn.set_session(
                isolation_level="DEFAULT"
                if isolation_level is None
                else isolation_level,
                readonly="DEFAULT" if readonly is None else readonly,
                deferrable="DEFAULT" if deferrable is None else deferrable,
            )
            if autocommit:
                conn.autocommit = True
        conn.cursor_factory = cursor_factory
        return True

    def is_broken(self, conn: Any) -> bool:
        return bool(conn.closed)

    def in_transaction(self, conn: Any) -> bool:
        return bool(
            conn.get_transaction_status()
            != self.module.extensions.TRANSACTION_STATUS_IDLE
        )

    def end_transaction(self, conn: Any, commit: bool = False) -> None:
        super().end_transaction(conn, commit)
        if conn.autocommit and self.in_transaction(conn):
            # psycopg2's rollback()/commit() do nothing in autocommit mode,
            # even when a hand-written BEGIN opened a transaction (libpq
            # reports it): end it with the statement itself.
            with bounded(conn, "commit" if commit else "rollback"):
                with conn.cursor() as cursor:
                    cursor.execute("COMMIT" if commit else "ROLLBACK")


class MySQLdbDriver(Driver):
    """mysqlclient (MySQLdb), for MySQL and MariaDB."""

    module_name = "MySQLdb"
    vendor = "mysql"
    tracks_session_statements = True

    def refused(self, message: str) -> Exception:
        # mysqlclient on a closed connection: OperationalError(2006, ...)
        # (CR_SERVER_GONE_ERROR).
        return self.module.OperationalError(2006, message)  # type: ignore[no-any-return]

    def connect(self, kwargs: dict[str, Any]) -> Any:
        from MySQLdb.connections import Connection

        conn = pooled_class(Connection, PooledMySQLConnection)(**kwargs)
        # What mysqlclient ran while connecting (SET NAMES ... COLLATE,
        # SET sql_mode) is the connection's starting state, not a change.
        conn._djpool_session_changes = frozenset()
        conn._djpool_txn_suspect = False
        return conn

    def _driver_cursor(self, cursor: Any) -> Any:
        """The mysqlclient cursor: *cursor*, or the one inside Django's MySQL
        ``CursorWrapper``.  (Not ``getattr(cursor, "cursor", cursor)``: a
        missing attribute of a mysqlclient cursor runs its ``__getattr__``,
        which imports two modules and raises, at every checkin.)"""
        if isinstance(cursor, self.module.cursors.BaseCursor):
            return cursor
        return getattr(cursor, "cursor", cursor)

    def left_open(self, cursor: Any) -> bool:
        inner = self._driver_cursor(cursor)
        if getattr(inner, "connection", None) is None:
            return False  # closed: nothing to do
        if getattr(inner, "_result", None) is not None and isinstance(
            inner, self.module.cursors.CursorUseResultMixIn
        ):
            # An unbuffered cursor (SSCursor, a raw one) still on its result:
            # its close() would read every row left, which could take any
            # time.  Detached here without reading (its later use fails as
            # on stock's closed connection: close_at_checkin); rows left
            # unread make checkin_problem() invalidate the session, as before
            # raw cursors were tracked.
            inner.connection = _EndedMySQLConnection(
                inner.connection, self.module.OperationalError
            )
            return False
        return True

    def forget_cursor(self, cursor: Any) -> None:
        # mysqlclient's close() reads the connection's pending results
        # (another request's, by now): detached first, it reads nothing.
        # (Django's MySQL backend wraps the driver cursor in its own.)
        # Its read rows go, as its own close() discards them.
        inner = self._driver_cursor(cursor)
        inner.connection = None
        inner._result = inner._rows = inner.rownumber = inner.description = None
        cursor.close()

    def close_at_checkin(self, cursor: Any) -> None:
        # Closed, a mysqlclient cursor raises ProgrammingError("cursor
        # closed"); one of stock Django's closed connection raises
        # OperationalError (2006) on every call that would reach the server
        # and keeps the rows it had read: so does a cursor whose checkout
        # ended.  Its close() here reads the holder's own pending results.
        inner = self._driver_cursor(cursor)
        if not isinstance(inner, self.module.cursors.BaseCursor):
            super().close_at_checkin(cursor)
            return
        conn = inner.connection
        read = (
            inner._rows,
            inner.rownumber,
            inner.description,
            inner.description_flags,
        )
        try:
            cursor.close()
        finally:
            (
                inner._rows, inner.rownumber,
                inner.description, inner.description_flags,
            ) = read  # fmt: skip
            inner._result = None
            if conn is not None:
                inner.connection = _EndedMySQLConnection(
                    conn, self.module.OperationalError
                )

    def session_changes(self, conn: Any) -> frozenset[str]:
        changes: frozenset[str] = conn._djpool_session_changes
        return changes

    def discard_pending_results(self, conn: Any) -> None:
        # Result sets a multi-statement or CALL left unread: next_result()
        # answers -1 at once, without I/O, when the server announced none.
        # An unbuffered cursor (SSCursor) still reading rows makes it raise
        # 2014 "Commands out of sync": only its cursor can drop those rows,
        # and reading an unknown number of them could take any time, so the
        # checkin invalidates that connection instead.
        if not conn.open:
            return  # closed: nothing to read (the checkin sees it is broken)
        while conn.next_result() == 0:
            discard = getattr(conn, "discard_result", None)  # mysqlclient >= 2.2
            if discard is not None:
                discard()
            else:
                conn.store_result()

    def checkin_problem(self, conn: Any) -> Exception | None:
        # MySQL has no reset that keeps what the connection was opened with:
        # mysqlclient cannot send COM_RESET_CONNECTION, and COM_CHANGE_USER
        # (0.09 ms) drops what init_command, sql_mode and the collation set.
        # A changed session is closed instead (a reconnect, 0.6 ms here) --
        # rare: only statements the application runs itself change it.
        changes = self.session_changes(conn)
        if changes:
            return SessionChanged(changes)
        problem = super().checkin_problem(conn)
        if (
            problem is None
            and conn.open
            and (conn._djpool_diagnostics or conn.warning_count())
        ):
            # The warnings and errors of the checkout's statements stay in the
            # session's diagnostics area after the checkin: the next request
            # (any thread) would see another request's data in SHOW
            # WARNINGS, where a fresh connection shows none.  Cleared in one
            # bounded round trip when a statement may have left some (the
            # flag, or the last statement's warning count: client-side).
            try:
                with bounded(conn, "clear of the warnings and errors"):
                    conn._djpool_clear_diagnostics()
            except Exception as error:
                return error
        return problem

    def is_broken(self, conn: Any) -> bool:
        return not conn.open

    def autocommit(self, conn: Any) -> bool | None:
        # The status flags of the server's last reply (no round trip).
        return bool(conn.get_autocommit())

    def has_pending_input(self, conn: Any) -> bool:
        # mysqlclient keeps reporting the number of a socket it closed after
        # a lost connection: poll it only while it is still that socket.
        fd = self.socket_fd(conn)
        if fd is None:
            return True  # no socket of its own: let the real ping decide
        try:
            return _has_pending_input(fd)
        except Exception:
            return True

    def in_transaction(self, conn: Any) -> bool:
        # get_autocommit() reads the status flags of the server's last reply.
        return bool(conn._djpool_txn_suspect or not conn.get_autocommit())

    def end_transaction(self, conn: Any, commit: bool = False) -> None:
        super().end_transaction(conn, commit)
        conn._djpool_txn_suspect = False
        if conn.warning_count():
            # ROLLBACK's own ("Some non-transactional changed tables couldn't
            # be rolled back"): not the next request's to see either.
            with bounded(conn, "clear of the warnings and errors"):
                conn._djpool_clear_diagnostics()

    def _ping(self, conn: Any) -> None:
        conn.ping()


class PooledSQLiteConnection(PooledConnection):
    """sqlite3's connection (see :class:`PooledConnection`): also its
    shortcuts that run statements without ``cursor()``."""

    _djpool_guarded_methods = ("execute", "executemany", "executescript")


class SQLiteDriver(Driver):
    """The standard library's sqlite3; pooled only when asked, never in memory."""

    module_name = "sqlite3.dbapi2"
    vendor = "sqlite"

    def refused(self, message: str) -> Exception:
        # sqlite3 on a closed connection: ProgrammingError("Cannot operate on
        # a closed database.").
        return self.module.ProgrammingError(message)  # type: ignore[no-any-return]

    def connect(self, kwargs: dict[str, Any]) -> Any:
        kwargs = dict(kwargs)
        base = kwargs.pop("factory", None) or self.module.Connection
        return self.module.connect(
            factory=pooled_class(base, PooledSQLiteConnection), **kwargs
        )

    def can_pool(self, kwargs: dict[str, Any]) -> bool:
        name = str(kwargs.get("database", ""))
        return not (
            name in ("", ":memory:") or "mode=memory" in name or ":memory:" in name
        )

    def in_transaction(self, conn: Any) -> bool:
        return bool(conn.in_transaction)

    def has_pending_input(self, conn: Any) -> bool:
        return False

    def _ping(self, conn: Any) -> None:
        conn.execute("SELECT 1").close()

    def neutralise(self, conn: Any, devnull: int) -> None:
        pass  # a file, not a server session: nothing to protect


DRIVERS: dict[str, type[Driver]] = {
    cls.module_name: cls
    for cls in (PsycopgDriver, Psycopg2Driver, MySQLdbDriver, SQLiteDriver)
}
DRIVERS["sqlite3"] = SQLiteDriver


def driver_for(module: Any) -> Driver | None:
    """The adapter for a backend's ``Database`` module, or None if unsupported."""
    return _driver_for(getattr(module, "djpool_driver_module", module))


@functools.cache
def _driver_for(module: Any) -> Driver | None:
    cls = DRIVERS.get(getattr(module, "__name__", ""))
    return cls(module) if cls else None
