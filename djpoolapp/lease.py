"""The lease: one pooled driver connection's time with one Django connection.

Invariant, "stock Django, only faster": whatever Django or user code does
during a lease, the next lease of that server session starts as a fresh
connection would (no transaction, no cursor, no session state Django did not
set itself).  Everything the pool does at checkout and checkin goes through
the connection's :class:`Lease`; :class:`~djpoolapp.pool.AliasPool` only
finds the lease and SQLAlchemy only keeps the queue.

States (``Lease.state``)::

    IDLE --checkout()--> IN_USE --checkin()------------------> IDLE
                           |  (Django's close of this checkout:
                           |   rollback, close cursors, reset session)
                           +--recover()--> IDLE    (owner gone: wrapper
                           |                        garbage, thread ended)
                           +--close_raw()--> CLOSED (user code closed the
                                                     raw driver connection)
    any --closed()--> CLOSED  (the pool closed it: invalidate, recycle,
                               dispose, fork)

Parking, the fast path (issue 12)::

    IN_USE --checkin(park)--> PARKED --claim()--> IN_USE   (same wrapper,
                                 |                         next request)
                                 +--stolen()--> IN_USE     (another thread,
                                 |                         pool otherwise empty)
                                 +--release_parked()--> IDLE (wrapper or
                                 |                         thread gone, claim
                                 |                         refused)
                                 +--close_parked()--> CLOSED (dispose, fork)
    IN_USE --checkin(park), a checkout waiting--> IN_USE   (handed over: the
                                                  waiter's, still checked out
                                                  of SQLAlchemy)

A checkin that Django's ``close()`` of a request makes may *park* the
connection with its Django wrapper instead of returning it to SQLAlchemy's
queue: everything a checkin does (cursors closed, transaction ended, no
session change left, no reason to discard it) has been done, but the
connection stays checked out of SQLAlchemy, thread-affine.  The wrapper's
next ``connect()`` takes it back (:meth:`claim`) without Django's
connect bookkeeping and without SQLAlchemy's checkout; any other checkout
takes a parked connection when nothing is idle (``FairQueue._steal``,
:meth:`stolen`), and its old wrapper then connects the usual way.  When a
checkout is already waiting, the checkin hands the connection straight to
the longest waiter instead of parking it (``FairQueue.park``): the same
checks and reset as a parking checkin, but neither SQLAlchemy's checkin nor
its checkout.  Only a
connection whose checkin needed no session reset parks (a reset undoes
Django's own set-up, which the fast path skips).  Every transition to and
from ``PARKED`` happens under the queue's mutex (``FairQueue.park``,
``unpark``, ``drain_parked``, ``_steal``): a parked connection is never used
by two threads at once.  In ``pool_mode="transaction"`` each release is
such a checkin (``txmode.release_if_idle``): it parks or hands over too.

Who calls what:

- ``AliasPool._create`` makes one lease per driver connection
  (``conn._djpool_lease``), which lives as long as the connection.
- SQLAlchemy's pre-ping hook calls :meth:`Lease.check_on_checkout`;
  ``AliasPool.checkout`` then calls :meth:`Lease.checkout` with the fairy and
  the Django wrapper that asked.
- ``PooledConnection.close()`` calls :meth:`Lease.checkin` when Django's own
  ``_close()`` of the current holder runs it, :meth:`Lease.close_raw`
  otherwise.
- ``patch.py`` reports what Django does: :meth:`track_cursor`,
  :meth:`mark_discard` (errors, health checks), and the setting-up window
  (:attr:`in_setup`); the watched cursors of ``drivers.py`` report statements
  through :meth:`note_statement`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from sqlalchemy import exc as sa_exc

from .deadline import RoundTripTimeout, bounded
from .exceptions import SessionChanged
from .signals import connection_checked_in
from .sql import CLOSE_TO_RESET, RESEED_AFTER

logger = logging.getLogger("djpoolapp")

IDLE = "idle"
IN_USE = "in use"
CLOSED = "closed"
#: Kept by its Django wrapper between requests (idle, thread-affine).
PARKED = "parked"


class Recycle(sa_exc.DisconnectionError):
    """Raised at checkout for a connection older than ``recycle``."""


class Retired(sa_exc.DisconnectionError):
    """Reason given when a connection of a retired pool is closed on return."""


class RawClose(sa_exc.DisconnectionError):
    """User code closed the raw driver connection: the session is gone."""


class _Owner:
    """One per thread (greenlet under gevent): its death ends its leases."""

    __slots__ = ("__weakref__",)


_owners = threading.local()
_monotonic = time.monotonic


class _Servicing(threading.local):
    """Per thread: the lease whose pool work (checkin, checkout checks) runs
    now.  The pool's own round trips on a connection no checkout holds pass
    :meth:`Lease.check_caller`; anybody else's are refused."""

    lease: Lease | None = None


