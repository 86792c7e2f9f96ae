"""The checkout's zero-timeout poll (djpoolapp/drivers.py
``_has_pending_input``) on real sockets, no database: it tells a quiet
socket from one the far end wrote to or closed, and keeps the GIL."""

from __future__ import annotations

import ctypes
import os
import resource
import select
import signal

import pytest

from djpoolapp import drivers


@pytest.mark.parametrize("use_libc", [True, False], ids=["libc-poll", "select"])
def test_pending_input__quiet_data_and_eof(pair, use_libc, monkeypatch):
    if not use_libc:
        monkeypatch.setattr(drivers, "_POLL", None)
    client, server = pair
    assert drivers._has_pending_input(client.fileno()) is False
    server.sendall(b"x")
    spins = 0
    while not drivers._has_pending_input(client.fileno()):
        spins += 1  # loopback delivery is immediate; never spins long
        assert spins < 10_000
    assert client.recv(1) == b"x"
    assert drivers._has_pending_input(client.fileno()) is False
    server.close()  # the server ending the session: EOF is pending input
    while not drivers._has_pending_input(client.fileno()):
        spins += 1
        assert spins < 10_000


def unused_descriptor() -> int:
    """A descriptor number no thread has open (the highest one allowed)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    fd = min(soft, 2**20) - 1
    with pytest.raises(OSError):
        os.fstat(fd)
    return fd


@pytest.mark.parametrize("use_libc", [True, False], ids=["libc-poll", "select"])
def test_pending_input__a_descriptor_that_is_no_socket_reports_input(
    use_libc, monkeypatch
):
    """A closed, negative or out-of-range descriptor says "ask the server"."""
    if not use_libc:
        monkeypatch.setattr(drivers, "_POLL", None)
    assert drivers._has_pending_input(unused_descriptor()) is True
    assert drivers._has_pending_input(-1) is True
    assert drivers._has_pending_input(2**31) is True


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="no interval timers")
def test_pending_input__a_signal_during_the_poll_is_retried(pair):
    """poll(2) interrupted by a signal (EINTR) is retried, as Python's own
    system calls are (PEP 475), not reported as an error or as input.  A
    timer fires every 50 µs while the check runs 100,000 times (before the
    retry, a few hundred of them raised OSError)."""
    client, _ = pair
    fired = [0]

    def count(signum: int, frame: object) -> None:
        fired[0] += 1

    previous = signal.signal(signal.SIGALRM, count)
    signal.setitimer(signal.ITIMER_REAL, 0.00005, 0.00005)
    try:
        answers = {drivers._has_pending_input(client.fileno()) for _ in range(100_000)}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert fired[0] > 100
    assert answers == {False}


@pytest.mark.skipif(not hasattr(select, "poll"), reason="no poll(2) here")
def test_pending_input__libc_poll_keeps_the_gil():
    """``ctypes.PyDLL`` functions keep the GIL (``CDLL`` ones release it,
    as ``select.poll`` does): the checkout must not hand the interpreter to
    another thread while it holds a connection (issue 12)."""
    assert drivers._POLL is not None
    assert drivers._POLL._flags_ & ctypes._FUNCFLAG_PYTHONAPI
