"""Recycle and pre-ping (CONTRACT section 1): connections older than
``recycle`` are replaced at checkout; a ping costs a round trip only after
``ping_after_idle``.  Scenario 8 of issue 3.

Round trips are counted by the server, not by djpoolapp:

- PostgreSQL: ``pg_stat_activity.query`` holds a session's last statement.
  The session's last request runs a statement with a unique marker; if the
  marker is still there after the next checkout, the checkout sent nothing,
  if ``SELECT 1`` is, it pinged.
- MariaDB: ``Com_admin_commands`` in the session's own status counts the
  COM_PING packets it received (``Questions`` does not).
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
from django.db import connections

import djpoolapp
from tests.conftest import ALIASES

from .conftest import pool_options
from .servers import session_id

pytestmark = [
    pytest.mark.faults,
    pytest.mark.django_db(transaction=True, databases="__all__"),
]

IDLE = 1.0


class RoundTrips:
    """Counts what the server received from the pooled session of *alias*
    during a checkout (pool_size=1, so it is always the same session)."""

    def __init__(self, alias: str, admin) -> None:
        self.alias = alias
        self.admin = admin(alias)
        self.vendor = connections[alias].vendor
        self.session = 0
        self._before: object = None

    def _com_admin(self) -> int:
        with connections[self.alias].cursor() as cursor:
            cursor.execute("SHOW SESSION STATUS LIKE 'Com_admin_commands'")
            return int(cursor.fetchone()[1])

    def end_request(self) -> None:
        """Last statements of a request, then the connection goes back."""
        connection = connections[self.alias]
        if self.vendor == "postgresql":
            marker = f"djpool-marker-{uuid.uuid4().hex}"
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid(), %s", [marker])
                self.session = cursor.fetchone()[0]
            self._before = marker
        else:
            self.session = session_id(self.alias)
            self._before = self._com_admin()
        connection.close()

    def pings_at_checkout(self) -> int:
        """Check a connection out; return the pings the server saw meanwhile."""
        connections[self.alias].ensure_connection()
        if self.vendor == "postgresql":
            ((query,),) = self.admin.rows(
                "SELECT query FROM pg_stat_activity WHERE pid = %s", [self.session]
            )
            if self._before in query:
                pings = 0
            else:
                assert query.strip() == "SELECT 1", query  # nothing but a ping
                pings = 1
            assert session_id(self.alias) == self.session
        else:
            # One cursor: in pool_mode="transaction" each closed cursor gives
            # the connection back, and the next checkout would ping again.
            with connections[self.alias].cursor() as cursor:
                cursor.execute("SELECT CONNECTION_ID()")
                assert cursor.fetchone()[0] == self.session
                cursor.execute("SHOW SESSION STATUS LIKE 'Com_admin_commands'")
                pings = int(cursor.fetchone()[1]) - int(self._before)  # type: ignore[call-overload]
        return pings


@pytest.mark.parametrize("alias", ALIASES)
def test_pre_ping__only_after_ping_after_idle(alias, admin):
    """With ping_after_idle=1 a connection returned moments ago is handed
    out without a round trip; one idle for longer is pinged exactly once."""
    with pool_options(alias, pool_size=1, max_overflow=0, ping_after_idle=IDLE):
        trips = RoundTrips(alias, admin)
        trips.end_request()
        trips.end_request()  # a second checkout: now surely not brand new
        assert trips.pings_at_checkout() == 0
        trips.end_request()
        time.sleep(IDLE + 0.2)
        assert trips.pings_at_checkout() == 1
        connections[alias].close()


@pytest.mark.parametrize("alias", ALIASES)
def test_pre_ping__every_checkout_with_ping_after_idle_zero(alias, admin):
    """ping_after_idle=0: every checkout of a pooled connection pings."""
    with pool_options(alias, pool_size=1, max_overflow=0, ping_after_idle=0):
        trips = RoundTrips(alias, admin)
        trips.end_request()
        for _ in range(3):
            assert trips.pings_at_checkout() == 1
            trips.end_request()


@pytest.mark.parametrize("alias", ALIASES)
def test_pre_ping__never_when_disabled(alias, admin):
    """pre_ping=False: even a long-idle connection is handed out untested."""
    with pool_options(
        alias, pool_size=1, max_overflow=0, pre_ping=False, ping_after_idle=0
    ):
        trips = RoundTrips(alias, admin)
        trips.end_request()
        trips.end_request()
        assert trips.pings_at_checkout() == 0
        connections[alias].close()


@pytest.mark.parametrize("alias", ALIASES)
def test_recycle__replaces_connections_older_than_recycle(alias, serve, admin):
    """recycle=1: a connection younger than 1 s is reused; one older is
    closed on the server and replaced at checkout, counted as recycled (not
    as invalidated)."""

    def session() -> int:
        response = serve(f"/session/{alias}/")
        assert response.status == 200, response.error
        return json.loads(response.body)["session"]

    with pool_options(alias, pool_size=1, max_overflow=0, recycle=1):
        before = djpoolapp.pool_status(alias)[alias]
        first = session()
        assert session() == first
        time.sleep(1.2)
        second = session()
        after = djpoolapp.pool_status(alias)[alias]
        assert second != first
        # The recycled session ends asynchronously: the server lists it until
        # its backend / handler thread has read the client's hang-up.
        admin(alias).wait_gone([first])
        assert admin(alias).sessions() == [second]
    assert after.recycled - before.recycled == 1
    assert after.invalidated == before.invalidated
    assert after.opened - before.opened == 2
