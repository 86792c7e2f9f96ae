"""Measurements behind ``manage.py djpool check`` and ``djpool bench``.

Kept apart from the command so that a benchmark suite (or a test) can call
:func:`check_alias` and :func:`run_bench` and read the figures from
dataclasses instead of parsing text.

``run_bench`` drives Django's real ``WSGIHandler`` (middleware,
``request_started`` / ``request_finished``, ``close_old_connections()``)
against a one-query view served from an internal urlconf, so the project's
own URLs are never needed.  It runs once as stock Django (djpoolapp's patches
undone, ``CONN_MAX_AGE = 0``: a new server connection per request) and once
pooled, and counts the server sessions that answered from the server's own
session ids.  It only reads: no table, row or setting is left behind.
"""

from __future__ import annotations

import io
import itertools
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from wsgiref.util import setup_testing_defaults

from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler
from django.db import OperationalError, connections
from django.http import HttpRequest, HttpResponse
from django.urls import path, set_urlconf
from django.utils.log import log_response

from . import patch, server
from .exceptions import PoolTimeout
from .pool import describe, pooled_backends

#: ``progress(label, done, total)``, called about once a second during a run.
Progress = Callable[[str, int, int], None]

WARMUP_PER_THREAD = 2
#: Seconds between two progress reports.
PROGRESS_EVERY = 1.0


class BenchError(Exception):
    """A measurement could not be made; the message says which alias and why."""


class LineProgress:
    """A :data:`Progress` for a terminal: one line, rewritten in place.

    Each report overwrites the line (carriage return, then the ANSI "erase to
    the end of the line", ``ESC [ K``) instead of adding one, and
    :meth:`clear` erases it, so that nothing of it is left above what is
    printed next: a last "181/200 requests" read after the results would look
    like lost requests.  Only for a terminal (``isatty()``): in a pipe or a
    file the carriage returns and escapes would pile up as text, and nobody
    watches the progress there, so ``djpool bench`` reports none.

    *write* takes text without adding a newline; *flush* pushes it out.
    """

    def __init__(self, write: Callable[[str], object], flush: Callable[[], object]):
        self._write = write
        self._flush = flush
        self.shown = False

    def __call__(self, label: str, done: int, total: int) -> None:
        self._write(f"\r  {label}: {done}/{total} requests\x1b[K")
        self._flush()
        self.shown = True

    def clear(self) -> None:
        """Erase the line, if a report is on it; the cursor stays at its start."""
        if self.shown:
            self._write("\r\x1b[K")
            self._flush()
            self.shown = False


def _redact(text: str, alias: str) -> str:
    """Driver messages do not quote passwords, but make sure of it."""
    password = connections.settings[alias].get("PASSWORD") or ""
    return text.replace(password, "********") if password else text


def _description(connection: Any) -> str:
    """``user@host:port/database`` of a Django connection, before connecting."""
    try:
        return describe(connection.get_connection_params())
    except Exception:  # e.g. ImproperlyConfigured for an empty NAME
        return "?"


def _ms(seconds: list[float]) -> float:
    return statistics.median(seconds) * 1000


# -- djpool check ------------------------------------------------------------
@dataclass(frozen=True)
class CheckReport:
    """What ``djpool check`` found for one alias.  Times in milliseconds."""

    alias: str
    vendor: str
    database: str
    server: str
    tls_in_use: bool | None
    tls: str
    #: Median time to open a new driver connection with the alias's
    #: parameters (TCP, TLS, authentication): what every request pays unpooled.
    connect_ms: float
    #: Median time for Django to get a connection from the pool
    #: (``ensure_connection()``, the idle-check included).
    checkout_ms: float
    #: Median time for Django to give it back (``close()``: reset and checkin).
    checkin_ms: float
    #: Median ``SELECT 1`` round trip on the pooled connection.
    round_trip_ms: float
    pool_size: int
    max_overflow: int
    max_connections: int | None
    #: How the driver reaches the server: ``"TCP"``, ``"Unix socket"``.
    transport: str = "TCP"

    @property
    def capacity(self) -> int:
        """Connections one process may open: ``pool_size + max_overflow``."""
        return self.pool_size + self.max_overflow

    @property
    def over_capacity(self) -> bool:
        """One process alone may open more connections than the server accepts."""
        return self.max_connections is not None and self.capacity > self.max_connections

    @property
    def connect_steps(self) -> str:
        """What opening a connection involved, e.g. "TCP, TLS, authentication"."""
        steps = [self.transport]
        if self.tls_in_use:
            steps.append("TLS")
        return ", ".join([*steps, "authentication"])


