"""Stacked pools: an alias that already has a pool is left alone, and warned of.

An alias on a third-party pooling backend (django-db-connection-pool,
django-postgrespool2, django-db-geventpool) is never patched nor pooled a
second time: the inner pool would otherwise keep every connection the outer
one opened checked out for good.  Real packages where they install:
django-db-connection-pool (setup.cfg extra ``test``) serves queries here;
django-postgrespool2 cannot even be imported with SQLAlchemy 2 (it calls the
removed ``sqlalchemy.pool.manage``), so only its ENGINE name is known.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Iterator

import pytest
from django.conf import settings
from django.core.checks import Error, Warning
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.test import override_settings

from djpoolapp import checks, conf, pool_status
from djpoolapp.checks import OPTIONS_HINT
from djpoolapp.drivers import PooledConnection
from djpoolapp.patch import install_for_databases
from djpoolapp.pool import THIRD_PARTY_POOLS, pooled_backends, registry, stacked_pool
from tests.conftest import ALIASES

DJ_DB_CONN_POOL = {
    "postgresql": "dj_db_conn_pool.backends.postgresql",
    "mysql": "dj_db_conn_pool.backends.mysql",
}
STOCK = {
    "postgresql": "django.db.backends.postgresql",
    "mysql": "django.db.backends.mysql",
}


def require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (setup.cfg extra 'test')")


@pytest.fixture
def stacked(request: pytest.FixtureRequest, monkeypatch) -> Iterator[str]:
    """An alias ``stacked`` on django-db-connection-pool's engine, pointing at
    the same test database as the parametrised alias."""
    require("dj_db_conn_pool")
    alias = request.param
    vendor = connections[alias].vendor
    database = {**connections[alias].settings_dict, "ENGINE": DJ_DB_CONN_POOL[vendor]}
    database["POOL_OPTIONS"] = {"POOL_SIZE": 2, "MAX_OVERFLOW": 0}
    monkeypatch.setitem(settings.DATABASES, "stacked", database)
    try:
        yield "stacked"
    finally:
        from dj_db_conn_pool.core import pool_container

        if "stacked" in connections.settings:
            connections["stacked"].close()
            del connections["stacked"]
        if pool_container.has("stacked"):
            pool_container.pop("stacked").dispose()


@pytest.mark.parametrize(
    ("engine", "package"),
    [
        ("dj_db_conn_pool.backends.postgresql", "django-db-connection-pool"),
        ("dj_db_conn_pool.backends.mysql", "django-db-connection-pool"),
        ("django_postgrespool2", "django-postgrespool2"),
        ("django_db_geventpool.backends.postgresql_psycopg3", "django-db-geventpool"),
        ("django.db.backends.postgresql", None),
        ("django.db.backends.mysql", None),
    ],
)
def test_stacked_pool__known_from_the_engine_alone(engine, package):
    assert stacked_pool({"ENGINE": engine}) == package
    assert set(THIRD_PARTY_POOLS.values()) >= {package} - {None}


def test_stacked_pool__a_projects_subclass_of_a_pooling_backend(monkeypatch):
    require("dj_db_conn_pool")
    from dj_db_conn_pool.backends.postgresql.base import DatabaseWrapper

    module = types.ModuleType("project_db.backend.base")
    module.DatabaseWrapper = type("DatabaseWrapper", (DatabaseWrapper,), {})  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    assert stacked_pool({"ENGINE": "project_db.backend"}) == "django-db-connection-pool"


@pytest.mark.parametrize("stacked", ALIASES, indirect=True)
def test_third_party_pool__left_alone_and_never_pooled_twice(
    stacked, server_sessions, django_db_setup, django_db_blocker
):
    """Before: djpoolapp patched dj_db_conn_pool's backend and its pool kept
    djpoolapp's connections checked out for good (checked_out 4, idle 0)."""
    from dj_db_conn_pool.backends.postgresql.base import DatabaseWrapper as PgWrapper

    assert stacked not in pooled_backends()
    install_for_databases()  # what setting_changed does: still not patched
    assert "_djpool_patched" not in vars(type(connections[stacked]).get_new_connection)
    assert "get_new_connection" not in vars(PgWrapper) or not getattr(
        PgWrapper.get_new_connection, "_djpool_patched", False
    )
    # Outside pytest-django's test case, which refuses aliases created later.
    with django_db_blocker.unblock():
        sessions = set()
        for _ in range(10):  # ten request cycles on the stacked alias
            with connections[stacked].cursor() as cursor:
                cursor.execute("SELECT 1")
            fairy = connections[stacked].connection
            assert not isinstance(fairy.driver_connection, PooledConnection)
            sessions.add(id(fairy.driver_connection))
            connections[stacked].close()
        assert len(sessions) == 1  # reused by django-db-connection-pool itself
        assert registry.pools(stacked) == []
        assert stacked not in pool_status()
        # One session, idle in django-db-connection-pool's pool; none of djpoolapp's.
        assert server_sessions(stacked) == 1


