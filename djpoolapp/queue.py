"""A fair queue for SQLAlchemy's ``QueuePool``: waiters are served first come,
first served (CONTRACT section 2).

SQLAlchemy's own ``sqlalchemy.util.queue.Queue`` puts a returned connection
back on its idle list and notifies one waiter; until that waiter runs, any
thread calling ``get()`` may take the connection (it *barges*).  A thread that
has just returned a connection is the likeliest to do so, so under
contention the same few threads keep the connections while the others time
out.  (SQLAlchemy's finding 6 in FINDINGS.md; issue 12 measured 567
``PoolTimeout`` and 28 of 64 threads never served with ``pool_size=4``.)

:class:`FairQueue` hands a returned item to the longest-waiting getter
instead: ``put()`` assigns it to that waiter and wakes only it; the item never
becomes idle, so no other thread can take it.  A getter that arrives while
others wait finds nothing idle and queues behind them.  Idle items (no one
waiting) are taken LIFO or FIFO as ``use_lifo`` says, as before.

:class:`FairQueuePool` is a ``QueuePool`` that uses it through SQLAlchemy's
``_queue_class`` hook; overflow, timeouts and their ``TimeoutError`` are
SQLAlchemy's own, unchanged (see :class:`FairQueuePool`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Generic, TypeVar

from sqlalchemy.pool import ConnectionPoolEntry, QueuePool
from sqlalchemy.util.queue import Empty, Full, QueueCommon

from .lease import IN_USE as _IN_USE
from .lease import PARKED as _PARKED
from .lease import Retired

__all__ = ["Empty", "FairQueue", "FairQueuePool", "Full", "Stolen"]

_T = TypeVar("_T")
_ABSENT = object()


class Stolen(Exception):  # noqa: N818 - a signal, not an error
    """Raised by :meth:`FairQueue.get` with a lease (``item``) that is still
    checked out of SQLAlchemy, instead of a pool entry: either a *parked*
    connection (kept by its thread between requests) taken from its thread
    because nothing was idle, or (``handed``) a connection that a request's
    checkin handed straight to this waiting checkout (:meth:`FairQueue.park`).
    ``AliasPool.checkout`` catches it and hands ``item`` out; SQLAlchemy's
    ``_do_get`` lets it pass through untouched (nothing is counted or created
    before ``get()`` returns)."""

    def __init__(self, item: Any, handed: bool = False) -> None:
        super().__init__("a parked connection was taken for this checkout")
        self.item = item
        self.handed = handed


class _Waiter:
    """One blocked ``get()``: the item handed to it, and how to wake it.

    It sleeps on a lock of its own, taken when it queues up and released by
    the thread that serves it (what ``threading.Condition.wait()`` does
    underneath, without a ``Condition`` per wait): ``put()`` wakes exactly the
    waiter it served, never a crowd.  ``threading.Lock`` is looked up at each
    wait, so gevent's and eventlet's monkeypatching make it cooperative."""

    __slots__ = ("lock", "item", "served", "handed")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.item: Any = None
        self.served = False
        #: The item is a lease handed over by :meth:`FairQueue.park` (still
        #: checked out of SQLAlchemy), not a pool entry.
        self.handed = False

    def wake(self) -> None:
        """Under the queue's mutex, once served: let the waiter run."""
        self.lock.release()