def check_alias(alias: str, samples: int = 20) -> CheckReport:
    """Connect through the pool of *alias* and time each step.

    Uses a private connection wrapper, so the caller's connection and
    transaction are untouched.  Raises :class:`BenchError` naming the alias
    and the reason when the server cannot be reached or the alias is not
    pooled.
    """
    if alias not in connections.settings:
        raise BenchError(f"database alias '{alias}' is not in DATABASES")
    connection = connections.create_connection(alias)
    where = _description(connection)
    try:
        connection.ensure_connection()
    except Exception as error:
        raise BenchError(_connect_failure(alias, where, error)) from error
    try:
        pool = getattr(connection.connection, "_djpool_pool", None)
        if pool is None:
            raise BenchError(
                f"database alias '{alias}' is not pooled by djpoolapp (opted out, "
                "SQLite not named in DJPOOL_OPTIONS['aliases'], Django's own "
                "pool, or DJPOOL_DISABLE)"
            )
        version = server.server_version(connection)
        tls_in_use, tls = server.tls_status(connection)
        limit = server.max_connections(connection)
        round_trips = []
        for _ in range(samples):
            started = time.perf_counter()
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
                cursor.fetchone()
            round_trips.append(time.perf_counter() - started)
        checkouts, checkins = [], []
        for _ in range(samples):
            connection.close()
            started = time.perf_counter()
            connection.ensure_connection()
            checkouts.append(time.perf_counter() - started)
        connection.close()
        checkins.extend(_time_checkins(connection, samples))
        connects = []
        for _ in range(3):
            started = time.perf_counter()
            fresh = pool.driver.connect(pool.connect_kwargs)
            connects.append(time.perf_counter() - started)
            fresh.close()  # not checked out: a real close, pool untouched
    finally:
        connection.close()
    return CheckReport(
        alias=alias,
        vendor=connection.vendor,
        database=pool.description,
        server=version,
        tls_in_use=tls_in_use,
        tls=tls,
        connect_ms=_ms(connects),
        checkout_ms=_ms(checkouts),
        checkin_ms=_ms(checkins),
        round_trip_ms=_ms(round_trips),
        pool_size=pool.options["pool_size"],
        max_overflow=pool.options["max_overflow"],
        max_connections=limit,
        transport=transport(pool.connect_kwargs, connection.vendor),
    )


def _connect_failure(alias: str, where: str, error: BaseException) -> str:
    """Say what kept *alias* from connecting: the pool was exhausted, the
    server could not be reached, or the settings are wrong."""
    reason = _redact(str(error).strip() or type(error).__name__, alias)
    if isinstance(error, PoolTimeout):
        return (
            f"database alias '{alias}' ({where}): the pool is exhausted, every "
            f"connection is checked out: {reason}"
        )
    if isinstance(error, OperationalError):
        return f"database alias '{alias}' ({where}) is unreachable: {reason}"
    return (
        f"database alias '{alias}' ({where}) has a configuration error "
        f"({type(error).__name__}): {reason}. Check DATABASES['{alias}'] (its "
        "OPTIONS go to the driver; pool options belong in DJPOOL_OPTIONS)"
    )


def transport(connect_kwargs: dict[str, Any], vendor: str) -> str:
    """``"TCP"`` or ``"Unix socket"``: how the driver reaches the server."""
    if vendor == "postgresql":
        host = str(connect_kwargs.get("host") or "")
        return "Unix socket" if not host or host.startswith("/") else "TCP"
    if vendor == "mysql":
        host = str(connect_kwargs.get("host") or "localhost")
        if connect_kwargs.get("unix_socket") or host == "localhost":
            return "Unix socket"
        return "TCP"
    return "file"


def _time_checkins(connection: Any, samples: int) -> list[float]:
    times = []
    for _ in range(samples):
        connection.ensure_connection()
        started = time.perf_counter()
        connection.close()
        times.append(time.perf_counter() - started)
    return times


