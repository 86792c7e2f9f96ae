"""Shared test machinery.

- Servers: tests marked ``postgres`` / ``mysql`` skip when that server is
  unreachable, except under ``CI=true``, where the run fails instead.
- ``request_cycle``: drive a path through Django's real ``WSGIHandler``
  (request_started / request_finished, so ``close_old_connections()`` runs as
  in production; the test ``Client`` disconnects it).
- ``server_sessions``: count the server-side sessions of an alias's database,
  from a monitoring connection opened straight with the driver (unpooled).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler
from django.db import connections

from djpoolapp import patch

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

SERVER_MARKERS = {"postgres": "postgres", "mysql": "mysql"}


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    missing = [name for name, up in settings.SERVERS.items() if not up]
    if missing and IN_CI:
        raise pytest.UsageError(
            f"CI=true but these database servers are unreachable: {missing}; "
            "start them (see .ci/run) instead of skipping their tests."
        )
    for item in items:
        for name in missing:
            if item.get_closest_marker(SERVER_MARKERS[name]):
                item.add_marker(
                    pytest.mark.skip(reason=f"{name} server unreachable (not CI)")
                )


def driver_module(alias: str) -> Any:
    """The real DB-API module behind an alias (unwrapping djpoolapp's proxy)."""
    database = type(connections[alias]).Database
    return getattr(database, "djpool_driver_module", database)


def monitor_connection(alias: str) -> Any:
    """An unpooled driver connection to the same server as *alias*."""
    conf = connections[alias].settings_dict
    module = driver_module(alias)
    if connections[alias].vendor == "postgresql":
        # No prepared statements from psycopg 3 (after 5 runs of a query):
        # they break behind PgBouncer in transaction mode (tests/integration).
        extra = {"prepare_threshold": None} if module.__name__ == "psycopg" else {}
        conn = module.connect(
            host=conf["HOST"],
            port=int(conf["PORT"]),
            user=conf["USER"],
            password=conf["PASSWORD"],
            dbname="postgres",
            **extra,
        )
    else:
        conn = module.connect(
            host=conf["HOST"],
            port=int(conf["PORT"]),
            user=conf["USER"],
            password=conf["PASSWORD"],
        )
    if connections[alias].vendor == "postgresql":
        conn.autocommit = True
    else:
        conn.autocommit(True)
    return conn


@pytest.fixture
def server_sessions() -> Iterator[Callable[[str], int]]:
    """``server_sessions(alias)``: sessions the server has open on the alias's
    (test) database, excluding the monitor itself."""
    monitors: dict[str, Any] = {}

    def count(alias: str) -> int:
        connection = connections[alias]
        name = connection.settings_dict["NAME"]
        if alias not in monitors:
            monitors[alias] = monitor_connection(alias)
        conn = monitors[alias]
        cursor = conn.cursor()
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                "AND pid <> pg_backend_pid()",
                [name],
            )
        else:
            cursor.execute(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                "WHERE DB = %s AND ID <> CONNECTION_ID()",
                [name],
            )
        (sessions,) = cursor.fetchone()
        cursor.close()
        return int(sessions)

    yield count
    for conn in monitors.values():
        conn.close()


_handler: WSGIHandler | None = None


def run_request(path: str) -> tuple[int, bytes]:
    """One GET through Django's WSGI handler, as a WSGI server would run it."""
    global _handler
    if _handler is None:
        _handler = WSGIHandler()
    environ: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    if "?" in path:
        environ["PATH_INFO"], environ["QUERY_STRING"] = path.split("?", 1)
    setup_testing_defaults(environ)
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        statuses.append(status)

    response = _handler(environ, start_response)
    try:
        body = b"".join(response)
    finally:
        response.close()  # sends request_finished -> close_old_connections()
    return int(statuses[0].split()[0]), body


@pytest.fixture
def request_cycle() -> Callable[[str], tuple[int, bytes]]:
    return run_request


@pytest.fixture
def unpatched() -> Iterator[None]:
    """Stock Django for the duration of a test (djpoolapp's patches undone)."""
    for connection in connections.all(initialized_only=True):
        connection.close()
    patch.uninstall()
    try:
        yield
    finally:
        for connection in connections.all(initialized_only=True):
            connection.close()
        patch.install_for_databases()


@pytest.fixture(autouse=True)
def _fresh_pools() -> Iterator[None]:
    """Every test starts and ends with empty pools and closed connections."""
    yield
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close()
    patch.registry.dispose()


ALIASES = [
    pytest.param("default", marks=pytest.mark.postgres, id="postgres"),
    pytest.param("mysql", marks=pytest.mark.mysql, id="mysql"),
]
