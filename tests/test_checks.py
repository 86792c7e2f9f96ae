"""System checks: each id fires on the configuration it is about, with the
exact message and hint, and stays silent on a good configuration."""

from __future__ import annotations

import warnings
from io import StringIO

import pytest
from django.conf import settings
from django.core.checks import Error, Warning, run_checks
from django.core.management import call_command
from django.db import connections
from django.test import override_settings

from djpoolapp import checks
from djpoolapp.checks import OPTIONS_HINT
from tests.conftest import ALIASES


def test_all_checks__silent_on_the_test_settings():
    # databases=[]: Django 6.1 runs a tag-selected database check (W004) on
    # every alias when none are named; earlier versions skipped it.
    assert run_checks(tags=["djpoolapp"], databases=[]) == []


def test_e001__every_problem_at_once():
    bad = {"pool_sise": 5, "max_overflow": -1, "aliases": {"nope": {}, "lite": 3}}
    with override_settings(DJPOOL_OPTIONS=bad):
        messages = checks.check_options()
    aliases = ", ".join(map(repr, settings.DATABASES))
    assert messages == [
        Error(
            "unknown option 'pool_sise' in DJPOOL_OPTIONS; did you mean 'pool_size'?",
            hint=OPTIONS_HINT,
            id="djpoolapp.E001",
        ),
        Error(
            "DJPOOL_OPTIONS['max_overflow'] must be an integer >= 0 and <= 262143 "
            "(SQLAlchemy's -1, unlimited overflow, is not accepted: a pool must "
            "bound its connections); got -1",
            hint=OPTIONS_HINT,
            id="djpoolapp.E001",
        ),
        Error(
            "unknown database alias 'nope' in DJPOOL_OPTIONS['aliases'] (the "
            f"aliases in DATABASES are {aliases})",
            hint=OPTIONS_HINT,
            id="djpoolapp.E001",
        ),
        Error(
            "DJPOOL_OPTIONS['aliases']['lite'] must be a dict of options, or False "
            "to opt the alias out; got 3",
            hint=OPTIONS_HINT,
            id="djpoolapp.E001",
        ),
    ]


def test_e001__other_checks_stay_silent_on_bad_options():
    with override_settings(DJPOOL_OPTIONS={"pool_size": 0}):
        messages = run_checks(tags=["djpoolapp"])
    assert [message.id for message in messages] == ["djpoolapp.E001"]


def test_e001__legacy_djorm_setting_checked_under_its_own_name():
    with warnings.catch_warnings():
        # The setting's own rename warning is tested with the configuration.
        warnings.simplefilter("ignore", DeprecationWarning)
        with override_settings(DJORM_POOL_OPTIONS={"pool_size": "5", "echo": True}):
            messages = checks.check_options()
    assert messages == [
        Error(
            "DJORM_POOL_OPTIONS['pool_size'] must be an integer >= 1 and <= 262143, "
            "not str; got '5'",
            hint=OPTIONS_HINT,
            id="djpoolapp.E001",
        )
    ]


def test_e001__silent_on_valid_options():
    options = {"pool_size": 2, "timeout": 5, "aliases": {"lite": {"use_lifo": True}}}
    with override_settings(DJPOOL_OPTIONS=options):
        assert checks.check_options() == []


@pytest.mark.postgres
@pytest.mark.parametrize("age", [60, None])
def test_w001__conn_max_age_on_a_pooled_alias(monkeypatch, age):
    monkeypatch.setitem(settings.DATABASES["default"], "CONN_MAX_AGE", age)
    assert checks.check_conn_max_age() == [
        Warning(
            "Database alias 'default' is pooled by djpoolapp but sets "
            f"CONN_MAX_AGE={age!r}: Django keeps each thread's connection checked "
            "out between requests, so the pool cannot share it with other "
            "threads and every thread holds one connection.",
            hint="Set DATABASES['default']['CONN_MAX_AGE'] = 0 (the pool keeps "
            "connections open for you), or opt the alias out with "
            "DJPOOL_OPTIONS['aliases']['default'] = False.",
            id="djpoolapp.W001",
        )
    ]


