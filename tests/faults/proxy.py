"""A TCP proxy on 127.0.0.1 that can turn into a silent network.

It forwards bytes both ways between its clients and one server until told to
stall: from then on the stalled sockets stay open (no RST, no FIN) but not a
byte more is forwarded in either direction, the way a dropped route, a
crashed NAT box or a frozen VM looks to a client.  ``stall("existing")``
freezes the connections open now and keeps forwarding new ones;
``stall("all")`` also freezes every connection accepted afterwards (the
handshake never gets an answer, as when the whole server host went silent).
``resume()`` forwards again.

One thread runs a ``selectors`` loop; ``close()`` ends it and closes every
socket.  Used as a context manager by the fault suite (test_stall.py).
"""

from __future__ import annotations

import selectors
import socket
import threading
from typing import Literal

_CHUNK = 65536


class _Pair:
    """One client connection and its upstream connection."""

    def __init__(self, client: socket.socket, upstream: socket.socket | None) -> None:
        self.client = client
        self.upstream = upstream
        self.stalled = False
        #: Bytes read from one side not yet written to the other.
        self.pending: dict[socket.socket, bytes] = {}

    def other(self, sock: socket.socket) -> socket.socket | None:
        return self.upstream if sock is self.client else self.client


class StallingProxy:
    """Forward 127.0.0.1:``port`` to ``target``; ``stall()`` makes it silent."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._pairs: list[_Pair] = []
        self._stall_new = False
        self._closing = False
        #: Connections accepted so far (stalled ones included).
        self.accepted = 0
        self._wakeup_r, self._wakeup_w = socket.socketpair()
        self._wakeup_r.setblocking(False)
        self._selector.register(self._wakeup_r, selectors.EVENT_READ, "wakeup")
        self._thread = threading.Thread(
            target=self._run, name=f"stalling-proxy-{self.port}", daemon=True
        )
        self._thread.start()

    def __repr__(self) -> str:
        return f"<StallingProxy 127.0.0.1:{self.port} -> {self.target}>"

    def __enter__(self) -> StallingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- switches ---------------------------------------------------------------
    def stall(self, which: Literal["existing", "all"] = "all") -> None:
        """Stop forwarding on the open connections, and with ``"all"`` on every
        connection accepted from now on (accepted, never answered)."""
        with self._lock:
            for pair in self._pairs:
                pair.stalled = True
            if which == "all":
                self._stall_new = True
        self._wake()

    def resume(self) -> None:
        """Forward again, on new connections and (what is left of) old ones."""
        with self._lock:
            self._stall_new = False
            for pair in self._pairs:
                pair.stalled = False
        self._wake()

    def close(self) -> None:
        self._closing = True
        self._wake()
        self._thread.join(5)

    # -- the loop -----------------------------------------------------------------
    def _wake(self) -> None:
        try:
            self._wakeup_w.send(b"x")
        except OSError:
            pass

    def _run(self) -> None:
        try:
            while not self._closing:
                self._refresh_interest()
                for key, _ in self._selector.select(0.5):
                    if key.data == "wakeup":
                        try:
                            self._wakeup_r.recv(_CHUNK)
                        except BlockingIOError:
                            pass
                    elif key.data is None:
                        self._accept()
                    else:
                        self._pump(key.data, key.fileobj)  # type: ignore[arg-type]
        finally:
            self._shutdown()

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        self.accepted += 1
        with self._lock:
            stall = self._stall_new
        upstream = None
        if not stall:
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                return
            upstream.setblocking(False)
        client.setblocking(False)
        pair = _Pair(client, upstream)
        pair.stalled = stall
        with self._lock:
            self._pairs.append(pair)

    def _refresh_interest(self) -> None:
        """Read only from the sockets of forwarding pairs (a stalled pair's
        bytes stay in the kernel buffers, unread and unanswered)."""
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            for sock in (pair.client, pair.upstream):
                if sock is None or sock.fileno() < 0:
                    continue
                wanted = 0
                if not pair.stalled:
                    wanted = selectors.EVENT_READ
                    if pair.pending.get(sock):  # bytes waiting for the other side
                        wanted = 0
                    other = pair.other(sock)
                    if other is not None and pair.pending.get(other):
                        wanted |= selectors.EVENT_WRITE
                self._set_interest(sock, wanted, pair)

    def _set_interest(self, sock: socket.socket, events: int, pair: _Pair) -> None:
        try:
            key = self._selector.get_map().get(sock)
            if not events:
                if key is not None:
                    self._selector.unregister(sock)
            elif key is None:
                self._selector.register(sock, events, pair)
            elif key.events != events:
                self._selector.modify(sock, events, pair)
        except (ValueError, KeyError, OSError):
            pass

    def _pump(self, pair: _Pair, sock: socket.socket) -> None:
        if pair.stalled:
            return
        other = pair.other(sock)
        if other is None:
            return
        try:
            waiting = pair.pending.pop(other, b"")  # bytes for *sock* to send
            if waiting:
                sent = sock.send(waiting)
                if sent < len(waiting):
                    pair.pending[other] = waiting[sent:]
            data = sock.recv(_CHUNK) if not pair.pending.get(sock) else None
        except BlockingIOError:
            return
        except OSError:
            self._drop(pair)
            return
        if data is None:
            return
        if not data:  # EOF from one side: close both, as a real hop would
            self._drop(pair)
            return
        try:
            sent = other.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._drop(pair)
            return
        if sent < len(data):
            pair.pending[sock] = data[sent:]

    def _drop(self, pair: _Pair) -> None:
        with self._lock:
            if pair in self._pairs:
                self._pairs.remove(pair)
        for sock in (pair.client, pair.upstream):
            if sock is None:
                continue
            try:
                self._selector.unregister(sock)
            except (KeyError, ValueError):
                pass
            sock.close()

    def _shutdown(self) -> None:
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            self._drop(pair)
        self._selector.close()
        self._listener.close()
        self._wakeup_r.close()
        self._wakeup_w.close()
