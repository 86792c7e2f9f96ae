"""What djpoolapp changes in Django's database backends, and how it is undone.

For the backend class of every pooled alias (and the classes it inherits
from, so PostGIS, GIS MySQL and a project's own subclass are covered):

- ``Database``, the DB-API module Django calls (the module global that MySQL
  and SQLite use, and the class attribute PostgreSQL uses as
  ``self.Database``), becomes a :class:`PooledDatabaseModule`: its
  ``connect()`` checks a connection out of the pool of the alias being
  opened; every other attribute, notably the exception classes Django maps,
  is the driver's own object.
- ``get_new_connection()`` records which alias is connecting, so that
  ``connect()`` knows whose pool and options to use.  Django's own code runs
  unchanged around the checkout.
- ``connect()`` is the fast path (``park``, docs/how_it_works.rst): it takes
  back the connection this Django connection parked at its last close, or
  checks one out and, when Django already set it up for the same settings,
  uses it without the rest of ``connect()`` (parking.py); otherwise Django's
  ``connect()`` runs and gets that checked-out connection.  Everything
  Django checks before ``connect()`` (``async_unsafe``, test-case guards)
  runs first.  A backend overriding a method of ``parking.CONNECT_PATH``
  outside Django, or a ``connection_created`` receiver other than type
  registration, turns it off (``parking._parkable``).
- ``_close()`` marks the connection for invalidation when Django saw an error
  on it or closes it inside ``atomic()``, and is the only ``close()`` that
  returns a connection to the pool (``drivers.closing``).
- ``close_if_health_check_failed()`` and ``is_usable()``: a connection
  Django judged unusable is invalidated, never handed out again.
- ``init_connection_state()`` runs as the backend defines it; the statements
  it runs are not session changes (``Lease.in_setup``).  It is skipped only
  right after a checkout of a mysqlclient connection that Django's own
  (not overridden) MySQL set-up already prepared and that ran no
  session-changing statement since (see ``drivers.PooledMySQLConnection``).
- ``create_cursor()`` records whether a cursor of a checkout was a
  server-side (named) one, and tracks a cursor Django made without the
  driver connection's ``cursor()`` (psycopg 3's ``ServerSideCursor``):
  that ``cursor()`` records every other cursor of a checkout, Django's and
  raw ones of ``connection.connection`` alike (closed at checkin, see
  ``drivers.PooledConnection.cursor``).
- ``CursorWrapper.close()`` (Django's cursor, every backend) never acts on a
  session but for the cursor's own checkout, from the thread holding it: a
  cursor whose checkout has ended, or closed by another thread (the garbage
  collector finalising an abandoned ``iterator()``), closes on the client
  only (``Driver.forget_cursor``, ``Lease.orphan``); the holder closes what
  it left on the session at its next cursor close outside a transaction, the
  checkin otherwise.  In ``pool_mode="transaction"`` a close is also a
  release point.
- ``_nodb_cursor()`` (used only to create, clone and drop test databases)
  first disposes the pools, so that idle pooled connections never block
  ``DROP DATABASE`` or ``CREATE DATABASE ... TEMPLATE``.

:func:`uninstall` restores every attribute exactly (each is set through
``hooks.set_hook``).
"""

from __future__ import annotations

import _thread
import functools
import logging
import sys
import time
from collections.abc import Callable
from contextvars import ContextVar
from types import ModuleType
from typing import Any

from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.utils import CursorWrapper

from .drivers import DRIVERS, closing
from .hooks import set_hook, undo_hooks
from .lease import IN_USE, PARKED
from .lease import UNSET as _UNSET
from .parking import (
    _parkable,
    _settings_generation,
    _take,
    from_django,
    set_up_mark,
    want_park,
)
from .pool import registry
from .signals import connection_checked_out
from .txmode import release_if_idle

logger = logging.getLogger("djpoolapp")

#: The Django connection wrapper currently inside ``get_new_connection()``.
_opening: ContextVar[Any] = ContextVar("djpoolapp_opening", default=None)

