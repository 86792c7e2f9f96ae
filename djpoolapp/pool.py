"""The per-alias pools: a registry of SQLAlchemy ``QueuePool`` objects.

One :class:`AliasPool` per process per database alias, for one set of connect
arguments.  When an alias's connect arguments change (the test runner
switching to ``test_<name>``, ``override_settings``, a password rotation), the
old pool is retired: its idle connections are closed at once and the ones
Django still holds are closed when returned, so no connection is ever reused
with parameters other than those it was opened with.

SQLAlchemy does the pooling (checkout, checkin, overflow, timeout, LIFO).
Each driver connection's :class:`~djpoolapp.lease.Lease` does the rest: the
driver-aware checkout check (recycle, cheap liveness test, ping after idle),
run through SQLAlchemy's pre-ping hook, and the checkin (rollback, cursors,
session reset, invalidation); ``AliasPool.checkout``/``checkin`` only connect
the two.
"""

from __future__ import annotations

import copy
import importlib
import logging
import os
import sys
import threading
import time
import traceback
import weakref
from bisect import bisect_left
from typing import Any

from django.db import connections
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool.base import _ConnDialect

from .conf import Config, get_config
from .drivers import Driver, PooledConnection, SQLiteDriver, driver_for
from .exceptions import PoolTimeout
from .lease import IN_USE, PARKED, Lease, Recycle, Retired
from .queue import FairQueuePool, Stolen
from .signals import connection_checked_in, connection_checked_out
from .tagging import tag_connect_kwargs

logger = logging.getLogger("djpoolapp")

#: Every pooled driver connection alive in this process (for fork handling).
_live_connections: weakref.WeakSet[Any] = weakref.WeakSet()

#: The fast path (``lease.py``, "Parking"): Django's close at request end
#: parks the connection with its wrapper.  False: every close returns it to
#: SQLAlchemy's queue (as before issue 12; for A/B measurements).
#: ``DJPOOL_PARK`` in the environment overrides every alias's ``park``
#: option: "1" on, "0" off (A/B measurements); unset: the option decides.
PARK_OVERRIDE: bool | None = {"1": True, "0": False}.get(
    os.environ.get("DJPOOL_PARK", "")
)


def _settings_copy(settings_dict: dict[str, Any]) -> dict[str, Any] | None:
    """A deep copy of a DATABASES entry, or None if it cannot be copied."""
    try:
        return copy.deepcopy(settings_dict)
    except Exception:  # e.g. an SSL context in OPTIONS: no fast path
        return None


#: Upper bounds in seconds of the checkout-time histogram's buckets
#: (Prometheus ``le``; one more bucket counts everything slower).
CHECKOUT_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


class AliasStats:
    """Event counters of one alias, kept across its successive pools."""

    COUNTERS = ("opened", "recycled", "invalidated", "timeouts", "pins")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.opened = self.recycled = self.invalidated = self.timeouts = 0
        #: Driver connections pinned to a Django connection (pool_mode
        #: "transaction", see txmode.py).
        self.pins = 0
        #: Checkouts returned because their owner was gone (Lease.recover).
        self.recovered = 0
        #: Parked connections taken from their thread by another checkout.
        self.steals = 0
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
    """SQLAlchemy's hooks into the lease.

    The pre-ping hook runs :meth:`Lease.check_on_checkout` for every checkout
    of a connection that is not brand new; raising ``DisconnectionError``
    makes SQLAlchemy invalidate that one connection and open a replacement,
    so the request does not fail.  Closing goes through the lease too, so
    that it knows the session is gone.
    """

    def __init__(self, alias_pool: AliasPool) -> None:
        self._alias_pool = weakref.proxy(alias_pool)

    def _do_ping_w_event(self, dbapi_connection: Any) -> bool:
        self._alias_pool.check_on_checkout(dbapi_connection)
        return True

    def do_close(self, dbapi_connection: Any) -> None:
        lease = dbapi_connection._djpool_lease
        if lease is not None:
            lease.closed()
        dbapi_connection._djpool_close()

    do_terminate = do_close


