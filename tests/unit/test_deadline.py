"""The watchdog of djpoolapp/deadline.py on real sockets (no database): it
cuts a round trip that overruns, leaves one that ends in time alone, wakes
early for a shorter deadline, and never touches a descriptor that no longer
names the socket it was given."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from djpoolapp import deadline


def identity(sock: socket.socket) -> tuple[int, int, int]:
    stat = os.fstat(sock.fileno())
    return sock.fileno(), stat.st_dev, stat.st_ino


@pytest.fixture
def watchdog() -> deadline.Watchdog:
    return deadline.Watchdog()


def guarded_recv(
    watchdog: deadline.Watchdog, sock: socket.socket, seconds: float
) -> tuple[bytes | BaseException, float]:
    """``recv()`` under a deadline: what it returned or raised, and when."""
    started = time.monotonic()
    try:
        with deadline._Deadline(watchdog, identity(sock), seconds, "test read"):
            result: bytes | BaseException = sock.recv(10)
    except deadline.RoundTripTimeout as error:
        result = error
    return result, time.monotonic() - started


def test_watchdog__cuts_a_round_trip_that_overruns(pair, watchdog):
    client, _ = pair
    result, elapsed = guarded_recv(watchdog, client, 0.2)
    assert isinstance(result, deadline.RoundTripTimeout)
    assert str(result) == (
        "no answer to the pool's test read within ping_timeout=0.2 s: the "
        "connection's socket was shut down"
    )
    assert 0.18 <= elapsed < 1.5
    assert watchdog.fired == 1
    with pytest.raises(OSError):  # shut down for both directions
        client.send(b"x")


def test_watchdog__leaves_a_round_trip_that_ends_in_time_alone(pair, watchdog):
    client, server = pair
    threading.Timer(0.05, server.send, [b"pong"]).start()
    result, _ = guarded_recv(watchdog, client, 0.5)
    assert result == b"pong"
    time.sleep(0.6)  # past the deadline: nothing fires afterwards
    assert watchdog.fired == 0
    client.send(b"ping")
    assert server.recv(10) == b"ping"


def test_watchdog__a_shorter_deadline_added_later_fires_first(watchdog):
    """A long round trip is running (the thread sleeps until its deadline);
    a shorter one added then still fires on time."""
    pairs = []
    for _ in range(2):
        listener = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        listener.close()
        pairs.append((client, server))
    (long_client, long_server), (short_client, short_server) = pairs
    try:
        results: dict[str, tuple[object, float]] = {}
        long_reader = threading.Thread(
            target=lambda: results.__setitem__(
                "long", guarded_recv(watchdog, long_client, 3.0)
            )
        )
        long_reader.start()
        time.sleep(0.1)
        results["short"] = guarded_recv(watchdog, short_client, 0.2)
        long_server.send(b"done")  # the long one ends in time
        long_reader.join(5)
        assert isinstance(results["short"][0], deadline.RoundTripTimeout)
        assert results["short"][1] < 1.0, results
        assert results["long"][0] == b"done"
        assert watchdog.fired == 1
    finally:
        for client, server in pairs:
            client.close()
            server.close()


def test_cut_socket__never_touches_a_reused_descriptor(pair):
    """The recorded descriptor number now names another socket: left alone."""
    client, _ = pair
    listener = socket.create_server(("127.0.0.1", 0))
    other = socket.create_connection(listener.getsockname())
    peer, _ = listener.accept()
    listener.close()
    recorded, number = identity(client), client.fileno()
    client.close()
    os.dup2(other.fileno(), number)  # the number now names another socket
    reused = socket.socket(fileno=number)
    try:
        assert deadline.cut_socket(recorded) is False
        reused.send(b"still open")
        assert peer.recv(20) == b"still open"
    finally:
        reused.close()
        other.close()
        peer.close()


def test_cut_socket__closed_descriptor_is_a_no_op(pair):
    client, _ = pair
    recorded = identity(client)
    client.close()
    assert deadline.cut_socket(recorded) is False


def test_cut_socket__keeps_the_owners_descriptor_open(pair):
    """Only the socket is shut down; the connection's own descriptor stays
    open (its driver closes it), so the number is not freed for reuse."""
    client, server = pair
    assert deadline.cut_socket(identity(client)) is True
    os.fstat(client.fileno())  # still a valid descriptor
    assert server.recv(10) == b""  # the peer saw the FIN


def test_bounded__nothing_to_bound_without_pool_or_socket():
    class Bare:
        pass

    assert deadline.bounded(Bare(), "pre-ping") is deadline.UNBOUNDED