class FairQueue(QueueCommon[_T], Generic[_T]):
    """``sqlalchemy.util.queue.Queue`` with FIFO hand-off to waiters.

    Same API and semantics: ``put(item, block=True, timeout=None)``,
    ``get(block=True, timeout=None)`` (timeouts in seconds; ``Empty`` /
    ``Full`` from ``sqlalchemy.util.queue``), ``put_nowait``, ``get_nowait``,
    ``empty()``, ``full()``, ``qsize()`` (idle items only), ``maxsize``
    (``<= 0``: unbounded) and ``use_lifo`` (order of *idle* items).

    Differences, all about who gets an item when threads wait:

    - ``put()`` with getters waiting gives the item to the oldest of them
      directly; ``qsize()`` does not change and no other getter can take it.
    - ``get()`` waits only when nothing is idle, and then behind every
      earlier waiter.
    - A getter whose timeout expires at the moment an item is handed to it
      returns the item rather than losing it; one interrupted while waiting
      (``KeyboardInterrupt``, ``gevent.Timeout``, a killed greenlet) passes
      an item already handed to it on to the next waiter.

    The mutex is reentrant, as SQLAlchemy's is: a garbage-collected checkout
    may return its connection (``put()``) from inside ``get()`` in the same
    thread.  Only ``threading`` primitives are used, so gevent's and
    eventlet's monkeypatching make every wait cooperative.
    """

    def __init__(self, maxsize: int = 0, use_lifo: bool = False) -> None:
        self.maxsize = maxsize
        self.use_lifo = use_lifo
        self.mutex = threading.RLock()
        self._idle: deque[_T] = deque()
        self._waiters: deque[_Waiter] = deque()
        # put(block=True) on a full queue (QueuePool never does it): waits here.
        self._not_full = threading.Condition(self.mutex)
        self._blocked_putters = 0
        #: Parked items, oldest first: checked out (for SQLAlchemy), kept by
        #: their thread between requests, claimable by any getter when
        #: nothing is idle (see :meth:`park`).
        self._parked: dict[Any, None] = {}
        #: False once the pool is disposed: nothing parks or is stolen.
        self.parking = True

    def __repr__(self) -> str:
        return (
            f"<FairQueue idle={len(self._idle)} parked={len(self._parked)} "
            f"waiting={len(self._waiters)} "
            f"maxsize={self.maxsize} use_lifo={self.use_lifo}>"
        )

    # -- sizes ---------------------------------------------------------------
    def qsize(self) -> int:
        """Idle items (handed-off items are never counted)."""
        with self.mutex:
            return len(self._idle)

    def empty(self) -> bool:
        with self.mutex:
            return not self._idle

    def full(self) -> bool:
        with self.mutex:
            return self._full()

    def _full(self) -> bool:
        # Parked items take the place they would take idle: a checkin past
        # pool_size is refused (QueuePool closes that overflow connection).
        return 0 < self.maxsize <= len(self._idle) + len(self._parked)

    def waiting(self) -> int:
        """Getters blocked now, waiting for an item."""
        with self.mutex:
            return len(self._waiters)

    def parked(self) -> int:
        """Items parked now (idle, but kept by their thread)."""
        return len(self._parked)

    # -- park (the fast path: a connection stays with its thread) ------------
    def park(self, item: Any) -> bool:
        """Keep *item* (a lease, state ``IN_USE``, checked out of SQLAlchemy)
        with its thread instead of returning it, or hand it straight to the
        longest-waiting getter.  True: it is now ``PARKED``, or ``IN_USE`` by
        that getter (handed over: its ``get()`` raises ``Stolen(item,
        handed=True)``; the caller must not touch it any more).

        A getter that waits is owed the next connection (FIFO hand-off, as
        :meth:`put`): it gets this one directly, still checked out, so neither
        SQLAlchemy's checkin nor its checkout runs for it.  Otherwise refused
        (False: return it the usual way) when an item is idle (idle
        connections are used first, in turn, each checked at its checkout: a
        thread keeps one only while the pool has no other to give), when
        parked items fill ``maxsize`` (an overflow connection is closed on
        return, as before) or once the pool is disposed.
        """
        with self.mutex:
            if not self.parking:
                return False
            if self._waiters:
                self._hand_over(item)
                return True
            parked = self._parked
            if self._idle or 0 < self.maxsize <= len(parked):  # (_full, inline)
                return False
            parked[item] = None
            item.state = _PARKED
            return True

    def _hand_over(self, item: Any) -> None:
        """Under the mutex, a getter waiting: give it *item*, a lease still
        checked out of SQLAlchemy (its former holder's references stop
        counting: ``Lease.stolen``)."""
        waiter = self._waiters.popleft()
        item.stolen()
        waiter.item = item
        waiter.handed = waiter.served = True
        waiter.wake()

    def _pass_on_handed(self, item: Any) -> None:
        """Under the mutex: a getter handed *item* was interrupted before it
        could use it.  The next waiter gets it; with none, it goes back to
        the pool (``Lease.release_parked``: SQLAlchemy's checkin, which
        re-enters :meth:`put` under this reentrant mutex)."""
        if self._waiters:
            self._hand_over(item)
            return
        self._parked[item] = None
        item.state = _PARKED
        item.release_parked()

    def unpark(self, item: Any) -> bool:
        """Take *item* out of the parked set (its thread takes it back, or
        it goes back to the pool); True if it was parked, now ``IN_USE``.
        False: it was stolen, drained or never parked."""
        with self.mutex:
            if self._parked.pop(item, _ABSENT) is _ABSENT:
                return False
            item.state = _IN_USE
            return True

    def drain_parked(self) -> list[Any]:
        """Stop parking; unpark and return every parked item (to be closed)."""
        with self.mutex:
            self.parking = False
            items = list(self._parked)
            self._parked.clear()
            for item in items:
                item.state = _IN_USE
            return items

    def _steal(self) -> None:
        """Under the mutex, nothing idle: raise :class:`Stolen` with the
        longest-parked item, if any (its thread will notice at its next
        request: ``Lease.claim`` fails)."""
        if self._parked and self.parking:
            item = next(iter(self._parked))
            del self._parked[item]
            item.stolen()  # IN_USE, no holder: its old owner's refs are inert
            raise Stolen(item)

    # -- put -----------------------------------------------------------------
    def put(self, item: _T, block: bool = True, timeout: float | None = None) -> None:
        """Give *item* to the longest waiter, or make it idle.

        With nobody waiting and the queue full: raise ``Full`` at once
        (``block=False``) or after *timeout* seconds, or wait for room.
        """
        with self.mutex:
            if self._hand_off(item):
                return
            if self._full():
                if not block:
                    raise Full
                if timeout is not None and timeout < 0:
                    raise ValueError("'timeout' must be a positive number")
                deadline = None if timeout is None else time.monotonic() + timeout
                self._blocked_putters += 1
                try:
                    while self._full():
                        if deadline is None:
                            self._not_full.wait()
                            continue
                        remaining = deadline - time.monotonic()
                        if remaining <= 0.0:
                            raise Full
                        self._not_full.wait(remaining)
                finally:
                    self._blocked_putters -= 1
                if self._hand_off(item):  # a getter came while we waited
                    return
            self._idle.append(item)

    def put_nowait(self, item: _T) -> None:
        self.put(item, False)

    def _hand_off(self, item: _T) -> bool:
        """Under the mutex: give *item* to the oldest waiter, if any."""
        if not self._waiters:
            return False
        waiter = self._waiters.popleft()
        waiter.item = item
        waiter.served = True
        waiter.wake()
        return True

    # -- get -----------------------------------------------------------------
    def get(self, block: bool = True, timeout: float | None = None) -> _T:
        """An idle item, or one handed off after waiting behind earlier getters.

        Raises ``Empty`` at once when nothing is idle and *block* is false,
        or after *timeout* seconds (``None``: wait for ever).
        """
        with self.mutex:
            if self._idle:  # nobody waits while items are idle
                return self._pop_idle()
            self._steal()  # a parked connection rather than a wait or a new one
            if not block:
                raise Empty
            if timeout is not None and timeout < 0:
                raise ValueError("'timeout' must be a positive number")
            return self._wait(timeout)

    def get_nowait(self) -> _T:
        return self.get(False)

    def _pop_idle(self) -> _T:
        """Under the mutex, an item idle: take one (LIFO or FIFO, as
        ``use_lifo`` says); a putter blocked on a full queue may go on."""
        item = self._idle.pop() if self.use_lifo else self._idle.popleft()
        if self._blocked_putters:
            self._not_full.notify()
        return item

    def _wait(self, timeout: float | None) -> _T:
        """Under the mutex: queue up and wait for a hand-off.  The mutex is
        let go entirely while waiting (it is reentrant: a ``put()`` from a
        garbage-collected checkout may run inside a ``get()``), and taken
        back as it was, as ``threading.Condition.wait()`` does."""
        waiter = _Waiter()
        self._waiters.append(waiter)
        deadline = None if timeout is None else time.monotonic() + timeout
        mutex: Any = self.mutex
        try:
            while True:
                # An item may have become idle after get() looked (a put()
                # by the garbage collector in this thread: an abandoned
                # checkout's clean-up, under the reentrant mutex, e.g. while
                # the _Waiter above was allocated): it goes to the waiters
                # in turn, as put() gives it, before anyone sleeps.
                while self._idle and self._waiters:
                    self._hand_off(self._pop_idle())
                if waiter.served:
                    break
                remaining = None
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0.0:
                        break
                saved = mutex._release_save()
                try:
                    if remaining is None:
                        waiter.lock.acquire()
                    else:
                        waiter.lock.acquire(True, remaining)
                finally:
                    mutex._acquire_restore(saved)
        except BaseException:
            # Interrupted: never strand an item that was handed to us.
            if waiter.handed:
                self._pass_on_handed(waiter.item)
            elif waiter.served:  # (past maxsize if need be: QueuePool trims it)
                if not self._hand_off(waiter.item):
                    self._idle.append(waiter.item)
            else:
                self._waiters.remove(waiter)
            raise
        if waiter.handed:  # a lease, still checked out (park())
            raise Stolen(waiter.item, handed=True)
        if waiter.served:  # also when served just as the timeout expired
            return waiter.item  # type: ignore[no-any-return]
        self._waiters.remove(waiter)
        raise Empty