# -- djpool bench ------------------------------------------------------------
def bench_view(request: HttpRequest, alias: str) -> HttpResponse:
    """The trivial view: one query, answering the server session that ran it."""
    session = server.session_id(connections[alias])
    if session is None:  # SQLite: no server session, one query all the same
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT 1")
    return HttpResponse("-" if session is None else str(session))


class BenchURLConf:
    """The urlconf of the benchmark requests (never the project's)."""

    urlpatterns = [path("djpool-bench/<str:alias>/", bench_view)]


class BenchHandler(WSGIHandler):
    """Django's WSGI handler, routing every request to :class:`BenchURLConf`.

    ``BaseHandler.get_response`` without its one read of
    ``settings.ROOT_URLCONF``: a project configured with
    ``settings.configure()`` may have none, and these requests never use it.
    """

    def get_response(self, request: HttpRequest) -> Any:
        request.urlconf = BenchURLConf  # type: ignore[assignment]
        set_urlconf(BenchURLConf)  # type: ignore[arg-type]
        response = self._middleware_chain(request)  # type: ignore[attr-defined]
        response._resource_closers.append(request.close)
        if response.status_code >= 400:
            log_response(
                "%s: %s", response.reason_phrase, request.path,
                response=response, request=request,
            )  # fmt: skip
        return response


@dataclass
class RunResult:
    """One pass of requests.  Latencies in milliseconds."""

    label: str
    requests: int
    threads: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list, repr=False)
    #: Distinct server session ids that answered (None for SQLite).
    sessions: int | None = None
    #: Those session ids, to match against the server's own session list.
    session_ids: list[str] = field(default_factory=list, repr=False)
    #: CPU time of this process while timed (all threads): unlike latency,
    #: barely moved by other programs competing for the same cores.
    cpu_seconds: float = 0.0

    @property
    def p50(self) -> float:
        return _percentile(self.latencies, 50)

    @property
    def p95(self) -> float:
        return _percentile(self.latencies, 95)

    @property
    def p99(self) -> float:
        return _percentile(self.latencies, 99)

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def _percentile(values: list[float], percent: int) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]


@dataclass(frozen=True)
class BenchResult:
    """Both passes of one benchmark, and how they compare."""

    alias: str
    vendor: str
    database: str
    unpooled: RunResult
    pooled: RunResult

    @property
    def speedup_p50(self) -> float:
        """How many times faster the median pooled request is."""
        return self.unpooled.p50 / self.pooled.p50 if self.pooled.p50 else 0.0

    @property
    def speedup_p95(self) -> float:
        return self.unpooled.p95 / self.pooled.p95 if self.pooled.p95 else 0.0

    @property
    def throughput_ratio(self) -> float:
        slow = self.unpooled.requests_per_second
        return self.pooled.requests_per_second / slow if slow else 0.0


def _host() -> str:
    """A Host header the project's ALLOWED_HOSTS accepts."""
    for host in settings.ALLOWED_HOSTS:
        # "*" accepts anything; ".example.com" accepts example.com itself.
        return "localhost" if host == "*" else str(host).lstrip(".")
    return "localhost"  # DEBUG allows it with empty ALLOWED_HOSTS


def _environ(path_info: str) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "PATH_INFO": path_info,
        "REQUEST_METHOD": "GET",
        "HTTP_HOST": _host(),
        "wsgi.input": io.BytesIO(),
    }
    setup_testing_defaults(environ)
    if settings.SECURE_SSL_REDIRECT:
        environ["wsgi.url_scheme"] = "https"
    return environ


def _request(handler: BenchHandler, path_info: str) -> tuple[int, bytes]:
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        statuses.append(status)

    response = handler(_environ(path_info), start_response)
    try:
        body = b"".join(response)
    finally:
        response.close()  # request_finished: close_old_connections()
    return int(statuses[0].split()[0]), body


