"""A silent network (CONTRACT section 2: "every round trip the pool makes ends
within ping_timeout; a checkout never hangs on a silent network").  Item 11
of issue 11.

The alias ``stalled`` reaches the test database through a
:class:`~tests.faults.proxy.StallingProxy` on 127.0.0.1.  Flipping the proxy
leaves every socket open but forwards nothing: no RST, no FIN, the way a
dropped route or a frozen host looks.  Without a deadline the pool's pre-ping
then blocks until the kernel gives up (minutes), holding its slot while
other requests get ``PoolTimeout``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connections

import djpoolapp
from djpoolapp.deadline import RoundTripTimeout
from tests.conftest import ALIASES
from tests.modes import only
from tests.testapp.models import Item

from .conftest import pool_options
from .proxy import StallingProxy
from .servers import park_idle
from .test_credentials import alias_settings, database_aliases

pytestmark = [
    pytest.mark.faults,
    pytest.mark.django_db(transaction=True, databases="__all__"),
]

PING_TIMEOUT = 1.0
#: libpq rounds connect_timeout below 2 s up to 2 s; MariaDB's client takes it
#: as given.  Covers the TCP connect and the server's greeting.
CONNECT_TIMEOUT = 2
#: Scheduling slack on a shared 2-core machine.
SLACK = 1.5


@contextmanager
def stalled_alias(base: str, **options: Any) -> Iterator[StallingProxy]:
    """Alias ``stalled``: *base*'s test database through a stalling proxy,
    with ``connect_timeout`` set and these pool options."""
    settings_dict = connections[base].settings_dict
    with StallingProxy((settings_dict["HOST"], int(settings_dict["PORT"]))) as proxy:
        stalled = alias_settings(
            base,
            HOST="127.0.0.1",
            PORT=str(proxy.port),
            OPTIONS={**settings_dict["OPTIONS"], "connect_timeout": CONNECT_TIMEOUT},
        )
        with database_aliases(stalled=stalled):
            with pool_options("stalled", ping_timeout=PING_TIMEOUT, **options):
                yield proxy


def status() -> Any:
    return djpoolapp.pool_status("stalled")["stalled"]


def capped(proxy: StallingProxy, cap: float, function: Any, *args: Any) -> Any:
    """``function(*args)`` in a thread; if it is still blocked after *cap*
    seconds, the network comes back (so that it ends) and the test fails."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(function(*args))
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(cap)
    if thread.is_alive():
        proxy.resume()
        thread.join(30)
        raise AssertionError(f"still blocked on the silent network after {cap} s")
    assert outcome, "the call raised (see the thread's traceback above)"
    return outcome[0]


def timed(function: Any, *args: Any) -> tuple[Any, float]:
    started = time.monotonic()
    result = function(*args)
    return result, time.monotonic() - started


@pytest.mark.parametrize("alias", ALIASES)
def test_silent_socket__pre_ping_gives_up_after_ping_timeout_and_a_new_connection_serves(
    alias, serve, caplog
):
    """Only the pooled connection's socket goes silent: the request whose
    pre-ping is due succeeds on a new connection after ~ping_timeout (not
    minutes), the pool counts one invalidation and logs why."""
    caplog.set_level(logging.INFO, logger="djpoolapp")
    with stalled_alias(
        alias, pool_size=2, max_overflow=0, ping_after_idle=0.2
    ) as proxy:
        first = serve("/session/stalled/")
        assert first.status == 200, first.error
        old_session = json.loads(first.body)["session"]
        time.sleep(0.3)  # past ping_after_idle: the next checkout pings
        before, accepted = status(), proxy.accepted
        proxy.stall("existing")

        cap = PING_TIMEOUT + CONNECT_TIMEOUT + 2 * SLACK
        response, elapsed = capped(proxy, cap, timed, serve, "/session/stalled/")

        assert response.status == 200, response.error
        assert json.loads(response.body)["session"] != old_session
        assert PING_TIMEOUT * 0.9 <= elapsed < PING_TIMEOUT + SLACK, elapsed
        after = status()
        assert after.invalidated - before.invalidated == 1
        assert after.opened - before.opened == 1
        assert proxy.accepted - accepted == 1  # the replacement
        assert (after.checked_out, after.idle) == (0, 1)
    deadline = "no answer to the pool's pre-ping within ping_timeout=1 s"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage().startswith(deadline) for r in warnings] == [True]
    invalidations = [
        r.getMessage() for r in caplog.records if "Invalidated" in r.getMessage()
    ]
    assert len(invalidations) == 1
    assert f"ping failed: {deadline}" in invalidations[0]