class FairQueuePool(QueuePool):
    """SQLAlchemy's ``QueuePool`` whose waiters are served first come, first
    served (:class:`FairQueue` through the ``_queue_class`` hook).

    Everything else is ``QueuePool``'s own code.  Its overflow counter
    (connections open beyond ``pool_size``) changes only when a connection is
    created or closed, never on a hand-off: a connection handed from a
    returning thread to a waiter stays open and checked out, so
    ``checkedout() = pool_size - qsize() + overflow`` still holds.  A checkout
    that finds no idle connection and no room to overflow waits in the queue
    up to ``timeout`` seconds, then ``_do_get`` raises SQLAlchemy's
    ``TimeoutError`` as before (``QueuePool limit of size ... reached``).
    """

    _queue_class: type[QueueCommon[ConnectionPoolEntry]] = FairQueue

    def waiting(self) -> int:
        """Checkouts blocked now, waiting for a connection."""
        queue: Any = self._pool
        return int(queue.waiting())

    def parked(self) -> int:
        """Connections parked with their thread now (idle, thread-affine);
        0 with a queue class that does not park (SQLAlchemy's own)."""
        parked = getattr(self._pool, "parked", None)
        return int(parked()) if parked is not None else 0

    def checkedout(self) -> int:
        """Connections in use now: a parked one counts as idle, not out."""
        return int(super().checkedout()) - self.parked()

    def dispose(self) -> None:
        """Close the idle connections, parked ones included; nothing parks
        afterwards (checked-out ones are closed when returned, as before)."""
        drain = getattr(self._pool, "drain_parked", None)
        for lease in drain() if drain is not None else ():
            lease.close_parked(Retired("its pool was disposed"))
        super().dispose()
