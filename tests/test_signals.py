"""``connection_checked_out`` / ``connection_checked_in``: sent with
receivers, harmless when a receiver fails, never built without receivers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import OperationalError, connections
from django.dispatch import Signal

import djpoolapp
from djpoolapp.drivers import PooledConnection
from djpoolapp.pool import AliasPool
from djpoolapp.signals import connection_checked_in, connection_checked_out
from tests.conftest import ALIASES
from tests.test_logging import kill, session_id

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


@pytest.fixture
def received() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    calls: list[tuple[str, dict[str, Any]]] = []

    def on_out(sender: Any, **kwargs: Any) -> None:
        calls.append(("out", {"sender": sender, **kwargs}))

    def on_in(sender: Any, **kwargs: Any) -> None:
        calls.append(("in", {"sender": sender, **kwargs}))

    connection_checked_out.connect(on_out)
    connection_checked_in.connect(on_in)
    yield calls
    connection_checked_out.disconnect(on_out)
    connection_checked_in.disconnect(on_in)


@pytest.mark.parametrize("alias", ALIASES)
def test_signals__one_checkout_and_one_checkin_per_request(
    alias, received, request_cycle
):
    connections[alias].close()
    received.clear()
    status, body = request_cycle(f"/session/{alias}/")
    assert status == 200
    mine = [call for call in received if call[1]["alias"] == alias]
    (kind_out, out), (kind_in, back) = mine
    assert (kind_out, kind_in) == ("out", "in")
    assert out["sender"] is AliasPool and out["alias"] == alias
    assert isinstance(out["dbapi_connection"], PooledConnection)
    assert 0 < out["wait"] < 5
    assert back["dbapi_connection"] is out["dbapi_connection"]
    assert back["invalidated"] is False
    assert json.loads(body)["session"]  # the request itself was served


@pytest.mark.parametrize("alias", ALIASES)
def test_signals__checkin_says_when_a_connection_was_invalidated(alias, received):
    connection = connections[alias]
    connection.close()
    kill(alias, session_id(alias))
    with pytest.raises(OperationalError):
        session_id(alias)  # Django sees the error
    received.clear()
    connection.close()
    assert [(kind, call["invalidated"]) for kind, call in received] == [("in", True)]
    assert djpoolapp.pool_status(alias)[alias].checked_out == 0


@pytest.mark.postgres
def test_signals__a_failing_receiver_does_not_fail_the_checkout(request_cycle, caplog):
    def broken(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("receiver bug")

    connection_checked_out.connect(broken)
    try:
        status, _ = request_cycle("/session/default/")
    finally:
        connection_checked_out.disconnect(broken)
    assert status == 200
    assert djpoolapp.pool_status("default")["default"].checked_out == 0
    assert "receiver bug" in caplog.text  # Django logs it (django.dispatch)


@pytest.mark.postgres
def test_signals__nothing_sent_without_receivers(monkeypatch, request_cycle):
    def must_not_run(self: Signal, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("signal sent with no receiver")

    monkeypatch.setattr(Signal, "send_robust", must_not_run)
    assert not connection_checked_out.receivers and not connection_checked_in.receivers
    assert request_cycle("/session/default/")[0] == 200