@pytest.mark.parametrize("alias", ALIASES)
def test_silent_server__requests_fail_cleanly_and_free_their_slots(alias, serve):
    """The whole server goes silent (new connections too) while both pooled
    connections sit idle: 4 concurrent requests with pool_size=2 each fail
    with the driver's OperationalError — never PoolTimeout, because a failed
    ping-then-connect frees its slot within ping_timeout + connect_timeout —
    and once the network is back the next request is served."""
    with stalled_alias(
        alias, pool_size=2, max_overflow=0, ping_after_idle=0.2, timeout=15
    ) as proxy:
        parked = park_idle("stalled", 2)
        assert len(set(parked)) == 2
        time.sleep(0.3)
        before, accepted = status(), proxy.accepted
        proxy.stall("all")

        results: list[tuple[Any, float]] = []
        lock = threading.Lock()

        def client() -> None:
            try:
                outcome = timed(serve, "/session/stalled/")
                with lock:
                    results.append(outcome)
            finally:
                connections.close_all()

        threads = [threading.Thread(target=client) for _ in range(4)]
        for thread in threads:
            thread.start()
        cap = time.monotonic() + PING_TIMEOUT + 2 * CONNECT_TIMEOUT + 4 * SLACK
        for thread in threads:
            thread.join(max(cap - time.monotonic(), 0))
        blocked = sum(thread.is_alive() for thread in threads)
        after = status()
        if blocked:
            proxy.resume()
            for thread in threads:
                thread.join(30)
        assert not blocked, f"{blocked} requests still blocked on the silent network"
        proxy.resume()
        recovered = serve("/session/stalled/")

    assert len(results) == 4
    for response, _ in results:
        assert response.status == 500
        error = response.error
        assert type(error).__module__ == "django.db.utils", repr(error)
        assert type(error).__name__ == "OperationalError", repr(error)
        assert not isinstance(error, djpoolapp.PoolTimeout), repr(error)
    elapsed = sorted(seconds for _, seconds in results)
    # The two requests that got the parked connections: one failed ping and
    # one failed connect each; the two that waited for their slots: one
    # failed connect each after that.
    first_pair = PING_TIMEOUT + CONNECT_TIMEOUT
    assert first_pair * 0.9 <= elapsed[0], elapsed
    assert elapsed[1] < first_pair + SLACK, elapsed
    assert elapsed[3] < first_pair + CONNECT_TIMEOUT + 2 * SLACK, elapsed
    assert after.invalidated - before.invalidated == 2
    assert after.timeouts == before.timeouts
    assert after.checked_out == 0
    assert proxy.accepted - accepted >= 4  # every request tried a new connection
    assert recovered.status == 200, recovered.error


@pytest.mark.parametrize("alias", ALIASES)
def test_silent_socket__rollback_at_checkin_gives_up_after_ping_timeout(alias):
    """Django returns a connection with a transaction open while the network
    is silent: the pool's rollback at checkin ends after ~ping_timeout, the
    connection is invalidated (it may still hold the transaction on the
    server) and the slot is free."""
    with stalled_alias(alias, pool_size=1, max_overflow=0) as proxy:
        connection = connections["stalled"]
        connection.set_autocommit(False)
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        before = status()
        assert before.checked_out == 1
        proxy.stall("existing")

        # Autocommit off: Django closes the connection, the pool rolls back.
        connection.inc_thread_sharing()  # closed from capped()'s thread
        try:
            _, elapsed = capped(
                proxy, PING_TIMEOUT + 2 * SLACK, timed, connection.close
            )
        finally:
            connection.dec_thread_sharing()
        after = status()

    assert PING_TIMEOUT * 0.9 <= elapsed < PING_TIMEOUT + SLACK, elapsed
    assert after.invalidated - before.invalidated == 1
    assert (after.checked_out, after.idle) == (0, 0)


@pytest.mark.postgres
def test_silent_socket__closing_a_server_side_cursor_at_checkin_gives_up():
    """A view left a chunked iterator (a WITH HOLD server-side cursor on
    PostgreSQL) open; the pool closes it at checkin, a round trip: on a
    silent network that ends after ~ping_timeout and the connection is
    invalidated."""
    with stalled_alias("default", pool_size=1, max_overflow=0) as proxy:
        Item.objects.using("stalled").bulk_create(
            [Item(name=f"stall-{number}") for number in range(5)]
        )
        iterator = Item.objects.using("stalled").iterator(chunk_size=2)
        next(iterator)
        before = status()
        proxy.stall("existing")
        connection = connections["stalled"]
        connection.inc_thread_sharing()  # closed from capped()'s thread
        try:
            _, elapsed = capped(
                proxy, PING_TIMEOUT + 2 * SLACK, timed, connection.close
            )
        finally:
            connection.dec_thread_sharing()
        after = status()
        try:
            iterator.close()  # its cursor's connection is gone
        except Exception:
            pass

    assert PING_TIMEOUT * 0.9 <= elapsed < PING_TIMEOUT + SLACK, elapsed
    assert after.invalidated - before.invalidated == 1
    assert (after.checked_out, after.idle) == (0, 0)


