"""Deadlines for the round trips the pool itself makes (``ping_timeout``).

A pre-ping, the rollback at checkin or a session reset blocks in the driver
until the server answers.  On a silent network (a dropped route, a frozen
host: no RST, no FIN) that is until the kernel gives up, minutes later,
while the request holds its pool slot.  None of the drivers offers a
per-call timeout on a blocking connection (psycopg 3 and psycopg2 none at
all, mysqlclient only ``read_timeout`` fixed at connect), so the deadline is
enforced from outside:

- :func:`bounded` records the round trip and its deadline in one shared set
  for as long as it runs;
- one watchdog thread sleeps until the earliest deadline in the set; if that
  round trip is still running then, it shuts the connection's socket down
  (``shutdown(SHUT_RDWR)`` on a duplicate of its descriptor, after checking
  the descriptor still names the socket the connection opened);
- the driver's blocked ``recv()`` returns at once, the driver raises, and
  :func:`bounded` replaces that error with :class:`RoundTripTimeout` naming
  the deadline.  The pool invalidates the connection, as for any failed
  ping.  A round trip that overran but still completed raises too: its
  socket is cut, so the connection must not be reused.

Cost on the calling thread: about a microsecond per round trip (two
uncontended lock round trips and a set insert and removal, no system call).  The watchdog wakes only at deadlines and,
while idle, once per shortest ``ping_timeout`` seen; it never calls into a
driver.  Under gevent or eventlet it is a real OS thread with real locks
(``gevent.monkey.get_original``, ``eventlet.patcher.original``), so it also
fires while a C driver (mysqlclient) blocks the whole process.  After
``fork()`` the child starts its own watchdog on first use.
"""

from __future__ import annotations

import _socket
import logging
import os
import sys
import time
from types import TracebackType
from typing import Any

from django.db import OperationalError

logger = logging.getLogger("djpoolapp")


class RoundTripTimeout(OperationalError):
    """A round trip the pool made got no answer within ``ping_timeout``.

    Its socket was shut down to end the wait; the connection is invalidated.
    Subclasses Django's ``OperationalError``.
    """


def _real_thread_primitives() -> tuple[Any, Any]:
    """``(start_new_thread, allocate_lock)`` of the OS, even under gevent or
    eventlet monkeypatching (a green watchdog would never run while a driver
    blocks the process in C, as mysqlclient always does)."""
    gevent_monkey = sys.modules.get("gevent.monkey")
    if gevent_monkey is not None and gevent_monkey.is_module_patched("threading"):
        start, allocate = gevent_monkey.get_original(
            "_thread", ["start_new_thread", "allocate_lock"]
        )
        return start, allocate
    eventlet_patcher = sys.modules.get("eventlet.patcher")
    if eventlet_patcher is not None and eventlet_patcher.is_monkey_patched("thread"):
        original = eventlet_patcher.original("_thread")
        return original.start_new_thread, original.allocate_lock
    import _thread

    return _thread.start_new_thread, _thread.allocate_lock


def cut_socket(identity: tuple[int, int, int]) -> bool:
    """Shut down the socket ``(fd, device, inode)`` names, if the descriptor
    still names it; return whether it was shut down.

    Works on a duplicate of the descriptor: the connection keeps its own
    (the driver closes it later), and a number since reused for another
    file is never touched.
    """
    fd, device, inode = identity
    try:
        duplicate = os.dup(fd)
    except OSError:
        return False
    try:
        stat = os.fstat(duplicate)
        if (stat.st_dev, stat.st_ino) != (device, inode):
            return False
        sock = _socket.socket(fileno=duplicate)
        duplicate = -1  # now owned by sock
        try:
            sock.shutdown(_socket.SHUT_RDWR)
        finally:
            sock.close()
        return True
    except OSError:
        return False
    finally:
        if duplicate >= 0:
            os.close(duplicate)


class _Deadline:
    """One guarded round trip (a context manager, see :func:`bounded`)."""

    __slots__ = ("at", "identity", "seconds", "what", "fired", "_watchdog")

    def __init__(
        self,
        watchdog: Watchdog,
        identity: tuple[int, int, int],
        seconds: float,
        what: str,
    ) -> None:
        self._watchdog = watchdog
        self.identity = identity
        self.seconds = seconds
        self.what = what
        self.fired = False
        self.at = 0.0

    def __enter__(self) -> _Deadline:
        self._watchdog.add(self)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self._watchdog.finish(self):
            return
        message = (
            f"no answer to the pool's {self.what} within ping_timeout="
            f"{self.seconds:g} s: the connection's socket was shut down"
        )
        logger.warning("%s (%s)", message, error or "the round trip completed late")
        raise RoundTripTimeout(message) from error