def drive(
    handler: BenchHandler,
    path_info: str,
    requests: int,
    threads: int = 1,
    *,
    label: str = "",
    warmup_per_thread: int = WARMUP_PER_THREAD,
    max_seconds: float | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Send *requests* GETs for *path_info* from *threads* threads, timed.

    The request loop shared by ``djpool bench`` and ``benchmarks/run.py``.
    Each thread first sends *warmup_per_thread* untimed requests, so that a
    thread-owned (``CONN_MAX_AGE``) connection or a pool is already open
    when the clock starts; the clock starts once every thread is warm.
    Threads stop early after *max_seconds* (the result then holds fewer
    requests).
    """
    # One budget shared by the threads, as a server's accept queue would be:
    # a thread kept waiting (for a pooled connection) sends fewer requests
    # instead of finishing last and stretching the run.
    tickets = itertools.count()
    latencies: list[list[float]] = [[] for _ in range(threads)]
    finished = [0.0] * threads
    sessions: set[bytes] = set()
    errors: list[BaseException] = []
    stop = threading.Event()
    clock: list[float] = []  # wall and process CPU time when the clock starts
    warm = threading.Barrier(
        threads, action=lambda: clock.extend((time.perf_counter(), time.process_time()))
    )

    def send() -> bytes:
        status, body = _request(handler, path_info)
        if status != 200:
            raise BenchError(
                f"the benchmark request answered HTTP {status}: "
                f"{body[:300].decode(errors='replace')}"
            )
        return body

    def worker(index: int) -> None:
        mine = latencies[index]
        try:
            for _ in range(warmup_per_thread):
                send()
            warm.wait()
            deadline = clock[0] + max_seconds if max_seconds else None
            while next(tickets) < requests:
                if stop.is_set() or (deadline and time.perf_counter() > deadline):
                    break
                started = time.perf_counter()
                body = send()
                mine.append((time.perf_counter() - started) * 1000)
                sessions.add(body)
            finished[index] = time.perf_counter()
        except threading.BrokenBarrierError:
            pass  # another thread failed; its error is re-raised below
        except BaseException as error:  # re-raised in the calling thread
            errors.append(error)
            stop.set()
            warm.abort()
        finally:
            connections.close_all()

    workers = [
        threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)
    ]
    reported = time.perf_counter()
    for thread in workers:
        thread.start()
    for thread in workers:
        while thread.is_alive():
            thread.join(0.1)
            now = time.perf_counter()
            if progress is not None and now - reported >= PROGRESS_EVERY:
                reported = now
                progress(label, sum(map(len, latencies)), requests)
    if errors:
        raise errors[0]
    result = RunResult(label=label, requests=sum(map(len, latencies)), threads=threads)
    result.seconds = max(finished) - clock[0] if clock else 0.0
    result.cpu_seconds = time.process_time() - clock[1] if clock else 0.0
    result.latencies = [value for mine in latencies for value in mine]
    result.session_ids = sorted(body.decode() for body in sessions if body != b"-")
    result.sessions = None if b"-" in sessions else len(sessions)
    return result


def _run(
    label: str, alias: str, requests: int, threads: int, progress: Progress | None
) -> RunResult:
    path_info = f"/djpool-bench/{alias}/"
    return drive(
        BenchHandler(), path_info, requests, threads, label=label, progress=progress
    )


def run_bench(
    alias: str = "default",
    requests: int = 500,
    threads: int = 1,
    progress: Progress | None = None,
) -> BenchResult:
    """Requests per second and latency of *alias* without, then with, the pool.

    Meant for a management command or a benchmark script, not a live server:
    for the unpooled pass it undoes djpoolapp's patches process-wide (and
    disposes every pool), then restores them.  Both passes run with
    ``CONN_MAX_AGE = 0``, the setting pooling is for; the alias's own value
    is put back afterwards.
    """
    if requests < 1 or threads < 1:
        raise BenchError("--requests and --threads must be at least 1")
    pooled = pooled_backends()
    if alias not in pooled:
        raise BenchError(
            f"database alias '{alias}' is not pooled by djpoolapp (pooled: "
            f"{', '.join(map(repr, pooled)) or 'none; is DJPOOL_DISABLE set?'})"
        )
    check = check_alias(alias, samples=1)  # a clear error if it is unreachable
    settings_dict = connections.settings[alias]
    max_age = settings_dict.get("CONN_MAX_AGE", 0)
    settings_dict["CONN_MAX_AGE"] = 0
    try:
        patch.uninstall()
        try:
            unpooled = _run("without pool", alias, requests, threads, progress)
        finally:
            patch.install_for_databases()
        with_pool = _run("with pool", alias, requests, threads, progress)
    finally:
        settings_dict["CONN_MAX_AGE"] = max_age
    return BenchResult(
        alias=alias,
        vendor=check.vendor,
        database=check.database,
        unpooled=unpooled,
        pooled=with_pool,
    )
