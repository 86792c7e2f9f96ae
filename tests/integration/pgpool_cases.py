"""Pooling through Pgpool-II, seen from Pgpool-II.

Not collected by itself (no ``test_`` prefix): test_pgpool.py runs it in a
nested pytest whose ``default`` alias goes through Pgpool-II, next to the
core ORM and pooling tests.  Pgpool-II pools per session (a client keeps one
Pgpool child, and its cached backend connection, until it disconnects): what
djpoolapp saves are the client connections to Pgpool-II, counted by the
"new connection received" lines of its log.
"""

from __future__ import annotations

from django.db import connections

from tests.integration import POOLER_CASES
from tests.integration.servers import (
    fresh_pools,
    pooler_port_and_log,
    session_requests,
)

pytestmark = POOLER_CASES

PGPOOL_PORT, LOG = pooler_port_and_log("pgpool")


def test_default_alias__goes_through_pgpool():
    assert int(connections["default"].settings_dict["PORT"]) == PGPOOL_PORT


def connections_received() -> int:
    """Client connections Pgpool-II accepted so far (this run is its only
    client)."""
    return LOG.read_text(errors="replace").count("new connection received")


def test_pgpool__pooled_requests_connect_once(request_cycle):
    fresh_pools()
    before = connections_received()
    session_requests(request_cycle, 50)
    assert connections_received() - before <= 1


def test_pgpool__stock_django_connects_once_per_request(request_cycle, unpatched):
    before = connections_received()
    session_requests(request_cycle, 20)
    assert connections_received() - before == 20
