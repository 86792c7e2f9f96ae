"""The checkout's zero-timeout poll (djpoolapp/drivers.py
``_has_pending_input``) on real sockets, no database: it tells a quiet
socket from one the far end wrote to or closed, and keeps the GIL."""

from __future__ import annotations

import ctypes
import os
import select
import socket
from collections.abc import Iterator

import pytest

from djpoolapp import drivers


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected TCP pair on 127.0.0.1."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    yield client, server
    client.close()
    server.close()


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


def test_pending_input__a_descriptor_that_is_no_socket_reports_input():
    """A closed or invalid descriptor says "ask the server" (POLLNVAL)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    os.close(write_end)
    assert drivers._has_pending_input(read_end) is True


@pytest.mark.skipif(not hasattr(select, "poll"), reason="no poll(2) here")
def test_pending_input__libc_poll_keeps_the_gil():
    """``ctypes.PyDLL`` functions keep the GIL (``CDLL`` ones release it,
    as ``select.poll`` does): the checkout must not hand the interpreter to
    another thread while it holds a connection (issue 12)."""
    assert drivers._POLL is not None
    assert drivers._POLL._flags_ & ctypes._FUNCFLAG_PYTHONAPI