_installed: set[type] = set()


class PooledDatabaseModule:
    """Stands in for a backend's ``Database`` module; only ``connect`` differs."""

    def __init__(self, module: ModuleType) -> None:
        self.djpool_driver_module = module

    def __getattr__(self, name: str) -> Any:
        return getattr(self.djpool_driver_module, name)

    def __repr__(self) -> str:
        return f"<djpoolapp pooled {self.djpool_driver_module.__name__}>"

    def connect(self, *args: Any, **kwargs: Any) -> Any:
        wrapper = _opening.get()
        if wrapper is None:
            return self.djpool_driver_module.connect(*args, **kwargs)
        return registry.connect(wrapper, self.djpool_driver_module, args, kwargs)


@functools.cache
def _module_proxy(module: ModuleType) -> PooledDatabaseModule:
    return PooledDatabaseModule(module)


def _is_driver_module(value: Any) -> bool:
    return isinstance(value, ModuleType) and value.__name__ in DRIVERS


# -- the wrapped DatabaseWrapper methods ----------------------------------
def _give_back(wrapper: Any, handed: list[Any], keep: Any) -> None:
    """Give back, invalidated, the pooled connections handed to *wrapper*'s
    ``get_new_connection()`` that it does not keep (all but *keep*)."""
    for conn in handed:
        lease = getattr(conn, "_djpool_lease", None)
        if conn is not keep and lease is not None and lease.held_by(wrapper):
            lease.mark_discard("Django's set-up of it failed")
            lease.give_back()