_servicing = _Servicing()


@contextlib.contextmanager
def servicing(lease: Lease) -> Iterator[None]:
    """The pool's own work on *lease*'s connection while no checkout holds
    it, in this thread: its round trips pass :meth:`Lease.check_caller`.
    (The checkin and the checkout checks open this window themselves.)"""
    previous = _servicing.lease
    _servicing.lease = lease
    try:
        yield
    finally:
        _servicing.lease = previous


_RESET = object()
#: Lease.snapshot before Django first set the connection up.
UNSET: Any = object()
_CURSORS = object()


def _current_owner() -> _Owner:
    try:
        return _owners.token  # type: ignore[no-any-return]
    except AttributeError:
        token = _owners.token = _Owner()
        return token


class LeaseStats(Protocol):
    """What a lease needs of its pool's counters (``pool.AliasStats`` is
    one)."""

    def add(self, counter: str) -> None: ...


class LeasePool(Protocol):
    """What a lease needs of its pool (:class:`~djpoolapp.pool.AliasPool` is
    one): the members :class:`Lease` reads, none of which it sets.  Typed
    here so that this module need not import pool.py, which imports it."""

    @property
    def driver(self) -> Any:
        """The pool's ``drivers.Driver`` (Any: drivers.py imports this
        module)."""

    @property
    def options(self) -> Mapping[str, Any]:
        """The alias's options (``recycle`` is named in a recycle's reason)."""

    @property
    def stats(self) -> LeaseStats: ...

    @property
    def queue(self) -> Any:
        """The pool's ``queue.FairQueue``: ``park(lease)``, ``unpark(lease)``."""

    @property
    def retired(self) -> bool: ...

    @property
    def parking(self) -> bool: ...

    @property
    def reset_session(self) -> str | bool:
        """``reset_session``: "auto", "always" or False."""

    @property
    def _recycle(self) -> float: ...

    @property
    def _pre_ping(self) -> bool: ...

    @property
    def _ping_after_idle(self) -> float: ...

    def _announce_checkin(self, conn: Any, reason: BaseException | None) -> None:
        """DEBUG line and ``connection_checked_in`` signal of a checkin."""