@pytest.mark.parametrize("stacked", ALIASES, indirect=True)
def test_w005__third_party_pooling_engine(stacked):
    vendor = settings.DATABASES[stacked]["ENGINE"].rsplit(".", 1)[1]
    engine = DJ_DB_CONN_POOL[vendor]
    assert checks.check_stacked_pools() == [
        Warning(
            f"Database alias 'stacked' uses ENGINE '{engine}', a connection pool "
            "of its own (django-db-connection-pool); djpoolapp leaves it alone "
            "rather than stack a second pool on it.",
            hint="To pool it with djpoolapp, set DATABASES['stacked']['ENGINE'] = "
            f"'{STOCK[vendor]}', move DATABASES['stacked']['POOL_OPTIONS'] to "
            "DJPOOL_OPTIONS['aliases']['stacked'] and uninstall "
            "django-db-connection-pool; to keep it, record the opt-out with "
            "DJPOOL_OPTIONS['aliases']['stacked'] = False.",
            id="djpoolapp.W005",
        )
    ]
    # Its POOL_OPTIONS are in use by its own engine: no W006 for them.
    assert checks.check_leftover_pool_options() == []
    with override_settings(DJPOOL_OPTIONS={"aliases": {"stacked": False}}):
        assert checks.check_stacked_pools() == []  # the opt-out silences it


def test_w005__engine_that_cannot_be_imported(monkeypatch):
    """django-postgrespool2 fails to import with SQLAlchemy 2: djpoolapp never
    imports it (startup would fail on it otherwise) and still warns."""
    database = {**settings.DATABASES["lite"], "ENGINE": "django_postgrespool2"}
    monkeypatch.setitem(settings.DATABASES, "legacy", database)
    assert "legacy" not in pooled_backends()
    assert checks.check_stacked_pools() == [
        Warning(
            "Database alias 'legacy' uses ENGINE 'django_postgrespool2', a "
            "connection pool of its own (django-postgrespool2); djpoolapp leaves "
            "it alone rather than stack a second pool on it.",
            hint="To pool it with djpoolapp, set DATABASES['legacy']['ENGINE'] = "
            "the Django engine it extends and uninstall django-postgrespool2; to "
            "keep it, record the opt-out with "
            "DJPOOL_OPTIONS['aliases']['legacy'] = False.",
            id="djpoolapp.W005",
        )
    ]


def test_w005__django_db_geventpool(monkeypatch):
    require("django_db_geventpool")
    require("gevent")
    engine = "django_db_geventpool.backends.postgresql_psycopg3"
    if settings.DRIVER == "psycopg2":
        engine = "django_db_geventpool.backends.postgresql_psycopg2"
    database = {**settings.DATABASES["lite"], "ENGINE": engine}
    monkeypatch.setitem(settings.DATABASES, "green", database)
    assert "green" not in pooled_backends()
    (message,) = checks.check_stacked_pools()
    assert message.id == "djpoolapp.W005"
    assert "(django-db-geventpool)" in message.msg
    assert "['ENGINE'] = 'django.db.backends.postgresql'" in message.hint


@pytest.mark.parametrize("alias", ALIASES)
def test_w006__leftover_pool_options_on_a_pooled_alias(monkeypatch, alias):
    leftover = {"POOL_SIZE": 10, "MAX_OVERFLOW": 5, "RECYCLE": 300}
    monkeypatch.setitem(settings.DATABASES[alias], "POOL_OPTIONS", leftover)
    assert checks.check_leftover_pool_options() == [
        Warning(
            f"DATABASES['{alias}']['POOL_OPTIONS'] is django-db-connection-pool's "
            "setting; djpoolapp ignores it.",
            hint=f"Move it to DJPOOL_OPTIONS['aliases']['{alias}'] = "
            "{'pool_size': 10, 'max_overflow': 5, 'recycle': 300} (djpoolapp's "
            f"option names are lower-case) and remove DATABASES['{alias}']"
            "['POOL_OPTIONS'].",
            id="djpoolapp.W006",
        )
    ]
    # The translated options are valid as they stand.
    assert conf.option_problems({"pool_size": 10, "max_overflow": 5}, alias) == []


def test_e001__upper_case_option_names_suggest_the_lower_case_one():
    options = {"POOL_SIZE": 10, "aliases": {"lite": {"MAX_OVERFLOW": 0}}}
    with override_settings(DJPOOL_OPTIONS=options):
        assert checks.check_options() == [
            Error(
                "unknown option 'POOL_SIZE' in DJPOOL_OPTIONS; did you mean "
                "'pool_size'?",
                hint=OPTIONS_HINT,
                id="djpoolapp.E001",
            ),
            Error(
                "unknown option 'MAX_OVERFLOW' in DJPOOL_OPTIONS['aliases']['lite']; "
                "did you mean 'max_overflow'?",
                hint=OPTIONS_HINT,
                id="djpoolapp.E001",
            ),
        ]
        with pytest.raises(ImproperlyConfigured, match="did you mean 'pool_size'"):
            conf.get_config()