def _wrap_get_new_connection(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def get_new_connection(self: Any, conn_params: dict[str, Any]) -> Any:
        if _opening.get() is self:
            # super() of a project backend's override: the outer call gives
            # back what the override does not keep.
            return original(self, conn_params)
        token = _opening.set(self)
        handed: list[Any] = []
        self._djpool_handed = handed  # Registry.connect appends to it
        try:
            connection = original(self, conn_params)
        except BaseException:
            # The backend's set-up failed after the pool handed it a
            # connection (an invalid OPTIONS value, a round trip that
            # failed): Django never holds it, so nothing would check it in.
            # Stock Django's driver connection is closed when collected.
            _give_back(self, handed, keep=None)
            raise
        else:
            if len(handed) > 1 and any(conn is connection for conn in handed):
                # A project backend that retried (super() again after its own
                # set-up failed) keeps the last one only.
                _give_back(self, handed, keep=connection)
            return connection
        finally:
            self._djpool_handed = None
            _opening.reset(token)

    get_new_connection._djpool_patched = True  # type: ignore[attr-defined]
    return get_new_connection


def _wrap_close(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def _close(self: Any) -> Any:
        connection = self.connection
        lease: Any = getattr(connection, "_djpool_lease", None)
        holder = lease.holder if lease is not None else None
        if holder is None or holder() is not self:
            return original(self)
        if self.errors_occurred or self.in_atomic_block:
            # Django saw an error it did not clear with a successful
            # is_usable(), or the connection is closed mid-transaction while
            # Django keeps a reference to it: never hand it out again.
            lease.mark_discard(
                "Django saw an error on it"
                if self.errors_occurred
                else "closed inside atomic()"
            )
        elif want_park(self, lease):
            # The fast path's checkin (parks, or hands over to a waiter).
            # Django's own _close() (checked by _parkable) would only run the
            # driver connection's close() under wrap_database_errors, which
            # runs this same checkin (PooledConnection.close).
            with self.wrap_database_errors:
                lease.checkin()
            if lease.state is PARKED and lease.holder is holder:
                # (After a hand-over the lease is another thread's.)
                self._djpool_park = lease
                self._djpool_park_generation = _settings_generation[0]
            return None
        token = closing.set(connection)  # this close() checks it in
        try:
            return original(self)
        finally:
            closing.reset(token)

    _close._djpool_patched = True  # type: ignore[attr-defined]
    return _close


def _adoptable(wrapper: Any) -> Any:
    """The alias's pool if *wrapper* may take a connection that another
    Django connection set up (the pool parks, the settings are those the
    pool last saw; ``connect()`` checked ``_parkable`` first), else None."""
    pool = registry.pool_of(wrapper.alias)
    if (
        pool is None
        or not pool.parking
        or pool.retired
        or not wrapper.settings_dict["AUTOCOMMIT"]
        or wrapper.settings_dict != pool.settings_seen
    ):
        return None
    return pool


def _wrap_connect(original: Callable[..., Any], klass: type) -> Callable[..., Any]:
    """The fast path, in Django's ``connect()`` (so that everything Django
    checks before connecting still runs first: ``ensure_connection()``'s
    ``async_unsafe`` check and its "Cannot open a new connection in an atomic
    block", pytest-django's blocker, ``SimpleTestCase``'s refused
    connections).  Take back the connection this wrapper parked, else check
    one out here and, when Django already set it up for the same settings
    (handed over by a checkin while this checkout waited, taken from another
    thread's parking, or idle), use it without the rest of ``connect()``.  A
    checked-out connection that is not set up goes to Django's own
    ``connect()`` (``_djpool_pending``, taken by ``Registry.connect``).  The
    inherited ``connect()`` is looked up at call time (``pool_mode=
    "transaction"`` wraps ``BaseDatabaseWrapper``'s)."""
    own = "connect" in klass.__dict__
    cls: Any = klass
    monotonic, perf_counter = time.monotonic, time.perf_counter
    debug, DEBUG = logger.isEnabledFor, logging.DEBUG

    def connect(self: Any) -> Any:
        found = self.__dict__
        lease = found.get("_djpool_park")
        if (
            lease is not None
            and found.get("connection") is None  # (past txmode's property)
            and found.get("_djpool_pending") is None  # (an outer wrapper ran)
            and _installed  # (a bound method kept past uninstall())
            and _parkable(type(self))
        ):
            # The common case, first: take back the connection this wrapper
            # parked at its last close.
            self._djpool_park = None
            try:
                claimed = _claim(self, lease)
            finally:
                if found.get("_djpool_released"):
                    # Connected or failed: transaction mode's "released"
                    # state ends, as its own connect() wrapper (not reached:
                    # it runs only on Django's connect()) would end it.
                    self._djpool_released = False
            if claimed:
                return None
            lease.release_parked_by(self)  # closed, or settings changed
        fast = None
        try:
            fast = (
                self.connection is None
                and found.get("_djpool_pending") is None  # (an outer wrapper ran)
                and _installed  # (a bound method kept past uninstall())
                and _parkable(type(self))
                and _adopt(self)
            )
        finally:
            if fast is not False and found.get("_djpool_released"):
                self._djpool_released = False  # (as above)
        if fast:
            return None
        try:
            if own:
                return original(self)
            return super(cls, self).connect()
        finally:
            pending = found.get("_djpool_pending")
            if pending is not None:  # connect() failed before taking it
                self._djpool_pending = None
                pending._djpool_lease.give_back()

    def _claim(self: Any, lease: Any) -> bool:
        """True: *self* took back *lease*, the connection it parked (checked
        as a checkout checks it, ``Lease.claim``), and is connected."""
        started = perf_counter()
        pool = lease.pool
        if not (
            self.settings_dict == pool.settings_seen
            and self._djpool_park_generation == _settings_generation[0]
            and lease.claim(self)
        ):
            return False
        _take(self, lease, monotonic, own=True)
        # A checkout for the statistics and metrics, as the one Django's
        # connect() would have made.
        pool.stats.add_checkout_time(perf_counter() - started)
        if connection_checked_out.receivers or debug(DEBUG):
            pool._announce_checkout(lease.conn, 0.0)
        return True

    def _adopt(self: Any) -> bool:
        """Check a connection out; True: Django already set it up for the
        same settings (handed over by a checkin while this checkout waited,
        taken from another thread's parking, or idle), and *self* is
        connected with it, Django's set-up skipped."""
        pool = _adoptable(self)
        if pool is None:
            return False
        conn = pool.checkout(self)
        lease = conn._djpool_lease
        if (
            lease.set_up_for is not None
            and lease.set_up_for == (pool.settings_seen, _settings_generation[0])
            # (a request that turned autocommit off left it off: Django's
            # set_autocommit() in connect() must run)
            and lease.driver.autocommit(conn) is True
        ):
            _take(self, lease, monotonic)
            return True
        self._djpool_pending = conn  # for Django's connect() below
        return False

    connect = functools.wraps(original)(connect)
    connect._djpool_patched = True  # type: ignore[attr-defined]
    connect._djpool_fast_path = True  # type: ignore[attr-defined]
    return connect


def _wrap_close_if_health_check_failed(
    original: Callable[..., Any],
) -> Callable[..., Any]:
    # Django's own (4.2 to 6.1: the base class's, and PostgreSQL's, which
    # returns first for Django's own pool) does nothing when there is no
    # connection, health checks are off or done: it is not called then, on
    # every query.  A project's override always runs.
    djangos_own = from_django(original)

    @functools.wraps(original)
    def close_if_health_check_failed(self: Any) -> Any:
        # (The flags first: the common case never reads ``connection``,
        # which pool_mode="transaction" makes a Python property.)
        if (
            self.health_check_done
            or not self.health_check_enabled
            or (connection := self.connection) is None
        ):
            return None if djangos_own else original(self)
        lease = getattr(connection, "_djpool_lease", None)
        if lease is None:
            return original(self)
        # Django closes it here only when its health check (is_usable(),
        # however the backend or a test defines it) failed: that verdict
        # stands, the connection is invalidated, not returned.
        previous = lease.discard
        lease.discard = "Django's health check (CONN_HEALTH_CHECKS) failed"
        try:
            return original(self)
        finally:
            if self.connection is connection:
                lease.discard = previous

    close_if_health_check_failed._djpool_patched = True  # type: ignore[attr-defined]
    return close_if_health_check_failed


def _wrap_is_usable(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def is_usable(self: Any) -> Any:
        usable = original(self)
        if not usable:
            lease = getattr(self.connection, "_djpool_lease", None)
            if lease is not None and lease.held_by(self):
                lease.mark_discard("Django's is_usable() returned False")
        return usable

    is_usable._djpool_patched = True  # type: ignore[attr-defined]
    return is_usable


def _wrap_init_connection_state(original: Callable[..., Any]) -> Callable[..., Any]:
    # Skipping is exact only for Django's own MySQL set-up: a project's
    # override (or any other backend) always runs.
    skippable = (
        getattr(original, "__module__", "") == "django.db.backends.mysql.base"
        and original.__qualname__ == "DatabaseWrapper.init_connection_state"
    )

    @functools.wraps(original)
    def init_connection_state(self: Any) -> Any:
        connection = self.connection
        lease = getattr(connection, "_djpool_lease", None)
        if lease is None:
            return original(self)
        fresh, lease.fresh = lease.fresh, False
        ready = getattr(connection, "_djpool_session_ready", None)
        if skippable and fresh and ready is True:
            # Right after a checkout of a connection that Django's own
            # MySQL set-up already prepared (same pool: same settings) and
            # that ran no session-changing statement since.
            set_up_mark(lease, self)
            return None
        lease.in_setup = True
        try:
            setting_up = getattr(connection, "_djpool_setting_up", None)
            if setting_up is None:
                result = original(self)
            else:
                with setting_up():  # Django's set-up statements are the baseline
                    result = original(self)
        finally:
            lease.in_setup = False
        if getattr(connection, "_djpool_session_ready", None) is False:
            connection._djpool_session_ready = True  # Django's own SETs
        if lease.snapshot is _UNSET:
            lease.snapshot = lease.driver.snapshot(connection)
        set_up_mark(lease, self)
        return result

    init_connection_state._djpool_patched = True  # type: ignore[attr-defined]
    return init_connection_state


def _wrap_create_cursor(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def create_cursor(self: Any, name: Any = None) -> Any:
        cursor = original(self, name)
        # The pooled connection's cursor() already made it the checkout's
        # (``PooledConnection.cursor``: closed at checkin if still open, a
        # cursor must not outlive the checkout); Django's MySQL wrapper
        # reads the tag of the driver cursor inside it.  A cursor made some
        # other way (Django's psycopg 3 ServerSideCursor, a backend's own
        # class) is tracked here.
        tracked = getattr(cursor, "_djpool_checkout", None) is not None
        if name or not tracked:
            lease = getattr(self.connection, "_djpool_lease", None)
            if lease is not None:
                if not tracked:
                    lease.track_cursor(cursor)
                if name:
                    lease.named_cursors = True  # server-side: reset at checkin
        return cursor

    create_cursor._djpool_patched = True  # type: ignore[attr-defined]
    return create_cursor


def _cursor_close(original: Callable[..., Any] | None) -> Callable[..., Any]:
    """``CursorWrapper.close``.  Django defines none (``__getattr__`` reaches
    the driver cursor's): one is added, and removed by :func:`uninstall`; a
    later Django's own *original* would be wrapped."""

    def close_driver_cursor(wrapper: Any) -> Any:
        return wrapper.cursor.close()

    plain_close = original or close_driver_cursor

    def close(self: Any) -> Any:
        cursor = self.cursor
        checkout = getattr(cursor, "_djpool_checkout", None)  # (cursor_checkout)
        if checkout is None:
            return plain_close(self)  # not a pooled connection's cursor
        lease, serial = checkout
        if lease.serial != serial or lease.state is not IN_USE:
            # Its checkout ended (Lease.is_current; the checkin closed it,
            # unless the garbage collector had hidden it then: it clears weak
            # references before it runs finalisers): the session may be
            # another request's, and stock Django's closed connection would
            # send nothing.
            lease.driver.forget_cursor(cursor)
            return None
        db = self.db
        if (
            db._thread_ident != _thread.get_ident()  # (txmode.other_thread)
            and not db.allow_thread_sharing
        ) or lease.driver.busy(lease.conn):
            # A thread that does not hold the connection closes it (the
            # garbage collector, or an event loop's async-generator hook,
            # finalising an abandoned iterator()/aiterator(): a client went
            # away mid-stream) while the holder may be using the connection;
            # or a finaliser runs inside a driver call on it.
            lease.orphan(cursor)
            return None
        try:
            if original is None:
                return cursor.close()
            return original(self)
        finally:
            if (
                lease.orphans
                and db.autocommit
                and not db.in_atomic_block
                and lease.is_current(serial)
            ):
                lease.close_orphans()
            if getattr(db, "_djpool_txmode", False):
                release_if_idle(db)  # a statement group ended

    close._djpool_patched = True  # type: ignore[attr-defined]
    return close


def _wrap_nodb_cursor(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def _nodb_cursor(self: Any) -> Any:
        registry.dispose()
        return original(self)

    _nodb_cursor._djpool_patched = True  # type: ignore[attr-defined]
    return _nodb_cursor


_WRAPPERS: dict[str, Callable[..., Any]] = {
    "connect": _wrap_connect,
    "get_new_connection": _wrap_get_new_connection,
    "_close": _wrap_close,
    "close_if_health_check_failed": _wrap_close_if_health_check_failed,
    "is_usable": _wrap_is_usable,
    "init_connection_state": _wrap_init_connection_state,
    "create_cursor": _wrap_create_cursor,
    "_nodb_cursor": _wrap_nodb_cursor,
}


def _wrap_queued_writer_write(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def write(self: Any, data: Any) -> Any:
        if getattr(self, "_worker", None) is None:
            tag_queued_writer(self)
        return original(self, data)

    write._djpool_patched = True  # type: ignore[attr-defined]
    return write


def tag_queued_writer(writer: Any) -> None:
    """Before psycopg's ``QueuedLibpqWriter`` starts its worker thread (its
    first ``write()``): when the caller may use the pooled connection now
    (the holder's thread, or one Django lets share it), tag the writer with
    the checkout running (``(lease, serial)``): its worker may then use the
    connection for that checkout (``PsycopgDriver.in_helper_thread``)."""
    lease = getattr(getattr(writer, "connection", None), "_djpool_lease", None)
    if lease is not None and lease.state is IN_USE and lease.refusal() is None:
        writer._djpool_checkout = (lease, lease.serial)


def _hook_queued_writer() -> None:
    """Wrap psycopg 3's ``QueuedLibpqWriter.write`` (psycopg 3.1+; once,
    undone by :func:`uninstall`) when psycopg 3 is loaded."""
    if "psycopg" not in sys.modules:
        return
    try:
        from psycopg import copy
    except ImportError:  # pragma: no cover - psycopg 3.0
        return
    writer = getattr(copy, "QueuedLibpqWriter", None)
    current = getattr(writer, "__dict__", {}).get("write")
    if current is None or getattr(current, "_djpool_patched", False):
        return
    set_hook(writer, "write", _wrap_queued_writer_write(current))


def install(wrapper_class: type[BaseDatabaseWrapper]) -> None:
    """Patch one backend's ``DatabaseWrapper`` class (idempotent)."""
    if wrapper_class in _installed:
        return
    _hook_queued_writer()
    for klass in wrapper_class.__mro__:
        if klass in (BaseDatabaseWrapper, object):
            break
        module = sys.modules.get(klass.__module__)
        if module is not None and _is_driver_module(module.__dict__.get("Database")):
            set_hook(module, "Database", _module_proxy(module.__dict__["Database"]))
        if _is_driver_module(klass.__dict__.get("Database")):
            set_hook(klass, "Database", _module_proxy(klass.__dict__["Database"]))
    current = CursorWrapper.__dict__.get("close")
    if not getattr(current, "_djpool_patched", False):
        set_hook(CursorWrapper, "close", _cursor_close(current))
    if "_djpool_park" not in dir(wrapper_class):
        # The lease a wrapper parked at its last close (fast path), or None,
        # and the settings generation it parked in.
        set_hook(wrapper_class, "_djpool_park", None)
        set_hook(wrapper_class, "_djpool_park_generation", 0)
        # A connection checked out by the fast path for Django's own
        # connect() to set up (Registry.connect takes it), or None.
        set_hook(wrapper_class, "_djpool_pending", None)
    for name, wrap in _WRAPPERS.items():
        current = getattr(wrapper_class, name)
        if name == "connect":
            # (pool_mode="transaction" wraps BaseDatabaseWrapper.connect too:
            # only the fast path's own wrapper means "already patched".)
            if not getattr(current, "_djpool_fast_path", False):
                set_hook(wrapper_class, name, _wrap_connect(current, wrapper_class))
            continue
        if getattr(current, "_djpool_patched", False):
            continue  # inherited from a class already patched
        set_hook(wrapper_class, name, wrap(current))
    _installed.add(wrapper_class)
    logger.debug("Patched %s.%s", wrapper_class.__module__, wrapper_class.__qualname__)


def uninstall() -> None:
    """Undo every patch, newest first (txmode.py's too: ``hooks``), and
    dispose all pools."""
    undo_hooks()
    _installed.clear()
    registry.dispose()


def install_for_databases() -> list[str]:
    """Patch the backend of every alias that may be pooled; return the aliases."""
    from .pool import pooled_backends

    backends = pooled_backends()
    for wrapper_class in backends.values():
        install(wrapper_class)
    return list(backends)


def is_installed() -> bool:
    return bool(_installed)