@pytest.mark.postgres
def test_w001__silent_when_the_alias_is_opted_out_or_unpooled(monkeypatch):
    monkeypatch.setitem(settings.DATABASES["default"], "CONN_MAX_AGE", 60)
    monkeypatch.setitem(settings.DATABASES["lite"], "CONN_MAX_AGE", 60)  # unpooled
    with override_settings(DJPOOL_OPTIONS={"aliases": {"default": False}}):
        assert checks.check_conn_max_age() == []


def test_w002__native_pool(monkeypatch):
    options = {**settings.DATABASES["default"].get("OPTIONS", {}), "pool": True}
    monkeypatch.setitem(settings.DATABASES["default"], "OPTIONS", options)
    assert checks.check_native_pool() == [
        Warning(
            "Database alias 'default' uses Django's own connection pool "
            "(OPTIONS['pool']); djpoolapp leaves it alone.",
            hint="Remove OPTIONS['pool'] to pool it with djpoolapp, or opt the "
            "alias out with DJPOOL_OPTIONS['aliases']['default'] = False.",
            id="djpoolapp.W002",
        )
    ]
    with override_settings(DJPOOL_OPTIONS={"aliases": {"default": False}}):
        assert checks.check_native_pool() == []  # the opt-out silences it


def test_w003__in_memory_sqlite_named_in_aliases(monkeypatch):
    monkeypatch.setitem(settings.DATABASES["lite"], "NAME", ":memory:")
    with override_settings(DJPOOL_OPTIONS={"aliases": {"lite": {"pool_size": 2}}}):
        messages = checks.check_unpoolable_aliases()
    assert messages == [
        Warning(
            "DJPOOL_OPTIONS['aliases']['lite'] configures database alias 'lite', "
            "but djpoolapp cannot pool it: it is an in-memory SQLite database, "
            "which is never pooled (every connection to it is a separate "
            "database). The alias is used unpooled.",
            hint="Remove the entry, or set DJPOOL_OPTIONS['aliases']['lite'] = "
            "False to record the opt-out.",
            id="djpoolapp.W003",
        )
    ]


def test_w003__engine_with_an_unsupported_driver(monkeypatch):
    monkeypatch.setitem(
        settings.DATABASES, "legacy", {"ENGINE": "django.db.backends.dummy"}
    )
    with override_settings(DJPOOL_OPTIONS={"aliases": {"legacy": {"pool_size": 2}}}):
        messages = checks.check_unpoolable_aliases()
    assert messages == [
        Warning(
            "DJPOOL_OPTIONS['aliases']['legacy'] configures database alias "
            "'legacy', but djpoolapp cannot pool it: its engine "
            "'django.db.backends.dummy' uses a driver djpoolapp does not support "
            "(supported: psycopg, psycopg2, MySQLdb, sqlite3). The alias is used "
            "unpooled.",
            hint="Remove the entry, or set DJPOOL_OPTIONS['aliases']['legacy'] = "
            "False to record the opt-out.",
            id="djpoolapp.W003",
        )
    ]


def test_w003__silent_for_file_sqlite_server_aliases_and_opt_outs(monkeypatch):
    monkeypatch.setitem(
        settings.DATABASES, "legacy", {"ENGINE": "django.db.backends.dummy"}
    )
    aliases = {alias: {"pool_size": 2} for alias in settings.DATABASES}
    aliases["legacy"] = False
    with override_settings(DJPOOL_OPTIONS={"aliases": aliases}):
        assert checks.check_unpoolable_aliases() == []


def server_max_connections(alias: str) -> int:
    sql = {"postgresql": "SHOW max_connections", "mysql": "SELECT @@max_connections"}
    with connections[alias].cursor() as cursor:
        cursor.execute(sql[connections[alias].vendor])
        return int(cursor.fetchone()[0])