class _Unbounded:
    """What :func:`bounded` returns when there is nothing to bound."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


UNBOUNDED = _Unbounded()


class Watchdog:
    """The deadlines of one process and the thread that enforces them."""

    def __init__(self) -> None:
        self._start_thread, allocate_lock = _real_thread_primitives()
        self._lock = allocate_lock()
        #: Held while nobody asked the thread to wake up (see _sleep).
        self._wake = allocate_lock()
        self._wake.acquire()
        self._wake_requested = False
        #: The round trips running now (a handful: one per busy thread).
        self._active: set[_Deadline] = set()
        self._running = False
        #: When the thread will next look at the round trips (monotonic seconds).
        self._wake_at = 0.0
        #: Idle sleep: the shortest deadline seen, so that no later deadline
        #: ever needs to wake the thread early.
        self._idle = 60.0
        #: Sockets shut down so far (for tests and the logs).
        self.fired = 0

    # -- the calling threads ------------------------------------------------------
    def add(self, deadline: _Deadline) -> None:
        at = deadline.at = time.monotonic() + deadline.seconds
        with self._lock:
            self._active.add(deadline)
            if not self._running:
                self._idle = deadline.seconds
                self._wake_at = at
                try:
                    self._start_thread(self._run, ())
                except BaseException:
                    self._active.discard(deadline)
                    raise
                self._running = True
            elif at < self._wake_at:
                self._idle = min(self._idle, deadline.seconds)
                self._wake_at = at
                if not self._wake_requested:
                    self._wake_requested = True
                    self._wake.release()

    def finish(self, deadline: _Deadline) -> bool:
        """Mark the round trip over; True if its socket was cut meanwhile."""
        with self._lock:
            self._active.discard(deadline)
            return deadline.fired

    # -- the watchdog thread ------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                delay = self._fire_overdue()
            except Exception:  # never let the thread die: look again soon
                delay = 0.1
            self._sleep(delay)

    def _fire_overdue(self) -> float:
        """Cut every overdue round trip; return the seconds until the next
        deadline (or the idle period)."""
        with self._lock:
            now = time.monotonic()
            overdue = [each for each in self._active if each.at <= now]
            for deadline in overdue:
                # Under the lock: the owner cannot finish (and its driver
                # close the socket) while this cuts it.
                self._active.discard(deadline)
                deadline.fired = True
                self.fired += 1
                cut_socket(deadline.identity)
            self._wake_at = min(
                (each.at for each in self._active), default=now + self._idle
            )
            return self._wake_at - now

    def _sleep(self, seconds: float) -> None:
        if self._wake.acquire(timeout=max(seconds, 0.0)):
            with self._lock:
                self._wake_requested = False  # the lock is held again: reset


_watchdog: Watchdog | None = None


def watchdog() -> Watchdog:
    """The process's watchdog (created on first use, again after fork)."""
    global _watchdog
    if _watchdog is None:
        _watchdog = Watchdog()
    return _watchdog


def _forget_after_fork() -> None:
    global _watchdog
    _watchdog = None  # the thread did not survive the fork; its locks may be held


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def bounded(conn: Any, what: str) -> _Deadline | _Unbounded:
    """A context manager bounding one round trip of the pool on *conn*.

    *conn* is a pooled driver connection; its pool's ``ping_timeout``
    (seconds) is the deadline and its socket, recorded when opened, is what
    the watchdog shuts down.  *what* names the round trip in the error
    ("pre-ping", "rollback", "session reset").  Raises
    :class:`RoundTripTimeout` (from the driver's error) when the deadline
    passed.  Connections without a pool, a socket (SQLite) or a
    ``ping_timeout`` are not bounded.
    """
    pool = getattr(conn, "_djpool_pool", None)
    identity = getattr(conn, "_djpool_socket", None)
    if pool is None or identity is None:
        return UNBOUNDED
    seconds = pool.options.get("ping_timeout")
    if seconds is None:
        return UNBOUNDED
    return _Deadline(_watchdog or watchdog(), identity, float(seconds), what)
