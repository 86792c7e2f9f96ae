"""Dead connections (CONTRACT section 2): a connection the server killed is
never handed to a request; one killed during a request fails that request
only; a server restart fails only the requests it overlaps.

Scenarios 1-3 of issue 3.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from django.db import Error as DjangoDatabaseError
from django.db import connections

import djpoolapp
from tests import modes
from tests.conftest import ALIASES

from . import views
from .conftest import pool_options
from .servers import park_idle, restart_server, wait_accepting

pytestmark = [
    pytest.mark.faults,
    pytest.mark.django_db(transaction=True, databases="__all__"),
]


@pytest.mark.parametrize("alias", ALIASES)
@pytest.mark.parametrize("ping_after_idle", [3600.0, 0.0], ids=["no-ping", "ping"])
def test_idle_connections__killed_by_the_server_are_replaced(
    alias, ping_after_idle, serve, admin
):
    """Every idle pooled session killed server-side (pg_terminate_backend /
    KILL): the next 20 requests all succeed on new sessions, and
    pool_status() counts one invalidation per killed connection.  With
    ping_after_idle=3600 no ping is due: the dead connections must be found
    by the pool's cheap socket check alone."""
    with pool_options(
        # park=False: the requests take the idle connections in turn (a
        # parked connection's death: test_fastpath.py)
        alias,
        pool_size=4,
        max_overflow=0,
        ping_after_idle=ping_after_idle,
        park=False,
    ):
        killed = park_idle(alias, 4)
        assert len(set(killed)) == 4
        assert djpoolapp.pool_status(alias)[alias].idle == 4
        before = djpoolapp.pool_status(alias)[alias]

        assert sorted(admin(alias).kill()) == sorted(killed)

        served = []
        for _ in range(20):
            response = serve(f"/session/{alias}/")
            assert response.status == 200, response.error
            served.append(json.loads(response.body)["session"])
        after = djpoolapp.pool_status(alias)[alias]

    assert not set(served) & set(killed)
    assert after.invalidated - before.invalidated == 4
    assert after.opened - before.opened == 4  # one replacement each
    assert (after.checked_out, after.idle) == (0, 4)


@pytest.mark.parametrize("alias", ALIASES)
@pytest.mark.parametrize("atomic", [False, True], ids=["autocommit", "atomic"])
def test_in_use_connection__killed_fails_only_its_request(alias, atomic, serve, admin):
    """A session killed while its request uses it: that request gets Django's
    OperationalError/InterfaceError (a 500), the connection is invalidated
    (never seen again), and the next request succeeds on a new session.
    (pool_mode="transaction", autocommit: the request held no connection
    when it was killed, and succeeds on a replacement.)"""
    with pool_options(alias, pool_size=2, max_overflow=0):
        before = djpoolapp.pool_status(alias)[alias]
        response = serve(f"/faults/killed/{alias}/?atomic={int(atomic)}")
        killed = views.KILLED[-1]
        if not atomic and modes.current(alias) == "transaction":
            # Between its two autocommit statements the view held no
            # connection: the second checkout found the killed one dead and
            # replaced it (docs/pool_mode.rst), so the request succeeds.
            assert response.status == 200, response.error
        else:
            assert response.status == 500
            error = response.error
            assert isinstance(error, DjangoDatabaseError), repr(error)
            assert type(error).__module__ == "django.db.utils"
            assert type(error).__name__ in ("OperationalError", "InterfaceError")
        middle = djpoolapp.pool_status(alias)[alias]
        assert middle.invalidated - before.invalidated == 1
        assert middle.checked_out == 0

        sessions = []
        for _ in range(5):
            ok = serve(f"/session/{alias}/")
            assert ok.status == 200, ok.error
            sessions.append(json.loads(ok.body)["session"])
        assert killed not in sessions
        assert killed not in admin(alias).sessions()
        after = djpoolapp.pool_status(alias)[alias]
    assert after.invalidated == middle.invalidated  # nothing else was thrown away
    assert (after.checked_out, after.idle) == (0, 1)


@pytest.mark.restart
@pytest.mark.slow
@pytest.mark.parametrize("alias", ALIASES)
def test_server_restart__fails_only_the_requests_it_overlaps(alias, serve):
    """The server restarts (stop, outage, start) while 4 threads send
    requests: requests during the outage fail with Django's database errors,
    none takes longer than the pool timeout allows, and every request that
    starts after the server accepts connections again succeeds."""
    timeout = 2.0
    records: list[tuple[float, float, int, BaseException | None]] = []
    stop = threading.Event()
    lock = threading.Lock()

    def client() -> None:
        try:
            while not stop.is_set():
                started = time.monotonic()
                response = serve(f"/session/{alias}/")
                with lock:
                    records.append(
                        (started, time.monotonic(), response.status, response.error)
                    )
                time.sleep(0.005)
        finally:
            connections.close_all()

    with pool_options(alias, pool_size=4, max_overflow=0, timeout=timeout):
        threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(0.5)  # every pooled connection in use and idle in turn
            restart_started = time.monotonic()
            restart_server(alias)
            back = wait_accepting(alias)
            time.sleep(1.5)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout + 10)
        assert not any(thread.is_alive() for thread in threads), "a client hangs"
        status = djpoolapp.pool_status(alias)[alias]

    before = [r for r in records if r[1] < restart_started]
    during = [r for r in records if r[0] < back and r[1] >= restart_started]
    after = [r for r in records if r[0] >= back]
    failures = [r for r in records if r[2] != 200]
    assert before and after and all(r[2] == 200 for r in before)
    assert failures, "the restart went unnoticed: did the server really restart?"
    assert all(r[2] == 200 for r in after), [repr(r[3]) for r in after if r[3]][:3]
    for _, _, status_code, error in failures:
        assert status_code == 500
        assert isinstance(error, DjangoDatabaseError), repr(error)
    assert max(end - start for start, end, _, _ in records) < timeout + 3.0
    assert status.checked_out == 0
    print(
        f"\n{alias}: {len(before)} requests before, {len(during)} overlapping the "
        f"restart ({len(failures)} failed), {len(after)} after, all succeeded; "
        f"outage {back - restart_started:.2f} s; invalidated {status.invalidated}"
    )
