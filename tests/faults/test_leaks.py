"""Leaks (CONTRACT section 2): under concurrent misbehaving traffic every
connection comes back, the server never sees more than pool_size +
max_overflow sessions, and nothing a request left behind (transactions,
server-side cursors) survives into the pool.  Scenario 5 of issue 3.
"""

from __future__ import annotations

import gc
import threading
import time
from collections import Counter

import pytest
from django.db import Error as DjangoDatabaseError
from django.db import ProgrammingError, connections

import djpoolapp
from tests import modes
from tests.conftest import ALIASES
from tests.testapp.models import Item

from . import views
from .conftest import pool_options

pytestmark = [
    pytest.mark.faults,
    pytest.mark.django_db(transaction=True, databases="__all__"),
]

THREADS = 8
REQUESTS = 2000
POOL_SIZE, MAX_OVERFLOW = 4, 2

#: (path, expected status, expected exception type or None); one round of the
#: mix every thread repeats.
MIX = [
    ("/session/{alias}/", 200, None),
    ("/create/{alias}/?name=kept", 200, None),
    ("/faults/atomic-raise/{alias}/", 500, RuntimeError),
    ("/session/{alias}/", 200, None),
    ("/faults/open-cursor/{alias}/", 200, None),
    ("/faults/abandon-iterator/{alias}/", 200, None),
    ("/session/{alias}/", 200, None),
    ("/leave-open/{alias}/", 200, None),
    ("/fail/{alias}/", 500, ProgrammingError),
    ("/session/{alias}/", 200, None),
]


def server_cursors(alias: str) -> int:
    """Django's server-side cursors still declared in the pooled sessions,
    read from each of them (all idle connections checked out at once)."""
    status = djpoolapp.pool_status(alias)[alias]
    wrappers = [connections.create_connection(alias) for _ in range(status.idle)]
    total = 0
    cursors = []  # open until all are checked out (pool_mode="transaction")
    try:
        for wrapper in wrappers:
            cursor = wrapper.cursor()
            cursors.append(cursor)
            cursor.execute(
                "SELECT count(*) FROM pg_cursors WHERE name LIKE '_django_curs_%%'"
            )
            total += cursor.fetchone()[0]
    finally:
        for cursor in cursors:
            cursor.close()
        for wrapper in wrappers:
            wrapper.close()
    return total


@pytest.mark.slow
@pytest.mark.parametrize("alias", ALIASES)
def test_misbehaving_traffic__leaks_nothing(alias, serve, admin, server_sessions):
    """8 threads x 2,000 requests (500 in pool_mode="transaction"), among
    them requests that raise inside atomic(), fail on a bad query, leave a
    transaction open, leave cursors open and abandon half-read (server-side)
    iterators: afterwards no connection is checked out, the server never saw
    more than pool_size + max_overflow sessions, no transaction is open on
    the server, nothing that failed was committed and no server-side cursor
    survives."""
    Item.objects.using(alias).bulk_create(Item(name=f"seed {i}") for i in range(20))
    connections[alias].close()  # the main thread holds nothing during the run
    gc.collect()  # earlier tests' abandoned checkouts come back now (Lease)
    # Sessions of other pools that are still open (an earlier test's retired
    # pool, its backends still exiting): the bound applies to this run's own.
    baseline = server_sessions(alias)
    problems: list[str] = []
    counts: Counter[str] = Counter()
    peak = 0
    done = threading.Event()

    # The transaction-mode copy runs a quarter of the traffic (run time):
    # the same mix, and test_pool_mode_safety.py proves its thread case.
    requests = REQUESTS if modes.current(alias) == "request" else REQUESTS // 4

    def client(offset: int) -> None:
        try:
            for number in range(requests):
                path, status, error_type = MIX[(number + offset) % len(MIX)]
                response = serve(path.format(alias=alias))
                counts[path] += 1
                if response.status != status or (
                    type(response.error) is not error_type
                    if error_type
                    else response.error is not None
                ):
                    problems.append(f"{path}: {response.status} {response.error!r}")
        except BaseException as error:  # reported below
            problems.append(f"client crashed: {error!r}")
        finally:
            connections.close_all()

    def watch() -> None:
        nonlocal peak
        while not done.wait(0.01):
            peak = max(peak, server_sessions(alias))

    with pool_options(
        alias, pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW, timeout=30
    ):
        before = djpoolapp.pool_status(alias)[alias]
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        started = time.monotonic()
        threads = [
            threading.Thread(target=client, args=(i,), daemon=True)
            for i in range(THREADS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        elapsed = time.monotonic() - started
        done.set()
        watcher.join(5)
        assert not any(thread.is_alive() for thread in threads), "a client hangs"
        after = djpoolapp.pool_status(alias)[alias]
        open_transactions = admin(alias).open_transactions()
        cursors = server_cursors(alias) if alias == "default" else 0
        sessions = server_sessions(alias)

    print(
        f"\n{alias}: {THREADS * requests} requests in {elapsed:.1f} s, peak "
        f"{peak} server sessions, opened {after.opened - before.opened}, "
        f"invalidated {after.invalidated - before.invalidated}"
    )
    assert not problems, problems[:5]
    assert sum(counts.values()) == THREADS * requests
    assert after.checked_out == 0
    assert 1 <= peak - baseline <= POOL_SIZE + MAX_OVERFLOW, (peak, baseline)
    assert sessions <= POOL_SIZE
    assert after.timeouts == before.timeouts
    assert open_transactions == []
    assert cursors == 0
    names = Counter(Item.objects.using(alias).values_list("name", flat=True))
    assert names["kept"] == counts["/create/{alias}/?name=kept"]
    for never in ("atomic-raise", "rolled back", "uncommitted"):
        assert names[never] == 0, never
    views.ABANDONED.clear()  # releasing them now must not disturb anything


@pytest.mark.parametrize("alias", ALIASES)
def test_abandoned_cursor__is_closed_when_its_connection_returns(alias, serve):
    """A cursor and a half-read iterator kept past their request are closed
    when the connection goes back to the pool: the next user of the same
    server session finds no server-side cursor left, and the stale cursor
    can no longer run a statement (stock Django: the connection is closed,
    so it raises too) instead of running it on someone else's checkout."""
    Item.objects.using(alias).bulk_create(Item(name=f"seed {i}") for i in range(5))
    connections[alias].close()
    with pool_options(alias, pool_size=1, max_overflow=0):
        first = serve(f"/session/{alias}/")
        assert serve(f"/faults/abandon-iterator/{alias}/").status == 200
        iterator = views.ABANDONED[-1]
        assert serve(f"/faults/open-cursor/{alias}/").status == 200
        stale = views.ABANDONED[-1]
        second = serve(f"/session/{alias}/")
        assert first.body == second.body  # one pooled session all along

        connection = connections[alias]
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT name FROM pg_cursors")
                assert cursor.fetchall() == []
            with pytest.raises(DjangoDatabaseError):
                list(iterator)  # past the rows already fetched
        connection.close()
        with pytest.raises(DjangoDatabaseError):
            stale.execute("SELECT 1")
        del iterator, stale
        views.ABANDONED.clear()
        assert djpoolapp.pool_status(alias)[alias].checked_out == 0
