"""The ``djpoolapp`` logger: one line per pool event at the documented level,
and never a password anywhere (logs, reprs, status, command output, metrics)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import OperationalError, connections
from django.test import override_settings
from prometheus_client import CollectorRegistry, generate_latest

import djpoolapp
from djpoolapp import metrics
from djpoolapp.pool import registry
from tests.conftest import ALIASES, monitor_connection, wait_session_gone

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

SECRET = "Pw-djpool-7f3Qx9"  # noqa: S105 (a test credential on the test server)
USER = "djpool_pw"


def session_id(alias: str) -> int:
    sql = {"postgresql": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()"}
    with connections[alias].cursor() as cursor:
        cursor.execute(sql[connections[alias].vendor])
        return int(cursor.fetchone()[0])


def kill(alias: str, session: int) -> None:
    """End a server session from outside, as a DBA or a restart would."""
    postgres = connections[alias].vendor == "postgresql"
    monitor = monitor_connection(alias)
    try:
        cursor = monitor.cursor()
        if postgres:
            cursor.execute("SELECT pg_terminate_backend(%s)", [session])
        else:
            cursor.execute(f"KILL {int(session)}")
        # The session ends asynchronously: wait until the server has let go
        # of it, so that its last word is on the client's socket.
        wait_session_gone(alias, session)
        cursor.close()
    finally:
        monitor.close()


def hold_connection(
    alias: str, release: threading.Event, held: threading.Event
) -> None:
    """Keep one pooled connection of *alias* checked out until *release*."""
    try:
        connections[alias].ensure_connection()
        held.set()
        release.wait(10)
    finally:
        connections[alias].close()


def events(caplog: pytest.LogCaptureFixture, alias: str) -> list[tuple[str, str]]:
    """(level, first two words) of the djpoolapp lines about *alias*'s pools."""
    return [
        (record.levelname, " ".join(record.getMessage().split()[:2]))
        for record in caplog.records
        if record.name == "djpoolapp" and f"<AliasPool '{alias}'" in record.getMessage()
    ]


@pytest.mark.parametrize("alias", ALIASES)
def test_log_levels__one_line_per_pool_event(alias, caplog, request_cycle):
    caplog.set_level(logging.DEBUG, logger="djpoolapp")
    options = {"aliases": {alias: {"pool_size": 1, "max_overflow": 0, "timeout": 0.2}}}
    with override_settings(DJPOOL_OPTIONS=options):
        connections[alias].close()
        caplog.clear()
        assert request_cycle(f"/session/{alias}/")[0] == 200
        assert events(caplog, alias) == [
            ("INFO", "Created <AliasPool"),
            ("INFO", "Opened a"),
            ("DEBUG", "Checked out"),
            ("DEBUG", "Checked in"),
        ]
        kill(alias, session_id(alias))
        connections[alias].close()
        caplog.clear()
        assert request_cycle(f"/session/{alias}/")[0] == 200  # replaced, no error
        assert events(caplog, alias) == [
            ("INFO", "Invalidated a"),
            ("INFO", "Opened a"),
            ("DEBUG", "Checked out"),
            ("DEBUG", "Checked in"),
        ]
        release, held = threading.Event(), threading.Event()
        holder = threading.Thread(target=hold_connection, args=(alias, release, held))
        holder.start()
        held.wait(10)
        caplog.clear()
        with pytest.raises(OperationalError):
            connections[alias].ensure_connection()
        release.set()
        holder.join()
        (warning,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert warning.levelname == "WARNING"
        assert f"database alias '{alias}' within 0.2 s" in warning.getMessage()
        assert "pool_size=1 + max_overflow=0" in warning.getMessage()
        caplog.clear()
        djpoolapp.dispose(alias)
        assert events(caplog, alias) == [("INFO", "Disposed <AliasPool")]


@pytest.mark.postgres
def test_log_levels__per_checkout_lines_only_at_debug(caplog, request_cycle):
    caplog.set_level(logging.INFO, logger="djpoolapp")
    for _ in range(3):
        request_cycle("/session/default/")
    assert not [r for r in caplog.records if r.getMessage().startswith("Checked")]


@pytest.fixture
def password_user() -> Iterator[None]:
    """A MariaDB user that really needs a password, on the test database."""
    monitor = monitor_connection("mysql")
    name = connections["mysql"].settings_dict["NAME"]
    cursor = monitor.cursor()
    cursor.execute(f"CREATE OR REPLACE USER '{USER}'@'%' IDENTIFIED BY '{SECRET}'")
    cursor.execute(f"GRANT ALL PRIVILEGES ON `{name}`.* TO '{USER}'@'%'")
    try:
        yield
    finally:
        for connection in connections.all(initialized_only=True):
            connection.close()
        registry.dispose()
        cursor.execute(f"DROP USER IF EXISTS '{USER}'@'%'")
        cursor.close()
        monitor.close()


@pytest.mark.postgres
@pytest.mark.mysql
def test_passwords__never_in_logs_reprs_status_commands_or_metrics(
    monkeypatch, password_user, caplog, request_cycle
):
    caplog.set_level(logging.DEBUG)  # every logger, SQLAlchemy's included
    monkeypatch.setitem(connections["mysql"].settings_dict, "USER", USER)
    for alias in ("default", "mysql"):  # PostgreSQL here trusts 127.0.0.1
        connections[alias].close()
        monkeypatch.setitem(connections[alias].settings_dict, "PASSWORD", SECRET)
    outputs = []
    options = {"pool_size": 1, "max_overflow": 0, "timeout": 0.2}
    with override_settings(DJPOOL_OPTIONS=options):
        for alias in ("default", "mysql"):
            assert request_cycle(f"/session/{alias}/")[0] == 200
            kill(alias, session_id(alias))  # an invalidation, logged with its error
            connections[alias].close()
            assert request_cycle(f"/session/{alias}/")[0] == 200
            outputs += [repr(pool) for pool in registry.pools(alias)]
        outputs.append(repr(djpoolapp.pool_status()))
        for args in (["status"], ["status", "--json"], ["check"]):
            out = StringIO()
            call_command("djpool", *args, stdout=out, stderr=out)
            outputs.append(out.getvalue())
        scrape = CollectorRegistry()
        metrics.register(scrape)
        outputs.append(generate_latest(scrape).decode())
        djpoolapp.dispose()
        monkeypatch.setitem(
            connections["mysql"].settings_dict, "PASSWORD", "x" + SECRET
        )
        with pytest.raises(CommandError) as refused:
            call_command("djpool", "check", "--database", "mysql", stdout=StringIO())
        outputs.append(str(refused.value))
    assert f"'{USER}'" in str(refused.value)  # the wrong password was refused
    assert f"{USER}@127.0.0.1:" in outputs[-5]  # the password user was in use
    text = "\n".join([*outputs, caplog.text])
    assert "Invalidated a connection" in text and "Created <AliasPool" in text
    assert SECRET not in text
