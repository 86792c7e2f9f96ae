"""``pool_mode="transaction"`` under Django's ASGIHandler (docs/pool_mode.rst).

Async views use the async ORM (``acreate``, ``acount``, ``aget``, ``async
for``, ``aiterator()``); Django runs each request's sync database work on a
thread of its own (asgiref's ``ThreadSensitiveContext``), so each request
has its own Django connection, as a gthread worker's threads do.  Requests
are driven straight through ``ASGIHandler`` with an ASGI scope in one event
loop; a client disconnect is the ``http.disconnect`` message an ASGI server
sends.  "Holds no server connection" is checked on both sides: the pool's
``checked_out`` is 0 while every request awaits its external call, and the
server (``pg_stat_activity`` / ``PROCESSLIST``) never shows more sessions
than ``pool_size``.  Run with ``DJPOOL_TEST_DRIVER=psycopg2`` for Django's
psycopg2 path.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import django
import pytest
from django.core.handlers.asgi import ASGIHandler
from django.db import connections
from django.test import override_settings

from tests import pool_mode_urls
from tests.conftest import ALIASES, monitor_connection
from tests.test_pool_mode import status, transaction_mode
from tests.testapp.models import Item

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

CONCURRENT = 100
POOL_SIZE = 4


async def call(
    handler: ASGIHandler, path: str, query: str = "",
    disconnect: asyncio.Event | None = None,
) -> tuple[int | None, bytes]:  # fmt: skip
    """One GET through *handler* as an ASGI server sends it: (status, body);
    status None if the client went away (*disconnect* set) before the
    response started."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
        "method": "GET", "scheme": "http", "path": path,
        "raw_path": path.encode(), "query_string": query.encode(),
        "root_path": "", "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
    }  # fmt: skip
    body_sent = False
    gone = disconnect or asyncio.Event()
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await handler(scope, receive, send)
    starts = [m["status"] for m in messages if m["type"] == "http.response.start"]
    body = b"".join(m.get("body", b"") for m in messages
                    if m["type"] == "http.response.body")  # fmt: skip
    return (starts[0] if starts else None), body


