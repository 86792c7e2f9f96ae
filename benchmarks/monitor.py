"""The server's view of a run: which sessions a worker had open, sampled.

A benchmark worker cannot count its own connections honestly (a pool's
idea of "open" is what is being tested), so the parent process asks the
server instead, over its own unpooled driver connection, about twenty times
a second while the worker runs:

- PostgreSQL: the backends of ``pg_stat_activity`` whose ``application_name``
  is the one given to that worker (unique per run);
- MariaDB/MySQL: the ``PROCESSLIST`` ids on the benchmark's database, later
  intersected with the session ids that actually answered the worker's
  requests (MariaDB has no application_name), so a concurrent test on the
  same database is not counted.

The peak of those counts is the "server connections" column.  ``Relay``
counts round trips for ``hotpath.py``.
"""

from __future__ import annotations

import importlib.util
import socket
import threading
from typing import Any

from benchmarks import servers
from benchmarks.settings import parse_url

SAMPLE_INTERVAL = 0.05


def postgres_driver() -> str | None:
    """The PostgreSQL driver Django will pick here: "psycopg", "psycopg2" or None."""
    for name in ("psycopg", "psycopg2"):
        if importlib.util.find_spec(name) is not None:
            return name
    return None


def connect(database: str) -> Any:
    """An unpooled autocommit driver connection for monitoring (never TLS),
    to the server ``servers.url()`` names at the time of the call."""
    if database.startswith("postgres"):
        fields = parse_url(servers.url("postgres"))
        driver = postgres_driver()
        if driver is None:
            raise RuntimeError("neither psycopg nor psycopg2 is installed")
        module = importlib.import_module(driver)
        conn = module.connect(
            host=fields["HOST"], port=int(fields["PORT"] or 5432),
            user=fields["USER"], password=fields["PASSWORD"],
            dbname=fields["NAME"], sslmode="disable",
            application_name="djpool-bench-monitor", connect_timeout=5,
        )  # fmt: skip
        conn.autocommit = True
        return conn
    import MySQLdb

    fields = parse_url(servers.url("mysql"))
    conn = MySQLdb.connect(
        host=fields["HOST"], port=int(fields["PORT"] or 3306),
        user=fields["USER"], password=fields["PASSWORD"], connect_timeout=5,
    )  # fmt: skip
    conn.autocommit(True)
    return conn


def server_description(database: str) -> str:
    """Product and version, for the report's header."""
    conn = connect(database)
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT version()")
        (version,) = cursor.fetchone()
        cursor.close()
        return str(version).split(" on ")[0]
    finally:
        conn.close()


class SessionSampler:
    """Samples the sessions of one worker run in a background thread.

    Use as a context manager around the worker; then :meth:`peak` with the
    session ids the worker reported (ignored on PostgreSQL).
    """

    def __init__(self, database: str, application_name: str) -> None:
        self.database = database
        self.postgres = database.startswith("postgres")
        self.application_name = application_name
        self.samples: list[set[str]] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SessionSampler:
        self._conn = connect(self.database)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._conn.close()

    def _query(self) -> set[str]:
        cursor = self._conn.cursor()
        if self.postgres:
            cursor.execute(
                # djpoolapp appends " djpool/<host>/<pid>/<alias>" to its own.
                "SELECT pid FROM pg_stat_activity "
                "WHERE split_part(application_name, ' ', 1) = %s",
                [self.application_name],
            )
        else:
            cursor.execute(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s",
                [parse_url(servers.url("mysql"))["NAME"]],
            )
        rows = {str(row[0]) for row in cursor.fetchall()}
        cursor.close()
        return rows

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.samples.append(self._query())
                self._stop.wait(SAMPLE_INTERVAL)
        except Exception as error:  # reported, the run itself goes on
            self.error = f"{type(error).__name__}: {error}"

    def peak(self, session_ids: list[str]) -> int | None:
        """Most sessions the worker held at once, as the server saw it."""
        if not self.samples:
            return None
        if self.postgres:
            return max(map(len, self.samples))
        mine = set(session_ids)
        return max(len(sample & mine) for sample in self.samples)


class Relay:
    """A TCP relay on 127.0.0.1 that counts the client's turns to speak."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.turns = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target, timeout=10)
            state = {"last": "server"}
            for source, sink, side in (
                (client, upstream, "client"),
                (upstream, client, "server"),
            ):
                threading.Thread(target=self._pump, args=(source, sink, side, state),
                                 daemon=True).start()  # fmt: skip

    def _pump(
        self, source: socket.socket, sink: socket.socket, side: str, state: dict
    ) -> None:
        try:
            while data := source.recv(65536):
                with self._lock:
                    if side == "client" and state["last"] == "server":
                        self.turns += 1
                    state["last"] = side
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._server.close()
