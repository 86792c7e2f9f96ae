"""eventlet: one process, green threads, eventlet's own WSGI server.

gunicorn 27 has no eventlet worker any more, so eventlet's ``wsgi.server``
serves the app (tests/integration/eventlet_wsgi.py), monkeypatched before
anything else is imported; psycopg2 yields to the hub through psycogreen.

- 100 green threads x 20 requests each: no error, at most pool_size +
  max_overflow server sessions per database (one process);
- the requests/second row of the table, pooled and stock (wrk, as for the
  other servers);
- which driver lets the hub run other requests while a query waits, seen
  from the server as concurrent sleeping queries: psycopg2 with psycogreen
  does; mysqlclient never does (blocking C: one query at a time for the whole
  process); psycopg 3 only detects gevent and blocks the hub under eventlet
  unless ``PSYCOPG_WAIT_FUNC=wait_select``.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading

import pytest
from django.conf import settings

from tests.integration import BOTH_DATABASES, MAX_OVERFLOW, MODES, POOL_SIZE
from tests.integration.conftest import (
    SessionSampler,
    require_module,
    require_tool,
    server_env,
)
from tests.integration.servers import (
    assert_served,
    base_url,
    http_server,
    mode_env,
    peak_sleepers_per_alias,
    record_served,
    serve_under_load,
)

pytestmark = BOTH_DATABASES

GREEN_THREADS = 100
REQUESTS_EACH = 20


def eventlet_server(port: int) -> list[str]:
    require_module("eventlet")
    if settings.DRIVER == "psycopg2":
        require_module("psycogreen")
    return [sys.executable, "-m", "tests.integration.eventlet_wsgi", str(port)]


def _client(port: int, path: str, count: int, results: list, lock) -> None:
    """One client: *count* keep-alive requests, each answer's status kept."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    statuses = []
    try:
        for _ in range(count):
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                body = response.read()
                statuses.append(response.status if body else 0)
            except OSError as error:
                statuses.append(repr(error))
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    finally:
        connection.close()
        with lock:
            results.extend(statuses)


def test_eventlet__100_green_threads_x_20_requests_within_the_pool_bound(
    seeded, tmp_path, port
):
    results: dict[str, list] = {}
    with http_server(eventlet_server(port), port, tmp_path / "eventlet.log") as server:
        sampler = SessionSampler(seeded, group=server.process.pid)
        with sampler.running():
            for alias in seeded:
                results[alias] = []
                lock = threading.Lock()
                clients = [
                    threading.Thread(
                        target=_client,
                        args=(
                            port,
                            f"/orm/{alias}/",
                            REQUESTS_EACH,
                            results[alias],
                            lock,
                        ),
                    )
                    for _ in range(GREEN_THREADS)
                ]
                for client in clients:
                    client.start()
                for client in clients:
                    client.join(300)
        alarms = server.alarms()
        log = server.log
    for alias in seeded:
        statuses = results[alias]
        assert len(statuses) == GREEN_THREADS * REQUESTS_EACH, alias
        failed = [status for status in statuses if status != 200]
        assert failed == [], (alias, failed[:5], log[-3000:])
        assert 1 <= sampler.peak[alias] <= POOL_SIZE + MAX_OVERFLOW, sampler.peak
    assert alarms == [], log


@pytest.mark.parametrize("mode", MODES)
def test_eventlet__requests_per_second(mode, seeded, tmp_path, port):
    require_tool("wrk")
    served = serve_under_load(
        eventlet_server(port), port, tmp_path / "eventlet.log", mode_env(mode), seeded
    )
    record_served("eventlet", "wsgi.server", mode, served)
    pooled = mode == "djpoolapp"
    assert_served(served, seeded, POOL_SIZE + MAX_OVERFLOW if pooled else None)


#: Concurrent server-side sleeps seen per (driver or alias, wait function).
MEASURED: dict[str, int] = {}


@pytest.mark.parametrize("wait_func", ["", "wait_select"])
def test_eventlet__which_drivers_yield_to_the_hub(wait_func, seeded, tmp_path, port):
    require_tool("wrk")
    if wait_func and settings.DRIVER != "psycopg3":
        pytest.skip("PSYCOPG_WAIT_FUNC is psycopg 3's")
    env = server_env(**({"PSYCOPG_WAIT_FUNC": wait_func} if wait_func else {}))
    with http_server(
        eventlet_server(port), port, tmp_path / "eventlet.log", env
    ) as server:
        aliases = seeded if not wait_func else ["default"]
        peaks = peak_sleepers_per_alias(base_url(port), aliases)
        alarms = server.alarms()
        log = server.log
    assert alarms == [], log
    bound = POOL_SIZE + MAX_OVERFLOW
    postgres = f"{settings.DRIVER}{'+' + wait_func if wait_func else ''}"
    MEASURED[postgres] = peaks["default"]
    print(
        f"\neventlet, concurrent server-side sleeps: {json.dumps(peaks)} ({postgres})"
    )
    if settings.DRIVER == "psycopg2" or wait_func:
        assert 1 < peaks["default"] <= bound, peaks  # cooperates with the hub
    else:
        assert peaks["default"] == 1, peaks  # psycopg 3's C wait blocks the hub
    if "mysql" in peaks:
        MEASURED["mysqlclient"] = peaks["mysql"]
        assert peaks["mysql"] == 1, peaks  # mysqlclient blocks the hub