@pytest.mark.parametrize("alias", ALIASES)
def test_round_trip_timeout__names_the_deadline(alias):
    """What the pool logs as the invalidation reason: which round trip, which
    deadline, and that the socket was shut down."""
    from djpoolapp.lease import servicing
    from djpoolapp.pool import registry

    with stalled_alias(alias, pool_size=1, max_overflow=0) as proxy:
        with connections["stalled"].cursor() as cursor:
            cursor.execute("SELECT 1")
        (pool,) = registry.pools("stalled")
        conn = connections["stalled"].connection
        # Back in the pool, idle: the pool pings idle connections (a checked-
        # out one is its holder thread's alone: Lease.check_caller).
        connections["stalled"].close()
        proxy.stall("existing")

        def ping() -> BaseException | None:
            try:
                with servicing(conn._djpool_lease):  # the pool's own ping
                    pool.driver.ping(conn)
            except Exception as error:
                return error
            return None

        error = capped(proxy, PING_TIMEOUT + 2 * SLACK, ping)
        connections["stalled"].close()
    assert isinstance(error, RoundTripTimeout), repr(error)
    assert str(error) == (
        "no answer to the pool's pre-ping within ping_timeout=1 s: the "
        "connection's socket was shut down"
    )
    assert error.__cause__ is not None  # the driver's own error


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@only("request", why="the pre-ping of one checkout; pool_mode changes how "
      "often a request checks out, not how a checkout pings")  # fmt: skip
@pytest.mark.parametrize("hub", ["gevent", "eventlet"])
@pytest.mark.parametrize("alias", ALIASES)
def test_green_threads__pre_ping_deadline_fires_under_monkeypatching(alias, hub):
    """Under gevent's or eventlet's monkeypatching the watchdog is a real OS
    thread: the pre-ping on a silent socket ends after ~ping_timeout and the
    request is served on a new connection, with drivers that wait
    cooperatively (psycopg 3 and psycopg2 with psycogreen under gevent:
    other greenlets keep running) and with those that block the whole
    process in C meanwhile (mysqlclient; psycopg 3 under eventlet)."""
    # find_spec, not importorskip: importing eventlet here would register its
    # fork warning in this process and fail every later fork test.
    for module in [hub] + (["psycogreen"] if settings.DRIVER == "psycopg2" else []):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    settings_dict = connections[alias].settings_dict
    options = {
        "aliases": {
            alias: {
                "ping_timeout": PING_TIMEOUT,
                "ping_after_idle": 0.2,
                "pool_size": 2,
                "max_overflow": 0,
            }
        }
    }
    with StallingProxy((settings_dict["HOST"], int(settings_dict["PORT"]))) as proxy:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.faults.settings_startup",
            "DJPOOL_TEST_RUN_ID": settings.RUN_ID,
            "DJPOOL_TEST_DRIVER": settings.DRIVER,
            "DJPOOL_FAULTS_OPTIONS": json.dumps(options),
            "DJPOOL_FAULTS_ALIAS": alias,
            "DJPOOL_FAULTS_PORT": str(proxy.port),
            "DJPOOL_FAULTS_NAME": settings_dict["NAME"],
            "PYTHONWARNINGS": "error",
        }
        with subprocess.Popen(
            [sys.executable, "-m", "tests.faults.green_stall_worker", alias, hub],
            cwd=ROOT, env=env, text=True, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        ) as worker:  # fmt: skip
            try:
                assert worker.stdout is not None and worker.stdin is not None
                line = worker.stdout.readline()
                if line.strip() != "parked":
                    _, err = worker.communicate(timeout=30)
                    raise AssertionError(f"worker failed: {line}{err[-3000:]}")
                proxy.stall("existing")
                worker.stdin.write("go\n")
                worker.stdin.flush()
                try:
                    out, err = worker.communicate(timeout=PING_TIMEOUT + 30)
                except subprocess.TimeoutExpired:
                    proxy.resume()
                    out, err = worker.communicate(timeout=30)
                    raise AssertionError(
                        f"worker blocked on the silent network: {err}"
                    ) from None
            finally:
                if worker.poll() is None:
                    worker.kill()
    assert worker.returncode == 0, err[-3000:]
    report = json.loads(out.strip().splitlines()[-1])
    print(f"\n{alias} ({settings.DRIVER}) under {hub}: {report}")
    assert report["threading_patched"]
    assert report["status"] == 200 and report["new_session"], report
    assert PING_TIMEOUT * 0.9 <= report["elapsed"] < PING_TIMEOUT + SLACK, report
    assert report["invalidated"] == 1 and report["checked_out"] == 0, report
    if alias == "default" and hub == "gevent":  # cooperative: the hub ran
        assert report["ticks"] >= PING_TIMEOUT / 0.01 / 4, report
