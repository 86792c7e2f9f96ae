"""The contention scenario: more threads than connections (issue 12).

Every thread sends requests through Django's real ``WSGIHandler`` for a fixed
time.  The view takes a connection (``ensure_connection()``: the checkout,
timed as the *wait*) and holds it for ``hold`` seconds in one server-side
sleep that also answers the session id (``pg_sleep`` / ``SLEEP``), so the
threads queue for the pool's connections and not for the 2 cores.  A
checkout that times out (``PoolTimeout`` for djpoolapp, Django's
``OperationalError`` around psycopg_pool's ``PoolTimeout`` for the native
pool, SQLAlchemy's ``TimeoutError`` for django-db-connection-pool) answers
503 and counts as a timeout; any other failure is counted as an error.

What it measures is fairness: how many requests each thread got served, how
many timed out, and how long checkouts waited (timed-out ones included, at
the time they gave up).
"""

from __future__ import annotations

import io
import statistics
import threading
import time
from typing import Any
from wsgiref.util import setup_testing_defaults

from django.core.handlers.wsgi import WSGIHandler
from django.db import OperationalError, connections
from django.http import HttpRequest, HttpResponse
from django.urls import path

try:
    from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeout
except ImportError:  # only the SQLAlchemy-based strategies raise it

    class SQLAlchemyTimeout(Exception):  # type: ignore[no-redef]
        pass


#: What a checkout that waited too long raises, per strategy.
TIMEOUTS = (OperationalError, SQLAlchemyTimeout)

HOLD_SQL = {
    "postgresql": "SELECT pg_backend_pid(), pg_sleep(%s)",
    "mysql": "SELECT CONNECTION_ID(), SLEEP(%s)",
}


def hold_view(request: HttpRequest) -> HttpResponse:
    """Check out a connection (timed), hold it ``?hold=`` seconds in the server.

    Answers ``"<wait seconds> <session id>"``, or 503 ``"timeout <wait>"``.
    """
    connection = connections["default"]
    started = time.perf_counter()
    try:
        connection.ensure_connection()
    except TIMEOUTS:
        return HttpResponse(f"timeout {time.perf_counter() - started}", status=503)
    waited = time.perf_counter() - started
    with connection.cursor() as cursor:
        cursor.execute(HOLD_SQL[connection.vendor], [float(request.GET["hold"])])
        (session, _) = cursor.fetchone()
    return HttpResponse(f"{waited} {session}")


class ContentionURLConf:
    urlpatterns = [path("hold/", hold_view)]


class ContentionHandler(WSGIHandler):
    """Django's WSGI handler, routing every request to :func:`hold_view`."""

    def get_response(self, request: HttpRequest) -> Any:
        request.urlconf = ContentionURLConf  # type: ignore[assignment]
        return super().get_response(request)


def _request(handler: WSGIHandler, query: str) -> tuple[int, str]:
    environ: dict[str, Any] = {
        "PATH_INFO": "/hold/",
        "QUERY_STRING": query,
        "REQUEST_METHOD": "GET",
        "HTTP_HOST": "localhost",
        "wsgi.input": io.BytesIO(),
    }
    setup_testing_defaults(environ)
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        statuses.append(status)

    response = handler(environ, start_response)
    try:
        body = b"".join(response).decode()
    finally:
        response.close()  # request_finished: close_old_connections()
    return int(statuses[0].split()[0]), body


def percentile(values: list[float], percent: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(percent) - 1]


def run(threads: int, seconds: float, hold: float) -> dict[str, Any]:
    """*threads* threads send requests for *seconds*; each holds its
    connection *hold* seconds.  Times in the result are milliseconds."""
    handler = ContentionHandler()
    query = f"hold={hold}"
    served = [0] * threads
    timeouts = [0] * threads
    waits: list[list[float]] = [[] for _ in range(threads)]
    latencies: list[list[float]] = [[] for _ in range(threads)]
    sessions: set[str] = set()
    errors: list[str] = []
    clock: list[float] = []
    ready = threading.Barrier(threads, action=lambda: clock.append(time.perf_counter()))

    def client(index: int) -> None:
        try:
            ready.wait()
            deadline = clock[0] + seconds
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                status, body = _request(handler, query)
                latency = (time.perf_counter() - started) * 1000
                if status == 200:
                    waited, session = body.split()
                    served[index] += 1
                    sessions.add(session)
                elif status == 503:
                    waited = body.split()[1]
                    timeouts[index] += 1
                else:
                    errors.append(f"HTTP {status}: {body[:200]}")
                    time.sleep(hold)  # no busy loop on a failing request
                    continue
                waits[index].append(float(waited) * 1000)
                latencies[index].append(latency)
        except Exception as error:  # reported in the result
            errors.append(f"{type(error).__name__}: {error}")
        finally:
            connections.close_all()

    workers = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - clock[0] if clock else 0.0
    all_waits = [value for mine in waits for value in mine]
    all_latencies = [value for mine in latencies for value in mine]
    successes = sum(served)
    return {
        "seconds": elapsed,
        "hold_ms": hold * 1000,
        "successes": successes,
        "timeouts": sum(timeouts),
        "errors": errors[:5],
        "error_count": len(errors),
        "per_thread": served,
        "min_per_thread": min(served),
        "max_per_thread": max(served),
        "never_served": served.count(0),
        "wait_p50_ms": percentile(all_waits, 50),
        "wait_p99_ms": percentile(all_waits, 99),
        "wait_max_ms": max(all_waits, default=None),
        "p50_ms": percentile(all_latencies, 50),
        "p99_ms": percentile(all_latencies, 99),
        "rps": successes / elapsed if elapsed else 0.0,
        "session_ids": sorted(sessions),
        "sessions": len(sessions),
    }
