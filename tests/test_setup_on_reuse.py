"""Django's set-up of a reused server session has the effect it has on a
fresh connection (an adversarial review of 0.2.0, F1 of 2026-11-30).

Django's ``get_new_connection()`` sets ``OPTIONS["isolation_level"]`` on the
driver connection *before* turning autocommit on; on a new psycopg2
connection that only decides how Django's transactions ``BEGIN``.  A reused
connection is already in autocommit, where psycopg2 turns the same
assignment into ``SET default_transaction_isolation``: every autocommit
statement of every later request then ran SERIALIZABLE (after any session
reset, and after the pool restored characteristics a raw handle changed).
Each case here runs Django's set-up again on the *same* server session --
after a reset, and after a restore -- and asks the server what an
autocommit statement and a transaction run at, against what the first,
fresh connection said.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connections, transaction
from django.test import override_settings

from tests.modes import pool_mode  # noqa: F401  (every test, both modes)
from tests.test_transparency import session_id

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def _levels(vendor: str) -> list[Any]:
    if vendor == "mysql":
        return ["serializable", "repeatable read"]
    from django.db.backends.postgresql.psycopg_any import IsolationLevel

    return [IsolationLevel.SERIALIZABLE, IsolationLevel.REPEATABLE_READ]


#: What the statement itself runs at, and the session's default for the next.
_ISOLATION = {
    "postgresql": "SELECT current_setting('transaction_isolation'), "
    "current_setting('default_transaction_isolation')",
    "mysql": "SELECT @@SESSION.tx_isolation, @@GLOBAL.tx_isolation",
}

#: A statement that makes the checkin reset the session.
_CHANGE = {
    "postgresql": "SET statement_timeout = 0",
    "mysql": "SET @djpool_reuse = 1",
}


def _isolation(alias: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """(in autocommit, inside atomic()) as the server reports them."""
    connection = connections[alias]
    with connection.cursor() as cursor:
        cursor.execute(_ISOLATION[connection.vendor])
        autocommit = tuple(cursor.fetchone())
    with transaction.atomic(using=alias):
        with connection.cursor() as cursor:
            cursor.execute(_ISOLATION[connection.vendor])
            in_atomic = tuple(cursor.fetchone())
    return autocommit, in_atomic  # type: ignore[return-value]


def _change_characteristics(alias: str) -> None:
    """A raw handle changes the driver's session characteristics (the pool
    restores them at checkin)."""
    connection = connections[alias]
    raw = connection.connection
    if connection.vendor == "mysql":
        with connection.cursor() as cursor:
            cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
    elif hasattr(raw, "set_session"):  # psycopg2
        raw.set_session(isolation_level="READ COMMITTED", readonly=False)
    else:  # psycopg 3
        import psycopg

        raw.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
        raw.read_only = False


def _as_is(alias: str) -> None:
    """Nothing between two requests: the connection is reused as it is."""


@pytest.fixture(params=["postgres", "mysql"])
def alias(request: Any) -> str:
    name = "default" if request.param == "postgres" else "mysql"
    request.applymarker(getattr(pytest.mark, request.param))
    return name


@pytest.fixture(params=[0, 1], ids=["level-a", "level-b"])
def isolation_option(request: Any, alias: str, one_connection: None) -> Iterator[Any]:
    """``OPTIONS["isolation_level"]`` of *alias* for the test (a new pool)."""
    connection = connections[alias]
    level = _levels(connection.vendor)[request.param]
    options = connection.settings_dict["OPTIONS"]
    missing = object()
    previous = options.get("isolation_level", missing)
    connection.close()
    options["isolation_level"] = level
    try:
        yield level
    finally:
        connection.close()
        if previous is missing:
            del options["isolation_level"]
        else:
            options["isolation_level"] = previous


@pytest.mark.parametrize(
    "between",
    [
        pytest.param(_as_is, id="reused-as-is"),
        pytest.param(
            lambda alias: (
                connections[alias].cursor().execute(_CHANGE[connections[alias].vendor])
            ),
            id="after-a-reset",
        ),
        pytest.param(_change_characteristics, id="after-a-restore"),
    ],
)
def test_set_up__isolation_level_option_as_on_a_fresh_connection(
    alias, isolation_option, between
):
    connection = connections[alias]
    fresh = _isolation(alias)
    first = session_id(alias)
    for _ in range(3):
        between(alias)
        connection.close()
        assert _isolation(alias) == fresh
        if connection.vendor == "postgresql" or between is _as_is:
            # one connection: the same session (MariaDB's reset of a session
            # with user variables opens a new one: docs/behaviour.rst)
            assert session_id(alias) == first
    autocommit, in_atomic = fresh
    # (what a fresh connection runs: Django's option inside transactions; in
    # autocommit the server's default on PostgreSQL, the session's level on
    # MySQL, where Django sets it with SET SESSION TRANSACTION)
    if connection.vendor == "postgresql":
        assert in_atomic[0] != autocommit[0]
        assert autocommit[0] == autocommit[1]
    else:
        assert in_atomic[0] == autocommit[0]


#: (alias, project backend overriding get_new_connection() with fail_set_up
#: and retry_set_up switches: tests/custom_postgres, tests/custom_mysql).
PROJECT_BACKENDS = [
    pytest.param(
        "default", "tests.custom_postgres", marks=pytest.mark.postgres, id="postgres"
    ),
    pytest.param("mysql", "tests.custom_mysql", marks=pytest.mark.mysql, id="mysql"),
]


@pytest.mark.parametrize("alias, engine", PROJECT_BACKENDS)
def test_set_up__failing_backend_set_up_gives_the_connection_back(
    alias, engine, one_connection
):
    """A second review: when a backend's ``get_new_connection()`` fails
    after the pool handed it a connection (a project backend's own set-up
    after ``super()``, here ``fail_set_up``; a failed round trip of the
    set-up does the same), Django never holds the connection and nothing
    checked it in: with ``pool_size=1`` every later request timed out.  It
    is given back (invalidated), the error reaches the caller as Django's,
    as without the app, and the next connect works."""
    from django.db import OperationalError

    from djpoolapp import pool_status
    from tests.conftest import custom_handler

    with custom_handler(alias, engine) as handler:
        connection = handler[alias]
        type(connection).fail_set_up = True
        try:
            for _ in range(3):  # a stranded checkout: the 2nd would time out
                with pytest.raises(OperationalError, match="set-up failed"):
                    connection.ensure_connection()
                assert connection.connection is None
                assert pool_status()[alias].checked_out == 0
        finally:
            type(connection).fail_set_up = False
        connection.ensure_connection()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        connection.close()


@pytest.mark.parametrize("alias, engine", PROJECT_BACKENDS)
def test_set_up__retrying_backend_keeps_one_connection(alias, engine):
    """Third review: a project backend whose ``get_new_connection()`` calls
    ``super()`` again after its own set-up failed got two pooled
    connections; the first was never checked in (every request leaked one
    slot, then PoolTimeout).  The one it does not keep is given back."""
    from djpoolapp import pool_status
    from tests.conftest import custom_handler

    options = {"pool_size": 2, "max_overflow": 0, "timeout": 5}
    with override_settings(DJPOOL_OPTIONS=options):
        with custom_handler(alias, engine) as handler:
            connection = handler[alias]
            backend = type(connection)
            backend.fail_set_up = backend.retry_set_up = True
            try:
                for _ in range(3):  # a leak per request: the 3rd would time out
                    connection.ensure_connection()
                    with connection.cursor() as cursor:
                        cursor.execute("SELECT 1")
                    assert pool_status()[alias].checked_out <= 1  # (0: released)
                    connection.close()
                    assert pool_status()[alias].checked_out == 0
            finally:
                backend.fail_set_up = backend.retry_set_up = False