class Lease:
    """A pooled driver connection and everything its checkouts carry."""

    __slots__ = (
        "pool",
        "driver",
        "conn",
        "state",
        "fairy",
        "created_at",
        "returned_at",
        "clean",
        "holder",
        "owner",
        "cursors",
        "changed",
        "named_cursors",
        "discard",
        "snapshot",
        "in_setup",
        "fresh",
        "park_wanted",
        "set_up_for",
        "set_up_attributes",
        "serial",
        "orphans",
        "epoch",
        "last_holder",
        "snapshot_checked",
        "__weakref__",
    )

    def __init__(self, pool: LeasePool, conn: Any) -> None:
        self.pool = pool
        self.driver = pool.driver
        self.conn = conn
        self.state = IDLE
        self.fairy: Any = None
        self.created_at = self.returned_at = time.monotonic()
        #: No transaction left open since the last checkin.
        self.clean = False
        #: Weak references to the Django wrapper holding it and to the
        #: holding thread's owner token (see ``_owner_gone``).
        self.holder: weakref.ref[Any] | None = None
        self.owner: weakref.ref[_Owner] | None = None
        #: Cursors Django created in this checkout (weak references).
        self.cursors: list[weakref.ref[Any]] | None = None
        #: Labels of statements of this lease that may have changed session
        #: state (``sql.classify``); empty: nothing seen.
        self.changed: set[str] = set()
        #: A server-side (named) cursor was created in this lease.
        self.named_cursors = False
        #: Why the connection must not be reused, if Django said so.
        self.discard: str | None = None
        #: Driver-side session attributes after Django's first set-up of the
        #: connection (Driver.snapshot), taken by patch.py; UNSET before.
        self.snapshot: Any = UNSET
        #: True while Django's own session set-up runs (its SETs are not
        #: changes: Django applies them to every new connection).
        self.in_setup = False
        #: True from checkout until Django's set-up ran for it.
        self.fresh = False
        #: Set before Django's close of this checkout (or a release in
        #: transaction mode) when the wrapper may keep the connection parked
        #: (parking.py, ``want_park``); read by the checkin.
        self.park_wanted = False
        #: ``(settings, generation)``: Django's set-up of this session was
        #: done for a Django connection whose settings equal *settings* (the
        #: pool's ``settings_seen`` object then) in settings generation
        #: *generation* (parking.py), and nothing undid it since; None: not
        #: set up, or reset.  Another Django connection with those settings
        #: may take it without its own set-up (parking.py, ``_take``).
        self.set_up_for: Any = None
        #: What Django's set-up put on the wrapper itself (parking.py,
        #: ``CONNECT_ATTRIBUTES``), for a wrapper that takes it set up.
        self.set_up_attributes: dict[str, Any] = {}
        #: Number of this checkout, bumped by every checkin: a cursor records
        #: the number it was created under (:meth:`track_cursor`), so a
        #: cursor of an ended checkout is known.
        self.serial = 0
        #: Names of server-side cursors of this checkout closed on the client
        #: only (:meth:`orphan`), for the holder to close; None: none.
        self.orphans: list[str] | None = None
        #: Bumped by a checkout for another Django connection than the one
        #: that held it last (:attr:`last_holder`); a taking back by the same
        #: one (:meth:`claim`, or a checkout) leaves it: a Django connection
        #: whose previous statement ran in this epoch knows that no other
        #: ran one on the session since (``txmode``, values such as
        #: ``lastval()``).
        self.epoch = 0
        self.last_holder: weakref.ref[Any] | None = None
        #: Set right before a checkin by a caller that has just compared the
        #: driver's session attributes with :attr:`snapshot` and found them
        #: equal (``txmode.release_if_idle``): that checkin skips reading
        #: them again.  Cleared by every checkin.
        self.snapshot_checked = False

    def __repr__(self) -> str:
        return f"<Lease {self.state} of {self.pool!r}>"

    # -- checkout ----------------------------------------------------------
    def check_on_checkout(self, now: float) -> None:
        """Pre-ping decision (run by SQLAlchemy's pre-ping hook for reused
        connections): recycle old ones, end a transaction known open, ping
        after idle or when the server spoke.  Raises ``DisconnectionError``
        to have SQLAlchemy replace the connection."""
        previous = _servicing.lease
        _servicing.lease = self
        try:
            self._check_for_checkout(now)
        finally:
            _servicing.lease = previous

    def _check_for_checkout(self, now: float) -> None:
        pool, conn, driver = self.pool, self.conn, self.driver
        if pool._recycle > 0 and now - self.created_at > pool._recycle:
            raise Recycle(f"older than recycle={pool.options['recycle']} s")
        if self.changed:
            # The checkin cleared it: a raw handle kept from an earlier
            # checkout (``cursor.connection``) changed the session while it
            # was idle or parked.  (MySQL: ``session_changes`` below.)
            raise sa_exc.DisconnectionError(
                str(SessionChanged(frozenset(self.changed)))
            )
        if driver.session_changes(conn):
            # A changed session never reaches a new checkout, however it got
            # back into the pool.
            raise sa_exc.DisconnectionError(
                str(SessionChanged(driver.session_changes(conn)))
            )
        try:
            if not pool._pre_ping and driver.is_broken(conn):
                # (With pre_ping, a raw close while idle shows as a socket
                # that cannot be polled: the ping below runs and fails.)
                raise sa_exc.DisconnectionError("closed while idle")
            # Checked even after a clean checkin (client-side state, no round
            # trip): a raw handle kept from an earlier request may have opened
            # a transaction while the connection was idle or parked, and the
            # next request's autocommit writes would run inside it.
            if driver.in_transaction(conn):
                driver.end_transaction(conn)
            self.clean = False
            if pool._pre_ping and (
                now - self.returned_at >= pool._ping_after_idle
                or driver.has_pending_input(conn)
            ):
                driver.ping(conn)
        except sa_exc.DisconnectionError:
            raise
        except Exception as error:
            raise sa_exc.DisconnectionError(f"ping failed: {error}") from error

    def checkout(self, fairy: Any, wrapper: Any) -> None:
        """Hand the connection to Django's *wrapper* (after the pre-ping)."""
        self.fairy = fairy
        self.state = IN_USE
        self.fresh = True
        callback = self._owner_gone
        last = self.last_holder
        if last is None or last() is not wrapper:
            self.epoch += 1
        self.last_holder = self.holder = weakref.ref(wrapper, callback)
        self.owner = weakref.ref(_current_owner(), callback)

    # -- what happens during the lease ---------------------------------------
    def track_cursor(self, cursor: Any) -> None:
        """A cursor made in this checkout (Django's or a raw driver cursor):
        closed at checkin if still open, and tagged with the checkout's
        number (see :func:`cursor_checkout`).  Weak references to cursors
        already gone are dropped now and then (every 256th)."""
        cursors = self.cursors
        if cursors is None:
            self.cursors = [weakref.ref(cursor)]
        else:
            cursors.append(weakref.ref(cursor))
            if len(cursors) & 255 == 0:
                # A checkout that never ends (a worker that never closes its
                # connection) must not keep a reference per cursor for ever.
                cursors[:] = [ref for ref in cursors if ref() is not None]
        try:
            cursor._djpool_checkout = (self, self.serial)
        except (AttributeError, TypeError):  # a cursor class without __dict__
            pass

    def is_current(self, serial: int) -> bool:
        """Whether checkout number *serial* of this connection still runs."""
        return self.serial == serial and self.state is IN_USE

    def orphan(self, cursor: Any) -> None:
        """Close *cursor* of this checkout on the client only, now: a thread
        that does not hold the connection closed it (the garbage collector or
        an event loop finalising an abandoned ``iterator()`` /
        ``aiterator()``), or the driver is inside a call on this connection
        (a finaliser run by the collector in the middle of one).  A
        server-side cursor's name is kept: the holder closes it at its next
        cursor close outside a transaction (:meth:`close_orphans`), the
        checkin's ``CLOSE ALL`` otherwise.  Stock Django would close it at
        once, from whichever thread."""
        name = self.driver.cursor_name(cursor)
        self.driver.forget_cursor(cursor)
        if name is not None:
            if self.orphans is None:
                self.orphans = [name]
            else:
                self.orphans.append(name)

    def close_orphans(self) -> None:
        """Run by the holder between statements, outside any transaction:
        close the server-side cursors :meth:`orphan` left (a ``WITH HOLD``
        cursor keeps its whole result on the server).  Errors (a cursor its
        transaction already ended) are the driver's to ignore."""
        names, self.orphans = self.orphans, None
        if names and self.driver.in_transaction(self.conn) is False:
            self.driver.close_named_cursors(self.conn, names)

    def note_statement(self, labels: frozenset[str]) -> None:
        """A statement classified as possibly changing session state."""
        if not self.in_setup:
            self.changed.update(labels)

    def mark_discard(self, reason: str) -> None:
        """Django judged the connection unusable: never hand it out again."""
        if self.discard is None:
            self.discard = reason

    def check_caller(self) -> None:
        """Raise the driver's error for a closed connection
        (``Driver.refused``) when the raw connection is
        used by anybody but its holder (:meth:`refusal` says who may).
        Called by every state-changing entry point of the pooled connection
        (``cursor()``, ``commit()``, ``rollback()``, setters, psycopg 3's
        ``wait()``, mysqlclient's ``query()``: ``drivers.py``); their
        holder's own case is decided inline there."""
        message = self.refusal()
        if message is not None:
            raise self.driver.refused(message)

    def refusal(self) -> str | None:
        """Why the calling thread may not use the raw connection, or None.

        Refused: a thread other than the one holding this checkout (a stale
        ``connection.connection`` kept past its request, used while another
        request holds the session), unless Django shares the connection
        (``allow_thread_sharing``) or the thread is one the driver started
        for the holder in this checkout (the worker of psycopg 3's
        ``QueuedLibpqWriter`` writing the holder's ``COPY``:
        ``Driver.in_helper_thread``); and anybody while no checkout holds it
        (idle in the pool, or parked: a raw handle kept past the end of its
        request, which would otherwise write and commit outside any
        request).  Stock Django's handle would be closed by then.  The
        pool's own round trips pass (the checkin and the checkout checks:
        :class:`_Servicing`), as does a connection already closed (the
        driver's own error follows)."""
        state = self.state
        if state is not IN_USE:
            if state is CLOSED or _servicing.lease is self:
                return None
            return (
                "djpoolapp: this connection went back to the pool when the "
                "request that used it ended; a raw handle kept from that "
                "request (connection.connection) cannot use it (without the "
                "app it would be closed)"
            )
        owner = self.owner
        if owner is None or owner() is _current_owner():
            return None
        holder = self.holder() if self.holder is not None else None
        if holder is not None and getattr(holder, "allow_thread_sharing", False):
            return None
        if self.driver.in_helper_thread(self.conn):
            return None  # the driver's own thread, working for the holder
        return (
            "djpoolapp: this connection is checked out by another thread's "
            "Django connection; a raw handle kept from an earlier request "
            "(connection.connection) cannot use it (without the app it would "
            "be closed)"
        )

    def held_by(self, wrapper: Any) -> bool:
        holder = self.holder
        return holder is not None and holder() is wrapper

    # -- checkin -------------------------------------------------------------
    def checkin(self) -> None:
        """Django's close of the current checkout: return the connection as a
        fresh one, or invalidate it; or, when Django's close asked for it
        (:attr:`park_wanted`) and nothing had to be reset, park it with its
        wrapper (state ``PARKED``)."""
        park, self.park_wanted = self.park_wanted, False
        if self.state is not IN_USE:
            self.conn._djpool_close()  # already closed: as stock Django
            return
        self._return(None, park)

    def _return(self, why_recovered: str | None, park: bool = False) -> None:
        # The pool's own round trips below pass Lease.check_caller (the
        # connection is no checkout's from here on).
        previous = _servicing.lease
        _servicing.lease = self
        try:
            conn, pool, driver = self.conn, self.pool, self.driver
            fairy = self.fairy
            if not park:
                self.fairy = self.holder = self.owner = None
            self.state = IDLE
            self.serial += 1  # this checkout's cursors are stale from here on
            self.orphans = None  # (closed by the CLOSE ALL below: named_cursors)
            self.returned_at = _monotonic()
            reason: BaseException | str | None = None
            try:
                cursors = self.cursors
                if driver.busy(conn):
                    # A call still holds the driver connection (psycopg 3's lock:
                    # a COPY block or a stream() generator left open past the
                    # request, kept alive by a traceback): a rollback or a cursor
                    # close would wait for that lock for ever, in this thread.
                    # Stock Django's close() takes no lock: closed, as there.
                    reason = "a COPY or stream() left open still holds it"
                    cursors = self.cursors = None
                if cursors is not None:
                    self.cursors = None
                    left_open = [
                        cursor
                        for reference in cursors
                        if (cursor := reference()) is not None
                        and driver.left_open(cursor)
                    ]
                    if left_open:
                        try:  # closing a server-side cursor is a round trip
                            with bounded(conn, "close of the cursors left open"):
                                reason = _close_cursors(left_open, driver)
                        except RoundTripTimeout as error:
                            reason = error
                if reason is None:
                    # Unread results (MySQL): dropped, or why the session cannot be
                    # handed to the next request.
                    reason = driver.checkin_problem(conn)
                if reason is None and (self.discard or conn._djpool_discard):
                    reason = self.discard or "Django saw an error on it"
                elif reason is None and pool.retired:
                    reason = Retired("its pool was disposed or its settings changed")
                elif reason is None and driver.is_broken(conn):
                    reason = "closed by the driver"
                elif reason is None:
                    try:
                        # Whatever reset_on_return says: an idle connection never
                        # holds a transaction (nor its locks).
                        if driver.in_transaction(conn) is not False:
                            driver.end_transaction(conn)
                        mode = pool.reset_session
                        if (
                            mode == "auto"
                            and not self.changed
                            and not self.named_cursors
                            and not driver.session_changed(conn)
                            and (
                                self.snapshot is UNSET
                                or self.snapshot_checked
                                or driver.snapshot(conn) == self.snapshot
                            )
                        ):
                            reset = None  # (_reset_needed's common case, inline)
                        else:
                            reset = self._reset_needed(mode)
                        if reset is not None or pool.reset_session != "auto":
                            # Reset (Django's set-up is undone), or kept as the
                            # request left it (reset_session=False): only Django's
                            # own connect() may hand it to another Django connection.
                            self.set_up_for = None
                        if reset is _RESET:
                            park = False  # Django's set-up is undone: it must run again
                            self.epoch += 1  # the session's values are gone too
                            kept = self.changed & CLOSE_TO_RESET
                            if kept:
                                # (a temporary replication slot, a dblink
                                # connection: only a new session is as fresh)
                                reason = (
                                    "its session holds what no reset undoes: "
                                    + ", ".join(sorted(kept))
                                )
                            else:
                                with bounded(conn, "session reset"):
                                    if not driver.reset_session(conn, self.snapshot):
                                        reason = "its session cannot be reset in place"
                                    elif (
                                        self.changed & RESEED_AFTER or mode == "always"
                                    ):
                                        driver.reseed(conn)
                        elif reset is _CURSORS:
                            with bounded(conn, "close of the server-side cursors"):
                                driver.close_server_cursors(conn)
                        self.clean = True
                    except Exception as error:
                        reason = error
            except BaseException as error:
                # Interrupted inside the checkin's own round trips (a
                # gevent.Timeout or KeyboardInterrupt around Django's close(),
                # before or during the ROLLBACK, the session reset, a cursor's
                # CLOSE), or failed where nothing above answers for it: the
                # session may still hold the request's transaction and locks,
                # or be half-way through a reply.  Closed, as stock Django's
                # close() closes it, and the interrupt goes on; never left to
                # SQLAlchemy's collector hook, which would put it back in the
                # pool as it is.
                self.fairy = self.holder = self.owner = None
                self.cursors = None
                self._interrupted(fairy, error)
                raise
            if self.changed:
                self.changed.clear()
            self.named_cursors = False
            self.snapshot_checked = False
            self.discard = None
            if conn._djpool_discard:
                conn._djpool_discard = False
            if park and not (
                # Parked only in the autocommit Django left it in (the fast path
                # skips Django's set_autocommit()).
                reason is None
                and driver.autocommit(conn) is True
                and pool.parking
                and not pool.retired
                and pool.queue.park(self)
            ):
                park = False
                self.fairy = self.holder = self.owner = None
            # (Once parked, another thread may steal it at once: hands off.)
            if reason is None:
                if not park:
                    fairy.close()
            else:
                if isinstance(reason, str):
                    reason = sa_exc.DisconnectionError(reason)
                fairy.invalidate(e=reason)
        finally:
            _servicing.lease = previous
        if why_recovered is not None:
            pool.stats.add("recovered")
            logger.warning(
                "A connection of %r was returned to the pool %s: %s (close "
                "connections explicitly, e.g. django.db.connections.close_all())",
                pool,
                "rolled back" if reason is None else "and closed",
                why_recovered,
            )
        if connection_checked_in.receivers or logger.isEnabledFor(logging.DEBUG):
            pool._announce_checkin(conn, reason)

    def _interrupted(self, fairy: Any, error: BaseException) -> None:
        """Invalidate *fairy* (this lease's checkout) after *error* cut its
        checkin short; never raises an ``Exception`` of its own."""
        try:
            fairy.invalidate(
                e=sa_exc.DisconnectionError(
                    f"its checkin was interrupted ({type(error).__name__})"
                )
            )
        except Exception:  # pragma: no cover - the close itself failed
            logger.debug("Closing an interrupted checkin failed", exc_info=True)

    def give_back(self) -> None:
        """A checkout Django never used (its ``connect()`` failed before
        taking the connection, or another pool was selected): returned as a
        checkin returns it."""
        if self.state is IN_USE:
            self._return(None)

    def _reset_needed(self, mode: Any) -> object:
        """What this checkin must reset (``reset_session``): _RESET (the
        session), _CURSORS (server-side cursors only) or None."""
        if mode == "always":
            return _RESET
        if mode is False:
            # Session state is kept on request, but a server-side cursor
            # holds server memory: it never survives a checkin.  (A changed
            # MySQL session never gets here: Driver.checkin_problem.)
            return _CURSORS if self.named_cursors else None
        if (
            self.changed
            # A server-side cursor: a full reset, not only CLOSE ALL.  Not
            # every such cursor's statement is seen (Django's psycopg 3
            # ServerSideCursor is built without the connection's cursor
            # factory: a set_config() in its query is not classified).
            or self.named_cursors
            or self.driver.session_changed(self.conn)
            or (
                self.snapshot is not UNSET
                and self.driver.snapshot(self.conn) != self.snapshot
            )
        ):
            return _RESET
        return None

    # -- parking -------------------------------------------------------------
    def claim(self, wrapper: Any) -> bool:
        """The fast path: Django's *wrapper* takes back the connection it
        parked.  True: it is ``IN_USE`` by *wrapper* again, checked as a
        checkout checks (recycle, ping after idle, a server that spoke).
        False: it was stolen, drained or closed, or failed the check (then
        invalidated); the caller connects the usual way."""
        holder = self.holder
        if self.state is not PARKED or holder is None or holder() is not wrapper:
            return False
        pool = self.pool
        if not pool.queue.unpark(self):  # under the queue's mutex
            return False
        if pool.retired:
            self._return(None)  # closed as "retired"
            return False
        if not self.checked_for_reuse():
            return False
        owner = self.owner
        token = _current_owner()
        if owner is None or owner() is not token:
            self.owner = weakref.ref(token, self._owner_gone)
        return True

    def checked_for_reuse(self) -> bool:
        """Check a connection still checked out of SQLAlchemy (parked, taken
        from parking, handed over) as a checkout checks it
        (:meth:`check_on_checkout`).  False: it was dead, and is invalidated
        (the caller connects anew).  An interrupt (``KeyboardInterrupt``,
        ``gevent.Timeout``) in the middle of the check leaves the session in
        an unknown state: invalidated too, then re-raised."""
        try:
            self.check_on_checkout(_monotonic())
        except BaseException as error:
            fairy = self.fairy
            self.fairy = self.holder = self.owner = None
            fairy.invalidate(e=error)
            if isinstance(error, sa_exc.DisconnectionError):
                return False
            raise
        return True

    def stolen(self) -> None:
        """Under the queue's mutex: another checkout took this parked
        connection (``FairQueue._steal``), or a checkin that would have
        parked it handed it to a waiting checkout (``FairQueue.park``).  Its
        former wrapper's and thread's references stop counting;
        ``AliasPool.checkout`` hands it out."""
        self.state = IN_USE
        self.holder = self.owner = None

    def release_parked(self) -> None:
        """Return a parked connection to SQLAlchemy's queue (its wrapper or
        thread is gone, or its wrapper connects the usual way).  Its session
        was reset when it parked.  Never raises (weak reference callbacks)."""
        try:
            if not self.pool.queue.unpark(self):
                return  # stolen or drained meanwhile
            fairy = self.fairy
            self.fairy = self.holder = self.owner = None
            self.state = IDLE
            fairy.close()
        except Exception:  # pragma: no cover - last resort
            logger.exception("Could not return a parked connection")

    def release_parked_by(self, wrapper: Any) -> None:
        """:meth:`release_parked`, if Django's *wrapper* is the one that
        parked it: a wrapper's record of its parked lease outlives a steal,
        and the lease may be parked by another wrapper since (that one
        keeps it)."""
        holder = self.holder
        if holder is not None and holder() is wrapper:
            self.release_parked()

    def close_parked(self, reason: BaseException) -> None:
        """Close a connection drained from the parked set (dispose)."""
        fairy = self.fairy
        self.fairy = self.holder = self.owner = None
        if fairy is not None:
            fairy.invalidate(e=reason)

    # -- other ends ------------------------------------------------------------
    def close_raw(self) -> None:
        """``close()`` on the driver connection by anyone but Django's close of
        this checkout: close the session for real (stock meaning); if it is
        checked out, the pool forgets it (never handed out again)."""
        fairy = self.fairy
        if self.state is IN_USE and fairy is not None:
            self.fairy = self.holder = self.owner = None
            self.state = CLOSED
            fairy.invalidate(e=RawClose("closed by a raw driver close()"))
        else:
            self.conn._djpool_close()

    def closed(self) -> None:
        """The driver connection is being closed by the pool."""
        self.state = CLOSED
        self.fairy = self.holder = self.owner = None

    def _owner_gone(self, ref: weakref.ref[Any]) -> None:
        """Weak reference callback: the holder wrapper or thread is gone."""
        if self.state is PARKED:
            if ref is self.holder or ref is self.owner:
                self.release_parked()  # idle already: back to the queue
            return
        if self.state is not IN_USE or (
            ref is not self.holder and ref is not self.owner
        ):
            return  # a former checkout's reference
        if ref is self.owner:
            holder = self.holder() if self.holder is not None else None
            if holder is not None and holder.connection is self.conn:
                # The wrapper still holds it (shared with another thread, or
                # kept): as stock Django, it stays open until the wrapper goes.
                return
            why = "the thread that checked it out ended without closing it"
        else:
            why = "its Django connection was garbage-collected without closing it"
        self.recover(why)

    def recover(self, why: str) -> None:
        """Return a checkout whose owner is gone (rolled back, or closed).

        Runs from a weak reference callback, in whichever thread the garbage
        collector runs: never raises."""
        try:
            self._return(why)
        except Exception:  # pragma: no cover - last resort
            logger.exception("Could not return an abandoned connection")


def cursor_checkout(cursor: Any) -> tuple[Lease, int] | None:
    """``(lease, serial)``: the checkout a cursor was created in
    (:meth:`Lease.track_cursor`), or None for a cursor no pool tracked."""
    return getattr(cursor, "_djpool_checkout", None)


def _close_cursors(cursors: list[Any], driver: Any) -> BaseException | None:
    """Close the cursors of this checkout that are still open; return why the
    connection must be invalidated, if closing one failed.

    Stock Django frees them by closing the connection.  In a pool the session
    lives on: a stale cursor closed or used later would act on the connection
    of whichever request holds it then.  Closed here, a cursor is inert; one
    that escaped (the garbage collector clears weak references before it
    finalises, and a finaliser may close it later) knows its checkout ended
    (:func:`cursor_checkout`) and closes client-side only.  (Server-side
    cursors whose Python object is already gone are closed by the session
    reset: see ``Lease.named_cursors``.)
    """
    failure: BaseException | None = None
    for cursor in cursors:
        # Kept past its request and used again, it must not reach the
        # session, and it fails as stock Django's would, on its closed
        # connection (Driver.close_at_checkin).
        try:
            driver.close_at_checkin(cursor)
        except Exception as error:
            failure = failure or error
    return failure