def release_frames(error: BaseException) -> None:
    """Drop the variables of the finished frames *error* passed through below
    the caller (its traceback still names them): the connection that was
    being opened goes now, closed by the driver as stock Django's would be.

    Needed for an interrupt (``gevent.Timeout``, ``KeyboardInterrupt``) in
    the pool's first connects: SQLAlchemy re-raises it through
    ``util.safe_reraise.__exit__`` (``_ConnectionRecord.__connect``,
    ``QueuePool._do_get``), whose frame keeps the exception in a variable
    while it is in the exception's own traceback.  That cycle keeps every
    frame of the traceback alive until the cyclic garbage collector runs,
    and with them the driver's half-opened connection (psycopg 3's connect
    generator holding its ``PGconn``, psycogreen's wait callback holding
    psycopg2's connection): a session the server keeps open meanwhile."""
    tb = error.__traceback__
    tb = tb.tb_next if tb is not None else None  # the caller's frame runs
    if tb is not None:
        traceback.clear_frames(tb)


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
        #: ``reset_session`` option: "auto", "always" or False.
        self.reset_session = options.get("reset_session", "auto")
        #: The DATABASES entry the pool was made for (or last matched), deep
        #: copied: a wrapper takes back its parked connection only while its
        #: settings still equal it (see patch.py's connect()).
        self.settings_seen: dict[str, Any] | None = None
        # -- pool_mode (txmode.py) --
        self.transaction_mode = options.get("pool_mode") == "transaction"
        if self.transaction_mode:
            from . import txmode

            txmode.install()
        # -- end pool_mode --
        #: Whether a checkin parks connections with their Django connection
        #: (Django's close at request end; in transaction mode also each
        #: release) and Django connections take connections Django already
        #: set up without its connect() (patch.py's fast path).
        park = options.get("park", False) if PARK_OVERRIDE is None else PARK_OVERRIDE
        self.parking = bool(park)
        self.pool = FairQueuePool(  # waiters served first come, first served
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
        #: The pool's FairQueue (idle, parked and waiting checkouts).
        self.queue: Any = self.pool._pool
        if not hasattr(self.queue, "park"):  # another queue class (benchmarks)
            self.parking = False
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
        conn = self.driver.connect(
            tag_connect_kwargs(self.alias, self.driver.vendor, self.connect_kwargs)
        )
        counted = announced = False
        try:
            self.stats.add_connect_time(time.perf_counter() - started)
            conn._djpool_pool = self
            conn._djpool_socket = self.driver.socket_identity(conn)
            conn._djpool_lease = Lease(self, conn)
            _live_connections.add(conn)
            with self._open_lock:
                self._open += 1
            counted = True
            self.stats.add("opened")
            announced = True
            logger.info("Opened a connection for %r", self)
        except BaseException:
            # Interrupted (gevent.Timeout, KeyboardInterrupt: the log line
            # above may wait on a handler's I/O) before SQLAlchemy holds it:
            # nobody else can close it, and its lease and it refer to each
            # other, so only the cyclic garbage collector would free it.
            # (Once counted as opened, its close is counted as invalidated.)
            self._close_unrecorded(conn, counted)
            if announced:
                self.stats.add("invalidated")
            raise
        return conn

    def _close_unrecorded(self, conn: Any, counted: bool) -> None:
        """Close *conn*, which ``_create`` opened and never handed to
        SQLAlchemy; never raises."""
        lease = conn.__dict__.get("_djpool_lease")
        if lease is not None:
            lease.closed()
        if counted:
            with self._open_lock:
                self._open -= 1
        try:
            conn._djpool_close()
        except Exception:  # a broken socket: nothing left to free
            pass

    def checkout(self, wrapper: Any) -> Any:
        """A driver connection for Django's *wrapper* (``Database.connect()``)."""
        started = time.perf_counter()
        own = wrapper.__dict__.get("_djpool_park")
        if own is not None:  # connect() called directly: its parked one goes back
            wrapper._djpool_park = None
            own.release_parked_by(wrapper)
        while True:
            try:
                fairy = self.pool.connect()
            except Stolen as stolen:
                # A connection still checked out of SQLAlchemy: parked with
                # another thread and taken because nothing was idle, or
                # handed straight to this waiting checkout by a checkin
                # (FairQueue.park).  Checked in (and reset if need be) when
                # it parked or was handed over; checked here as SQLAlchemy's
                # pre-ping hook checks a reused one.
                lease = stolen.item
                fairy = lease.fairy
                if not lease.checked_for_reuse():
                    continue  # dead: replaced, as the pre-ping replaces it
                if not stolen.handed:
                    self.stats.add("steals")
            except sa_exc.TimeoutError:
                raise self._timed_out(wrapper) from None
            except sa_exc.SQLAlchemyError:
                raise
            except Exception as error:
                # The driver's own error, as without the app: no SQLAlchemy
                # frames.
                raise error.with_traceback(None) from None
            except BaseException as interrupt:
                # gevent.Timeout, KeyboardInterrupt, GreenletExit: the
                # caller may want the traceback, so it is kept (unlike the
                # driver's errors above), but not the frames' variables.
                release_frames(interrupt)
                raise
            break
        waited = time.perf_counter() - started
        self.stats.add_checkout_time(waited)
        conn: Any = fairy.dbapi_connection
        lease = conn._djpool_lease
        try:
            lease.checkout(fairy, wrapper)
            wrapper._djpool_txmode = self.transaction_mode  # pool_mode (txmode.py)
            if connection_checked_out.receivers or logger.isEnabledFor(logging.DEBUG):
                # (Receivers and log handlers may wait on I/O: interruptible.)
                self._announce_checkout(conn, waited)
        except BaseException:
            # Django never got it: given back, never to be handed out again.
            lease.mark_discard("its checkout was interrupted")
            if lease.state is IN_USE:
                lease.give_back()
            else:
                fairy.invalidate()
            raise
        return conn

    def _timed_out(self, wrapper: Any) -> PoolTimeout:
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
        max_age = wrapper.settings_dict.get("CONN_MAX_AGE", 0)
        if max_age != 0:
            message += (
                f" Likely cause: DATABASES['{self.alias}']['CONN_MAX_AGE'] is "
                f"{max_age!r}, so each thread keeps its connection after its "
                "request; set it to 0 (the pool keeps connections open)."
            )
        logger.warning(message)
        return PoolTimeout(message)

    def _announce_checkout(self, conn: Any, waited: float) -> None:
        """DEBUG line and signal of a checkout; kept off the hot path."""
        logger.debug("Checked out a connection of %r in %.3f ms", self, waited * 1000)
        if connection_checked_out.receivers:
            connection_checked_out.send_robust(
                AliasPool, alias=self.alias, dbapi_connection=conn, wait=waited
            )

    def park(self, lease: Lease) -> bool:
        """Park *lease* with its wrapper (``FairQueue.park``); False: return
        it to the queue instead."""
        return self.parking and not self.retired and self.queue.park(lease)

    def check_on_checkout(self, conn: Any) -> None:
        """Recycle old connections, hand out clean ones, replace dead ones."""
        conn._djpool_lease.check_on_checkout(time.monotonic())

    def checkin(self, conn: Any) -> None:
        """Reset and return a connection Django closed, or invalidate it."""
        conn._djpool_lease.checkin()

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
        if isinstance(error, Recycle):
            self.stats.add("recycled")
            logger.info("Recycled a connection of %r: %s", self, error)
        elif isinstance(error, Retired):
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
        self.pool.dispose()  # parked connections too (FairQueuePool.dispose)
        logger.info("Disposed %r", self)


class _Unpooled(_Entry):
    """Registry entry for connect arguments that pass straight to the driver."""

    retired = False

    def __init__(
        self, module: Any, kwargs: dict[str, Any], settings_options: dict[str, Any]
    ) -> None:
        self.module = module
        self.args: tuple[Any, ...] = ()
        self.connect_kwargs = dict(kwargs)
        self.settings_options = dict(settings_options)

    def checkout(self, wrapper: Any) -> Any:
        return self.module.connect(*self.args, **self.connect_kwargs)

    def retire(self) -> None:
        pass


def _hand_over(entry: AliasPool, wrapper: Any, conn: Any) -> Any:
    """Hand *conn*, checked out of *entry*, to *wrapper*'s running
    ``get_new_connection()``: noted there (patch.py gives it back if the
    backend's set-up fails) and put in the state Django's set-up expects of
    a new connection (``Driver.prepare_for_setup``)."""
    handed = wrapper.__dict__.get("_djpool_handed")
    if handed is not None:
        handed.append(conn)
    entry.driver.prepare_for_setup(conn)
    return conn


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
        """``Database.connect()`` for the Django connection *wrapper*.

        A connection its ``connect()`` (the fast path) already checked out
        (``_djpool_pending``, patch.py) is the one returned, if it comes from
        the pool these arguments select; otherwise it goes back."""
        entry = self._entries.get(wrapper.alias)
        pending = wrapper.__dict__.get("_djpool_pending")
        if pending is not None:
            wrapper._djpool_pending = None
            if (
                entry is pending._djpool_pool
                and entry.matches(kwargs, wrapper.settings_dict["OPTIONS"])
                and not entry.retired
            ):
                return _hand_over(entry, wrapper, pending)
            pending._djpool_lease.give_back()
        if entry is None or not entry.matches(kwargs, wrapper.settings_dict["OPTIONS"]):
            if args:
                return module.connect(*args, **kwargs)
            entry = self._replace(wrapper, module, kwargs)
        if (
            isinstance(entry, AliasPool)
            and entry.settings_seen != wrapper.settings_dict
        ):
            # Same connect arguments, other settings (CONN_HEALTH_CHECKS,
            # TEST...): the fast path compares with these from now on.
            entry.settings_seen = _settings_copy(wrapper.settings_dict)
        conn = entry.checkout(wrapper)
        if isinstance(entry, AliasPool):
            return _hand_over(entry, wrapper, conn)
        return conn

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

    def pool_of(self, alias: str) -> AliasPool | None:
        """The alias's current pool, if it is pooled."""
        entry = self._entries.get(alias)
        return entry if isinstance(entry, AliasPool) else None

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
            if django_connection.__dict__.get("_djpool_park") is not None:
                django_connection._djpool_park = None  # type: ignore[attr-defined]
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
                lease = conn._djpool_lease
                if (
                    lease is None
                    or lease.fairy is None
                    or wrapper is not None
                    or lease.state is PARKED
                ):
                    if lease is not None:
                        lease.closed()
                    try:
                        conn._djpool_close()
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


#: Top-level packages whose database backends pool connections themselves ->
#: their distribution name.  An alias on one of their engines (or on a
#: subclass of one) is never pooled a second time by djpoolapp.
THIRD_PARTY_POOLS = {
    "dj_db_conn_pool": "django-db-connection-pool",
    "django_postgrespool2": "django-postgrespool2",
    "django_db_geventpool": "django-db-geventpool",
}


def stacked_pool(settings_dict: dict[str, Any]) -> str | None:
    """The distribution whose pool the alias's ENGINE already is, or None.

    Decided from the ENGINE's dotted path and, when that backend is already
    imported, from the modules of its ``DatabaseWrapper``'s classes (a
    project's subclass of such a backend); never imports anything.
    """
    engine = str(settings_dict.get("ENGINE") or "")
    found = THIRD_PARTY_POOLS.get(engine.split(".", 1)[0])
    if found is not None:
        return found
    module = sys.modules.get(f"{engine}.base")
    for klass in getattr(getattr(module, "DatabaseWrapper", None), "__mro__", ()):
        found = THIRD_PARTY_POOLS.get(klass.__module__.split(".", 1)[0])
        if found is not None:
            return found
    return None


def _configured_options(
    config: Config, alias: str, settings_dict: dict[str, Any]
) -> dict[str, Any] | None:
    """The alias's options, or None when settings alone keep it unpooled."""
    if config.disabled:
        return None
    if settings_dict.get("OPTIONS", {}).get("pool"):
        return None  # Django's own pool owns this alias
    if stacked_pool(settings_dict) is not None:
        return None  # a third-party pooling backend owns it (checks: W005)
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
    per set of connect arguments.  Aliases on a third-party pooling backend
    (:data:`THIRD_PARTY_POOLS`) are left out too: never two pools stacked.
    """
    from django.db.utils import load_backend

    config = get_config()
    found = {}
    for alias, settings_dict in connections.settings.items():
        if _configured_options(config, alias, settings_dict) is None:
            continue  # before load_backend: an opted-out engine may not import
        wrapper_class = load_backend(settings_dict["ENGINE"]).DatabaseWrapper
        driver = driver_for(getattr(wrapper_class, "Database", None))
        if stacked_pool(settings_dict) is not None:
            continue  # a subclass of a third-party pooling backend
        if _driver_pooled(config, alias, driver):
            found[alias] = wrapper_class
    return found


def refuse_persistent_connections(aliases: list[str]) -> None:
    """Raise ``ImproperlyConfigured`` for a pooled alias whose ``CONN_MAX_AGE``
    is not 0, as Django's own pool does: each thread would keep its pooled
    connection after its request, so threads beyond ``pool_size +
    max_overflow`` would time out on every request."""
    from django.core.exceptions import ImproperlyConfigured

    found = [
        f"DATABASES['{alias}']['CONN_MAX_AGE'] is "
        f"{connections.settings[alias].get('CONN_MAX_AGE', 0)!r}: set it to 0 "
        "(djpoolapp keeps the connections open between requests), or opt the "
        f"alias out with DJPOOL_OPTIONS['aliases']['{alias}'] = False."
        for alias in aliases
        if connections.settings[alias].get("CONN_MAX_AGE", 0) != 0
    ]
    if found:
        raise ImproperlyConfigured(
            "djpoolapp pools connections per request; persistent connections "
            "defeat it:\n" + "\n".join(found)
        )


registry = Registry()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: registry.after_fork_in_child())


def _chain_uwsgi_post_fork() -> None:
    """Run the fork reset in uWSGI's workers too.

    uWSGI forks its workers with ``fork(2)`` from C, so Python's
    ``os.register_at_fork`` hooks do not run there (unless uWSGI is started
    with ``--py-call-osafterfork``): with the app loaded in the master (its
    default), every worker would share the master's pooled connections.
    uWSGI calls ``uwsgi.post_fork_hook`` in each new worker instead.

    With a master process the reset goes first in ``uwsgidecorators``'
    ``@postfork`` chain (imported here if the project has not yet: importing
    it later would replace a hook set by hand; a ``post_fork_hook`` or
    ``spooler`` the project set before is kept).  Without a master it is
    chained in front of any ``post_fork_hook``.  Running the reset twice is
    harmless: the second run finds nothing to drop.
    """
    try:
        import uwsgi  # only importable inside a uWSGI process
    except ImportError:
        return
    reset = registry.after_fork_in_child
    decorators: Any = sys.modules.get("uwsgidecorators")
    if decorators is None and uwsgi.masterpid() != 0:
        hook = getattr(uwsgi, "post_fork_hook", None)
        spooler = getattr(uwsgi, "spooler", None)
        try:
            decorators = importlib.import_module("uwsgidecorators")  # sets both
        except Exception:  # an old or trimmed uWSGI build
            decorators = None
        else:
            if spooler is not None:
                uwsgi.spooler = spooler
            if hook is not None:
                decorators.postfork(hook)
    chain = getattr(decorators, "postfork_chain", None)
    if decorators is not None and isinstance(chain, list):
        decorators.postfork(reset)
        chain.insert(0, chain.pop())  # before any hook that may query
        return
    previous = getattr(uwsgi, "post_fork_hook", None)

    def post_fork_hook() -> None:
        reset()
        if previous is not None:
            previous()

    uwsgi.post_fork_hook = post_fork_hook


_chain_uwsgi_post_fork()