class Sessions:
    """Server sessions on the alias's test database, sampled every 20 ms
    from the event loop (an unpooled monitor connection)."""

    def __init__(self, alias: str) -> None:
        from tests.conftest import count_sessions

        self.alias = alias
        self.monitor = monitor_connection(alias)
        connection = connections[alias]
        self._count = lambda: count_sessions(
            self.monitor, connection.vendor, connection.settings_dict["NAME"]
        )
        self.samples: list[int] = []
        self.checked_out: list[int] = []
        #: Checkout timeouts of this pool during the scenario.
        self.timeouts = 0

    def now(self) -> int:
        return int(self._count())

    async def sample(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.samples.append(self.now())
            self.checked_out.append(status(self.alias).checked_out)
            try:
                await asyncio.wait_for(stop.wait(), 0.02)
            except asyncio.TimeoutError:  # (not the builtin before Python 3.11)
                pass

    def close(self) -> None:
        self.monitor.close()


def run(
    alias: str, scenario: Callable[[ASGIHandler, Sessions], Awaitable[Any]],
    **options: Any,
) -> tuple[Any, Sessions]:  # fmt: skip
    """Run *scenario(handler, sessions)* in a new event loop against a
    transaction-mode pool of *alias* (pool_size=4, max_overflow=0; a
    checkout ``timeout`` of 60 s: 100 request threads on a loaded two-core
    machine can take longer than 5 s to get the GIL back, and timeouts are
    not what these tests measure)."""
    options = {"pool_size": POOL_SIZE, "timeout": 60} | options
    sessions = Sessions(alias)

    async def main() -> Any:
        pool_mode_urls.GATE = asyncio.Event()
        pool_mode_urls.WAITING = 0
        pool_mode_urls.SLOW_STARTED.clear()
        stop = asyncio.Event()
        sampler = asyncio.create_task(sessions.sample(stop))
        timeouts = status(alias).timeouts  # counters are per process
        try:
            result = await scenario(ASGIHandler(), sessions)
            sessions.timeouts = status(alias).timeouts - timeouts
            return result
        finally:
            stop.set()
            await sampler
            pool_mode_urls.GATE = None

    try:
        with (
            transaction_mode(alias, **options),
            override_settings(ROOT_URLCONF="tests.pool_mode_urls"),
        ):
            _wait_for_no_sessions(sessions, alias)
            result = asyncio.run(main())
            # Every request ended: nothing checked out, nothing in a
            # transaction on the server.
            assert status(alias).checked_out == 0
            assert _sessions_in_transaction(alias, sessions) == 0
            assert max(sessions.samples) <= options["pool_size"], (
                sessions.samples,
                status(alias),
            )
            return result, sessions
    finally:
        sessions.close()


def _wait_for_no_sessions(sessions: Sessions, alias: str) -> None:
    """Sessions of earlier tests' pools end asynchronously: start from none
    but the idle ones of this alias's pool."""
    deadline = time.monotonic() + 15
    while sessions.now() > status(alias).idle and time.monotonic() < deadline:
        time.sleep(0.05)


async def until(condition: Callable[[], bool], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


def path(view: str, alias: str) -> str:
    return f"/pool-mode/async/{view}/{alias}/"


# -- 100 concurrent requests, 4 server sessions ---------------------------------
@pytest.mark.parametrize("alias", ALIASES)
def test_async_views__awaiting_requests_hold_no_server_connection(alias):
    """100 requests at once, each past its first queries and awaiting its
    external call: nothing is checked out and the server has at most 4
    sessions; then all finish with their second queries, 200 each."""

    async def scenario(handler: ASGIHandler, sessions: Sessions) -> Any:
        requests = [asyncio.create_task(call(handler, path("wait", alias), "gate=1"))
                    for _ in range(CONCURRENT)]  # fmt: skip
        await until(lambda: pool_mode_urls.WAITING == CONCURRENT)
        awaiting = (status(alias).checked_out, sessions.now())
        assert pool_mode_urls.GATE is not None
        pool_mode_urls.GATE.set()
        return awaiting, await asyncio.gather(*requests)

    Item.objects.using(alias).create(name="seed")
    ((checked_out, during), results), sessions = run(alias, scenario)
    assert checked_out == 0
    assert 1 <= during <= POOL_SIZE
    answers = _answers(results)
    assert all(a["rows"] == ["async", ["async"], True] for a in answers), answers[0]
    assert Item.objects.using(alias).filter(value=1).count() == CONCURRENT
    assert 1 <= max(sessions.samples) <= POOL_SIZE
    assert sessions.timeouts == 0


def _answers(results: list[tuple[int | None, bytes]]) -> list[dict[str, Any]]:
    assert [code for code, _ in results] == [200] * len(results), results[:3]
    return [json.loads(body) for _, body in results]


# -- requests that end early ------------------------------------------------------
@pytest.mark.parametrize("alias", ALIASES)
def test_async_view_raising__returns_its_connection(alias):
    """Views that raise after their queries (500) leave nothing checked out;
    the next requests are served."""

    async def scenario(handler: ASGIHandler, sessions: Sessions) -> Any:
        failed = await asyncio.gather(
            *(
                call(handler, path("wait", alias), "sleep=0.05&fail=1")
                for _ in range(20)
            )  # fmt: skip
        )
        after = status(alias).checked_out
        served = await asyncio.gather(
            *(call(handler, path("wait", alias), "sleep=0.05") for _ in range(20))
        )
        return failed, after, served

    (failed, after, served), _ = run(alias, scenario)
    assert [code for code, _ in failed] == [500] * 20
    assert after == 0
    _answers(served)


@pytest.mark.skipif(
    django.VERSION < (5, 0),
    reason="Django 4.2's ASGIHandler does not watch for client disconnects",
)
@pytest.mark.parametrize("what", ["wait", "pin", "iterator", "atomic"])
@pytest.mark.parametrize("alias", ALIASES)
def test_client_disconnect__returns_the_connection(alias, what):
    """Clients go away while their requests await (``wait``: nothing held;
    ``pin``: session state pinned; ``iterator``: an ``aiterator()`` open) or
    while a ``sync_to_async`` hop runs a transaction with a slow statement
    (``atomic``): Django cancels the view, the hop finishes on its thread,
    and the connection goes back — reset, nothing left in a transaction.
    The pool then serves new requests in full."""
    Item.objects.using(alias).bulk_create([Item(name=str(n)) for n in range(3)])
    clients = 8
    view, query = (
        ("wait", "gate=1") if what == "wait" else ("hold", f"what={what}&gate=1")
    )

    async def scenario(handler: ASGIHandler, sessions: Sessions) -> Any:
        gone = asyncio.Event()
        requests = [asyncio.create_task(call(handler, path(view, alias), query, gone))
                    for _ in range(clients)]  # fmt: skip
        if what == "atomic":  # the hops holding a connection are in their
            # slow statements (the others wait for one, in their hops too)
            await until(lambda: len(pool_mode_urls.SLOW_STARTED) == POOL_SIZE)
        else:
            expected = min(clients, POOL_SIZE) if what != "wait" else clients
            await until(lambda: pool_mode_urls.WAITING == expected)
        holding = status(alias).checked_out
        gone.set()
        cut = await asyncio.gather(*requests)
        after = status(alias).checked_out
        # The pool is whole again: new requests (all of them at once) served.
        served = await asyncio.gather(
            *(call(handler, path("wait", alias), "sleep=0.05") for _ in range(20))
        )
        probes = await asyncio.gather(
            *(call(handler, f"/pool-mode/probe/{alias}/") for _ in range(8))
        )
        return holding, cut, after, served + probes

    (holding, cut, after, served), sessions = run(alias, scenario)
    if what == "wait":
        assert holding == 0
    elif what in ("pin", "iterator"):
        assert holding == POOL_SIZE  # held across the await, as designed
    assert [code for code, _ in cut] == [None] * clients, cut
    assert after == 0
    answers = _answers(served)
    # No session state of the cut requests reaches a later one.
    assert {answer.get("value") for answer in answers} <= {None, ""}, answers
    if what == "atomic":  # the hops ran to their end (a thread cannot be cut)
        started = len(pool_mode_urls.SLOW_STARTED)
        assert started >= POOL_SIZE
        assert Item.objects.using(alias).filter(name="atomic").count() == started


def _sessions_in_transaction(alias: str, sessions: Sessions) -> int:
    """Server sessions on the alias's database inside a transaction."""
    database = connections[alias].settings_dict["NAME"]
    cursor = sessions.monitor.cursor()
    try:
        if connections[alias].vendor == "postgresql":
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                "AND state LIKE 'idle in transaction%%'",
                [database],
            )
        else:
            cursor.execute(
                "SELECT COUNT(*) FROM information_schema.INNODB_TRX t JOIN "
                "information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id "
                "WHERE p.DB = %s",
                [database],
            )
        return int(cursor.fetchone()[0])
    finally:
        cursor.close()


# -- a real uvicorn (benchmarks/capacity.py, short) --------------------------------
@pytest.mark.django_db(transaction=False, databases=[])
@pytest.mark.parametrize(
    "database",
    [
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ],
)
def test_capacity__uvicorn_async_views_share_a_small_pool(database, monkeypatch):
    """A real uvicorn, 30 wrk connections on an async view doing query,
    ``await asyncio.sleep(0.1)``, query, pool_size=2, for 3 s: in transaction
    mode no request fails, at most 2 server sessions serve them all and
    nothing is left checked out.  (Correctness only: the throughput is
    benchmarks/capacity.py's to report.)"""
    from django.conf import settings

    from benchmarks import capacity
    from tests.integration.conftest import require_module, require_tool

    require_tool("wrk")  # skipped without them, failed under CI=true
    require_module("uvicorn")
    monkeypatch.setenv("DJPOOL_BENCH_POSTGRES_URL", settings.POSTGRES_URL)
    monkeypatch.setenv("DJPOOL_BENCH_MYSQL_URL", settings.MYSQL_URL)
    found = capacity.run(
        database, "transaction", server="uvicorn", concurrency=30, seconds=3,
        sleep=0.1, pool_size=2, timeout=5,
    )  # fmt: skip
    assert found["ok"] > 0, found
    assert found["errors"] == 0, found
    assert 1 <= found["peak_server_sessions"] <= 2, found
    assert found["checked_out_after"] == 0, found
    assert found["timeouts"] == 0, found
