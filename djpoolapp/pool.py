"""The per-alias pools: a registry of SQLAlchemy ``QueuePool`` objects.

One :class:`AliasPool` per process per database alias, for one set of connect
arguments.  When an alias's connect arguments change (the test runner
switching to ``test_<name>``, ``override_settings``, a password rotation), the
old pool is retired: its idle connections are closed at once and the ones
Django still holds are closed when returned, so no connection is ever reused
with parameters other than those it was opened with.

SQLAlchemy does the pooling (checkout, checkin, overflow, timeout, LIFO).
djpoolapp adds what a bare ``QueuePool`` lacks: a driver-aware checkout check
(recycle, cheap liveness test, ping after idle) run through SQLAlchemy's
pre-ping hook, and a driver-aware reset on return.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from bisect import bisect_left
from typing import Any

from django.db import connections
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import QueuePool
from sqlalchemy.pool.base import _ConnDialect

from .conf import Config, get_config
from .drivers import Driver, PooledConnection, SQLiteDriver, driver_for
from .exceptions import PoolTimeout
from .signals import connection_checked_in, connection_checked_out

logger = logging.getLogger("djpoolapp")

#: Every pooled driver connection alive in this process (for fork handling).
_live_connections: weakref.WeakSet[Any] = weakref.WeakSet()


class _Recycle(sa_exc.DisconnectionError):
    """Raised at checkout for a connection older than ``recycle``."""


class _Retired(sa_exc.DisconnectionError):
    """Reason given when a connection of a retired pool is closed on return."""


#: Upper bounds in seconds of the checkout-time histogram's buckets
#: (Prometheus ``le``; one more bucket counts everything slower).
CHECKOUT_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


class AliasStats:
    """Event counters of one alias, kept across its successive pools."""

    COUNTERS = ("opened", "recycled", "invalidated", "timeouts")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.opened = self.recycled = self.invalidated = self.timeouts = 0
        # Running totals for the status page's "connect vs checkout" figures:
        # two perf_counter() calls and one uncontended lock per checkout.
        self.connect_seconds = self.checkout_seconds = 0.0
        self.checkouts = 0
        self.checkout_buckets = [0] * (len(CHECKOUT_BUCKETS) + 1)

    def add(self, counter: str) -> None:
        with self._lock:
            setattr(self, counter, getattr(self, counter) + 1)

    def add_connect_time(self, seconds: float) -> None:
        with self._lock:
            self.connect_seconds += seconds

    def add_checkout_time(self, seconds: float) -> None:
        with self._lock:
            self.checkouts += 1
            self.checkout_seconds += seconds
            self.checkout_buckets[bisect_left(CHECKOUT_BUCKETS, seconds)] += 1

    def checkout_histogram(self) -> tuple[list[int], float]:
        """Per-bucket checkout counts (see ``CHECKOUT_BUCKETS``) and their sum
        of seconds; timed-out checkouts are counted in ``timeouts`` only."""
        with self._lock:
            return list(self.checkout_buckets), self.checkout_seconds

    def timings(self) -> dict[str, float | int | None]:
        """Mean milliseconds to open a new connection and to check one out
        (reused or new, pre-ping included); None before the first one."""
        with self._lock:
            opened, checkouts = self.opened, self.checkouts
            connect, checkout = self.connect_seconds, self.checkout_seconds
        return {
            "connect_ms": connect * 1000 / opened if opened else None,
            "checkout_ms": checkout * 1000 / checkouts if checkouts else None,
            "checkouts": checkouts,
        }

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {name: getattr(self, name) for name in self.COUNTERS}


class _CheckoutDialect(_ConnDialect):
    """Lets SQLAlchemy's pre-ping hook run :meth:`AliasPool.check_on_checkout`.

    SQLAlchemy calls it for every checkout of a connection that is not brand
    new; raising ``DisconnectionError`` makes it invalidate that one
    connection and open a replacement, so the request does not fail.
    """

    def __init__(self, alias_pool: AliasPool) -> None:
        self._alias_pool = weakref.proxy(alias_pool)

    def _do_ping_w_event(self, dbapi_connection: Any) -> bool:
        self._alias_pool.check_on_checkout(dbapi_connection)
        return True


def describe(kwargs: dict[str, Any]) -> str:
    """``user@host:port/database`` from connect arguments, never the password."""
    database = kwargs.get("dbname") or kwargs.get("database") or kwargs.get("db") or ""
    host = kwargs.get("host") or kwargs.get("unix_socket") or ""
    port = kwargs.get("port")
    user = kwargs.get("user")
    where = f"{host}:{port}" if port else str(host)
    return f"{user + '@' if user else ''}{where}/{database}"


class _Entry:
    """A registry entry: what one alias connects with, pooled or not."""

    connect_kwargs: dict[str, Any]
    settings_options: dict[str, Any]

    def matches(self, kwargs: dict[str, Any], settings_options: dict[str, Any]) -> bool:
        """Same connect arguments and OPTIONS: its connections may be reused."""
        return (
            kwargs == self.connect_kwargs and settings_options == self.settings_options
        )


class AliasPool(_Entry):
    """The pool of one alias for one set of connect arguments."""

    def __init__(
        self,
        alias: str,
        driver: Driver,
        connect_kwargs: dict[str, Any],
        settings_options: dict[str, Any],
        options: dict[str, Any],
        stats: AliasStats,
    ) -> None:
        self.alias = alias
        self.driver = driver
        self.connect_kwargs = dict(connect_kwargs)
        self.settings_options = dict(settings_options)
        self.options = options
        self.stats = stats
        self.retired = False
        self.description = describe(connect_kwargs)
        self._recycle = float(options["recycle"])
        self._pre_ping = bool(options["pre_ping"])
        self._ping_after_idle = float(options["ping_after_idle"])
        self._reset = options["reset_on_return"]
        self.pool = QueuePool(
            self._create,
            pool_size=options["pool_size"],
            max_overflow=options["max_overflow"],
            timeout=options["timeout"],
            use_lifo=options["use_lifo"],
            recycle=-1,  # done in check_on_checkout, to count it apart
            pre_ping=True,  # the hook that runs check_on_checkout
            reset_on_return=None,  # done in checkin, driver-aware
            dialect=_CheckoutDialect(self),
        )
        self._open = 0  # driver connections open now (idle + checked out)
        self._open_lock = threading.Lock()
        event.listen(self.pool, "invalidate", self._on_invalidate)
        event.listen(self.pool, "close", self._on_close)
        logger.info("Created %r with options %r", self, options)

    def __repr__(self) -> str:
        return (
            f"<AliasPool {self.alias!r} {self.driver.vendor}://{self.description} "
            f"pool_size={self.options['pool_size']} "
            f"max_overflow={self.options['max_overflow']}"
            f"{' retired' if self.retired else ''}>"
        )

    # -- the lifecycle -------------------------------------------------------
    def _create(self) -> Any:
        started = time.perf_counter()
        conn = self.driver.connect(self.connect_kwargs)
        self.stats.add_connect_time(time.perf_counter() - started)
        conn._djpool_pool = self
        conn._djpool_socket = self.driver.socket_identity(conn)
        conn._djpool_created_at = conn._djpool_returned_at = time.monotonic()
        _live_connections.add(conn)
        with self._open_lock:
            self._open += 1
        self.stats.add("opened")
        logger.info("Opened a connection for %r", self)
        return conn

    def checkout(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        started = time.perf_counter()
        try:
            fairy = self.pool.connect()
        except sa_exc.TimeoutError:
            self.stats.add("timeouts")
            message = (
                f"djpoolapp: no connection available for database alias "
                f"'{self.alias}' within {self.options['timeout']} s: all "
                f"pool_size={self.options['pool_size']} + "
                f"max_overflow={self.options['max_overflow']} connections are "
                "checked out. Return connections sooner (close them, avoid "
                "long requests) or raise pool_size/max_overflow in "
                "DJPOOL_OPTIONS."
            )
            logger.warning(message)
            raise PoolTimeout(message) from None
        waited = time.perf_counter() - started
        self.stats.add_checkout_time(waited)
        conn: Any = fairy.dbapi_connection
        conn._djpool_fairy = fairy
        if connection_checked_out.receivers or logger.isEnabledFor(logging.DEBUG):
            self._announce_checkout(conn, waited)
        return conn

    def _announce_checkout(self, conn: Any, waited: float) -> None:
        """DEBUG line and signal of a checkout; kept off the hot path."""
        logger.debug("Checked out a connection of %r in %.3f ms", self, waited * 1000)
        if connection_checked_out.receivers:
            connection_checked_out.send_robust(
                AliasPool, alias=self.alias, dbapi_connection=conn, wait=waited
            )

    def check_on_checkout(self, conn: Any) -> None:
        """Recycle old connections, hand out clean ones, replace dead ones."""
        now = time.monotonic()
        if self._recycle > 0 and now - conn._djpool_created_at > self._recycle:
            raise _Recycle(f"older than recycle={self.options['recycle']} s")
        driver = self.driver
        try:
            # (A connection the driver knows is broken never reaches the pool:
            # checkin invalidates it.  One the server closed while idle has
            # input pending, so the ping below runs and fails.)
            if not conn._djpool_clean and driver.in_transaction(conn):
                driver.end_transaction(conn)  # known open: hand it out clean
            conn._djpool_clean = False
            if self._pre_ping and (
                now - conn._djpool_returned_at >= self._ping_after_idle
                or driver.has_pending_input(conn)
            ):
                driver.ping(conn)
        except sa_exc.DisconnectionError:
            raise
        except Exception as error:
            raise sa_exc.DisconnectionError(f"ping failed: {error}") from error

    def checkin(self, conn: Any, fairy: Any) -> None:
        """Reset and return a connection Django closed, or invalidate it."""
        conn._djpool_returned_at = time.monotonic()
        cursors = conn._djpool_cursors
        reason = None
        if cursors:
            conn._djpool_cursors = None
            reason = self._close_cursors(cursors)
        if reason is not None or conn._djpool_discard:
            conn._djpool_discard = False
            reason = reason or sa_exc.DisconnectionError("Django saw an error on it")
        elif self.retired:
            reason = _Retired("its pool was disposed or its settings changed")
        elif self.driver.is_broken(conn):
            reason = sa_exc.DisconnectionError("closed by the driver")
        elif self._reset is not None:
            try:
                if self.driver.in_transaction(conn) is not False:
                    self.driver.end_transaction(conn, commit=self._reset == "commit")
                conn._djpool_clean = True
            except Exception as error:
                reason = error
        if reason is None:
            fairy.close()
        else:
            fairy.invalidate(e=reason)
        if connection_checked_in.receivers or logger.isEnabledFor(logging.DEBUG):
            self._announce_checkin(conn, reason)

    @staticmethod
    def _close_cursors(cursors: Any) -> BaseException | None:
        """Close the cursors of this checkout that are still open; return why
        the connection must be invalidated, if closing one failed.

        Stock Django frees them by closing the connection.  In a pool the
        session lives on: a WITH HOLD server-side cursor (an abandoned
        ``iterator()`` in autocommit) would keep its result set on the
        server, and a stale cursor closed or used later would act on the
        connection of whichever request holds it then.  Closed here, a
        cursor is inert: ``close()`` again does nothing, using it raises.
        """
        failure: BaseException | None = None
        for reference in cursors:
            cursor = reference()
            if cursor is None:
                continue  # already garbage: closed with it
            try:
                cursor.close()
            except Exception as error:
                failure = failure or error
        return failure

    def _announce_checkin(self, conn: Any, reason: BaseException | None) -> None:
        """DEBUG line and signal of a checkin; kept off the hot path."""
        if reason is None:  # invalidations have their own line
            logger.debug("Checked in a connection of %r", self)
        if connection_checked_in.receivers:
            connection_checked_in.send_robust(
                AliasPool, alias=self.alias, dbapi_connection=conn,
                invalidated=reason is not None,
            )  # fmt: skip

    def _on_invalidate(self, dbapi_connection: Any, record: Any, error: Any) -> None:
        if isinstance(error, _Recycle):
            self.stats.add("recycled")
            logger.info("Recycled a connection of %r: %s", self, error)
        elif isinstance(error, _Retired):
            logger.debug("Closed a returned connection of %r: %s", self, error)
        else:
            self.stats.add("invalidated")
            logger.info("Invalidated a connection of %r: %s", self, error)

    def _on_close(self, dbapi_connection: Any, record: Any) -> None:
        with self._open_lock:
            self._open -= 1

    @property
    def open_connections(self) -> int:
        """Driver connections this pool has open, idle or checked out."""
        return self._open

    def retire(self) -> None:
        """Close the idle connections now and the checked-out ones on return."""
        self.retired = True
        self.pool.dispose()
        logger.info("Disposed %r", self)


class _Unpooled(_Entry):
    """Registry entry for connect arguments that pass straight to the driver."""

    retired = False

    def __init__(
        self, module: Any, kwargs: dict[str, Any], settings_options: dict[str, Any]
    ) -> None:
        self.module = module
        self.connect_kwargs = dict(kwargs)
        self.settings_options = dict(settings_options)

    def checkout(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self.module.connect(*args, **kwargs)

    def retire(self) -> None:
        pass


class Registry:
    """The process's pools, one per alias; rebuilt empty in a forked child."""

    def __init__(self) -> None:
        self._entries: dict[str, AliasPool | _Unpooled] = {}
        self._stats: dict[str, AliasStats] = {}
        self._lock = threading.Lock()
        self._inherited: list[Any] = []

    def connect(
        self, wrapper: Any, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """``Database.connect()`` for the Django connection *wrapper*."""
        entry = self._entries.get(wrapper.alias)
        if entry is None or not entry.matches(kwargs, wrapper.settings_dict["OPTIONS"]):
            if args:
                return module.connect(*args, **kwargs)
            entry = self._replace(wrapper, module, kwargs)
        return entry.checkout(args, kwargs)

    def _replace(
        self, wrapper: Any, module: Any, kwargs: dict[str, Any]
    ) -> AliasPool | _Unpooled:
        alias, settings_options = wrapper.alias, wrapper.settings_dict["OPTIONS"]
        with self._lock:
            current = self._entries.get(alias)
            if current is not None and current.matches(kwargs, settings_options):
                return current
            driver = driver_for(module)
            options = pool_options(alias, wrapper.settings_dict, driver, kwargs)
            entry: AliasPool | _Unpooled
            if options is None or driver is None:
                entry = _Unpooled(module, kwargs, settings_options)
            else:
                stats = self._stats.setdefault(alias, AliasStats())
                entry = AliasPool(
                    alias, driver, kwargs, settings_options, options, stats
                )
            if current is not None:
                current.retire()
            self._entries[alias] = entry
            return entry

    def pools(self, alias: str | None = None) -> list[AliasPool]:
        """The live pools, of one alias or all."""
        entries = list(self._entries.items())
        return [
            entry
            for name, entry in entries
            if isinstance(entry, AliasPool) and (alias is None or name == alias)
        ]

    def stats(self, alias: str) -> AliasStats:
        return self._stats.setdefault(alias, AliasStats())

    def dispose(self, alias: str | None = None) -> None:
        """Close idle connections now (checked-out ones when returned); the next
        checkout opens a fresh pool."""
        with self._lock:
            names = [alias] if alias is not None else list(self._entries)
            for name in names:
                entry = self._entries.pop(name, None)
                if entry is not None:
                    entry.retire()

    def after_fork_in_child(self) -> None:
        """Forget every inherited connection without a byte to its server.

        Runs in the child right after ``fork()``: the sockets are shared with
        the parent, so closing them normally would end the *parent's*
        sessions.  Each inherited socket is first pointed at ``/dev/null``;
        connections idle in the pool or held by the forking thread are then
        closed (harmlessly), and Django's wrappers in this thread forget
        theirs so the child opens its own.  No lock is taken: another
        parent thread may have held it at the time of the fork.
        """
        inherited = list(_live_connections)
        _live_connections.clear()
        self._inherited.append(self._entries)  # keep alive: nothing is GC-closed
        self._entries = {}
        self._stats = {}
        self._lock = threading.Lock()
        if not inherited:
            return
        held: dict[int, Any] = {}
        for django_connection in connections.all(initialized_only=True):
            if isinstance(django_connection.connection, PooledConnection):
                held[id(django_connection.connection)] = django_connection
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            for conn in inherited:
                pool = conn._djpool_pool
                if pool is not None:
                    pool.driver.neutralise(conn, devnull)
                wrapper = held.get(id(conn))
                if wrapper is not None:
                    wrapper.connection = None
                if conn._djpool_fairy is None or wrapper is not None:
                    conn._djpool_fairy = None
                    try:
                        conn.close()
                    except Exception:  # a dead socket: nothing left to free
                        pass
        finally:
            os.close(devnull)
        logger.info(
            "Process %s forked: dropped %d inherited pooled connection(s) "
            "without touching the parent's sessions",
            os.getpid(),
            len(inherited),
        )


def pool_options(
    alias: str,
    settings_dict: dict[str, Any],
    driver: Driver | None,
    kwargs: dict[str, Any],
) -> dict[str, Any] | None:
    """The pool options for this alias and connect arguments, or None: unpooled."""
    if alias not in connections.settings:
        return None  # e.g. Django's "__no_db__" maintenance connection
    config = get_config()
    options = _configured_options(config, alias, settings_dict)
    if options is None or not _driver_pooled(config, alias, driver):
        return None
    assert driver is not None
    return options if driver.can_pool(kwargs) else None


def _configured_options(
    config: Config, alias: str, settings_dict: dict[str, Any]
) -> dict[str, Any] | None:
    """The alias's options, or None when settings alone keep it unpooled."""
    if config.disabled:
        return None
    if settings_dict.get("OPTIONS", {}).get("pool"):
        return None  # Django's own pool owns this alias
    return config.for_alias(alias)


def _driver_pooled(config: Config, alias: str, driver: Driver | None) -> bool:
    """Whether djpoolapp pools this driver for this alias."""
    if driver is None:
        return False
    return not isinstance(driver, SQLiteDriver) or config.names_alias(alias)


def pooled_backends() -> dict[str, type]:
    """Alias -> backend class, for every alias whose connections may be pooled.

    Decided from settings alone (no database access): opted-out aliases,
    aliases on Django's own pool, unsupported drivers and SQLite aliases not
    named in ``aliases`` are left out.  In-memory SQLite is refused later,
    per set of connect arguments.
    """
    from django.db.utils import load_backend

    config = get_config()
    found = {}
    for alias, settings_dict in connections.settings.items():
        if _configured_options(config, alias, settings_dict) is None:
            continue  # before load_backend: an opted-out engine may not import
        wrapper_class = load_backend(settings_dict["ENGINE"]).DatabaseWrapper
        driver = driver_for(getattr(wrapper_class, "Database", None))
        if _driver_pooled(config, alias, driver):
            found[alias] = wrapper_class
    return found


registry = Registry()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: registry.after_fork_in_child())