@pytest.mark.django_db(databases="__all__")
@pytest.mark.parametrize("alias", ALIASES)
def test_w004__pool_larger_than_max_connections(alias):
    limit = server_max_connections(alias)
    options = {"aliases": {alias: {"pool_size": limit - 1, "max_overflow": 2}}}
    with override_settings(DJPOOL_OPTIONS=options):
        messages = checks.check_max_connections(databases=[alias])
    assert messages == [
        Warning(
            f"Database alias '{alias}' may open pool_size + max_overflow = "
            f"{limit - 1} + 2 = {limit + 1} connections in each process, more "
            f"than the server's max_connections = {limit}.",
            hint="Lower pool_size/max_overflow in DJPOOL_OPTIONS or raise the "
            "server's max_connections; with several worker processes keep "
            "workers x (pool_size + max_overflow) <= max_connections, or put "
            "PgBouncer/ProxySQL in front.",
            id="djpoolapp.W004",
        )
    ]


@pytest.mark.django_db(databases="__all__")
@pytest.mark.parametrize("alias", ALIASES)
def test_w004__silent_when_the_pool_fits(alias):
    limit = server_max_connections(alias)
    options = {"aliases": {alias: {"pool_size": limit - 1, "max_overflow": 1}}}
    with override_settings(DJPOOL_OPTIONS=options):
        assert checks.check_max_connections(databases=[alias]) == []
    assert checks.check_max_connections(databases=[alias]) == []  # the defaults


@pytest.mark.django_db(transaction=True, databases="__all__")
@pytest.mark.postgres
def test_w004__only_when_django_runs_database_checks():
    options = {"aliases": {"default": {"pool_size": 10_000}}}
    with override_settings(DJPOOL_OPTIONS=options):
        plain, with_database = StringIO(), StringIO()
        call_command("check", stdout=plain, stderr=plain)
        call_command(
            "check", "--database", "default", stdout=with_database, stderr=with_database
        )
    assert "djpoolapp.W004" not in plain.getvalue()
    assert (
        "(djpoolapp.W004) Database alias 'default' may open" in with_database.getvalue()
    )


@pytest.mark.django_db(transaction=True, databases="__all__")
@pytest.mark.parametrize("alias", ALIASES)
def test_w004__closes_the_connection_it_opened(alias):
    connections[alias].close()
    with override_settings(DJPOOL_OPTIONS={"aliases": {alias: {"pool_size": 10_000}}}):
        assert len(checks.check_max_connections(databases=[alias])) == 1
    assert connections[alias].connection is None


# -- W008: pool options in DATABASES[alias]["OPTIONS"] -------------------------
@pytest.mark.postgres
def test_w008__pool_options_in_database_options(monkeypatch):
    options = {
        **settings.DATABASES["default"]["OPTIONS"],  # application_name: the driver's
        "pool_size": 5,
        "MAX_OVERFLOW": 2,
        "timeout": 3,  # psycopg has no 'timeout' (libpq's is connect_timeout)
        "isolation_level": None,  # Django's own
    }
    monkeypatch.setitem(settings.DATABASES["default"], "OPTIONS", options)
    assert checks.check_pool_options_in_database_options() == [
        Warning(
            "DATABASES['default']['OPTIONS'] has djpoolapp's pool option(s) "
            "'pool_size', 'MAX_OVERFLOW', 'timeout': OPTIONS go to the database "
            "driver, which refuses arguments it does not know (connecting fails), "
            "and djpoolapp does not read them there.",
            hint="Move them into DJPOOL_OPTIONS['aliases']['default'] "
            "({'pool_size': 5, 'max_overflow': 2, 'timeout': 3}, with any options "
            "it already has) and remove them from "
            "DATABASES['default']['OPTIONS'].",
            id="djpoolapp.W008",
        )
    ]
    messages = run_checks(tags=["djpoolapp"], databases=[])  # registered
    assert [message.id for message in messages] == ["djpoolapp.W008"]


def test_w008__sqlite_timeout_is_sqlite3s_own(monkeypatch):
    monkeypatch.setitem(
        settings.DATABASES["lite"], "OPTIONS", {"timeout": 20, "pool_size": 2}
    )
    with override_settings(DJPOOL_OPTIONS={"aliases": {"lite": {}}}):
        messages = checks.check_pool_options_in_database_options()
    assert [(message.id, message.msg.split(":")[0]) for message in messages] == [
        (
            "djpoolapp.W008",
            "DATABASES['lite']['OPTIONS'] has djpoolapp's pool option(s) 'pool_size'",
        )
    ]


@pytest.mark.postgres
def test_w008__silent_on_a_project_backends_own_connection_params(monkeypatch):
    """A second review: a project backend whose ``get_connection_params()``
    takes a key of OPTIONS for itself (``tests.custom_postgres`` turns
    ``timeout`` into ``statement_timeout``) connects fine; W008 told the
    user to move it into the pool's options, which would have changed the
    pool's checkout timeout instead.  Such a backend is not second-guessed;
    one that inherits Django's still is."""
    monkeypatch.setitem(
        settings.DATABASES["default"], "ENGINE", "tests.custom_postgres"
    )
    monkeypatch.setitem(settings.DATABASES["default"], "OPTIONS", {"timeout": 3})
    assert checks.check_pool_options_in_database_options() == []
    monkeypatch.setitem(
        settings.DATABASES["default"], "ENGINE", "tests.custom_postgres_close"
    )
    messages = checks.check_pool_options_in_database_options()
    assert [message.id for message in messages] == ["djpoolapp.W008"]


@pytest.mark.postgres
def test_w008__silent_on_djangos_keys_and_aliases_djpoolapp_leaves_alone(monkeypatch):
    # Django's own keys on a pooled alias: nothing to report.
    own = {"isolation_level": None, "server_side_binding": False, "pool": False}
    monkeypatch.setitem(settings.DATABASES["default"], "OPTIONS", own)
    assert checks.check_pool_options_in_database_options() == []
    # An alias on Django's own pool (W002 reports it) or opted out: not
    # djpoolapp's options, whatever its OPTIONS hold.
    native = {"pool": {"min_size": 2, "max_size": 4, "timeout": 10}, "pool_size": 5}
    monkeypatch.setitem(settings.DATABASES["default"], "OPTIONS", native)
    assert checks.check_pool_options_in_database_options() == []
    monkeypatch.setitem(settings.DATABASES["default"], "OPTIONS", {"pool_size": 5})
    with override_settings(DJPOOL_OPTIONS={"aliases": {"default": False}}):
        assert checks.check_pool_options_in_database_options() == []
    # An unpooled SQLite alias (not named in aliases).
    monkeypatch.setitem(settings.DATABASES["lite"], "OPTIONS", {"pool_size": 5})
    with override_settings(DJPOOL_OPTIONS={"aliases": {"default": False}}):
        assert checks.check_pool_options_in_database_options() == []


def test_w008__silent_on_bad_djpool_options(monkeypatch):
    monkeypatch.setitem(settings.DATABASES["lite"], "OPTIONS", {"pool_size": 5})
    with override_settings(DJPOOL_OPTIONS={"aliases": {"lite": {}}, "pool_sise": 1}):
        assert checks.check_pool_options_in_database_options() == []  # E001's


@pytest.mark.mysql
def test_w009__reset_session_always_on_a_mysql_alias():
    """A new user's trial: ``reset_session="always"`` on MariaDB reopened a
    connection at every checkin (61 connections for 60 requests; 183 in
    transaction mode), silently.  Warned, per MySQL alias, naming what the
    mode makes it cost; PostgreSQL aliases (reset in place) and "auto" are
    not reported."""
    assert checks.check_reset_always_on_mysql() == []
    always = {"reset_session": "always"}
    with override_settings(DJPOOL_OPTIONS=always):
        messages = checks.check_reset_always_on_mysql()
        assert [(m.id, m.msg.split(":")[0]) for m in messages] == [
            ("djpoolapp.W009", "reset_session='always' on the MySQL alias 'mysql'")
        ]
        assert "every request" in messages[0].msg
        assert "djpoolapp.W009" in [
            m.id for m in run_checks(tags=["djpoolapp"], databases=[])
        ]
    with override_settings(DJPOOL_OPTIONS={**always, "pool_mode": "transaction"}):
        (message,) = checks.check_reset_always_on_mysql()
        assert "every statement group" in message.msg
    with override_settings(
        DJPOOL_OPTIONS={"aliases": {"mysql": {"reset_session": "auto"}}, **always}
    ):
        assert checks.check_reset_always_on_mysql() == []
