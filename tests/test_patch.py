"""What is patched in Django's backends, and that it can be undone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import DatabaseError, OperationalError, ProgrammingError, connections
from django.db.backends.mysql import base as mysql_base
from django.db.backends.postgresql import base as postgresql_base

from djpoolapp import patch
from djpoolapp.drivers import PooledConnection
from tests.conftest import ALIASES, driver_module

ROOT = Path(__file__).resolve().parent.parent
EXCEPTIONS = [
    "Error",
    "InterfaceError",
    "DatabaseError",
    "DataError",
    "OperationalError",
    "IntegrityError",
    "InternalError",
    "ProgrammingError",
    "NotSupportedError",
]


@pytest.mark.parametrize("alias", ALIASES)
def test_database_module__exceptions_are_the_drivers_own(alias):
    wrapper_class = type(connections[alias])
    module = driver_module(alias)
    assert isinstance(wrapper_class.Database, patch.PooledDatabaseModule)
    for name in EXCEPTIONS:
        assert getattr(wrapper_class.Database, name) is getattr(module, name)


def test_database_module__patched_where_django_calls_connect():
    # PostgreSQL calls self.Database.connect(); MySQL the module global.
    assert isinstance(
        postgresql_base.DatabaseWrapper.Database, patch.PooledDatabaseModule
    )
    assert isinstance(mysql_base.Database, patch.PooledDatabaseModule)


@pytest.mark.django_db(transaction=True, databases="__all__")
@pytest.mark.parametrize("alias", ALIASES)
def test_errors__django_wraps_them_exactly_as_without_the_app(alias):
    connection = connections[alias]
    with pytest.raises(ProgrammingError) as raised:
        with connection.cursor() as cursor:
            cursor.execute("SELECT * FROM no_such_table_anywhere")
    assert isinstance(raised.value.__cause__, driver_module(alias).Error)
    assert isinstance(connection.connection, PooledConnection)
    assert connection.vendor in ("postgresql", "mysql")
    connection.close()


@pytest.mark.django_db(transaction=True, databases="__all__")
@pytest.mark.parametrize("alias", ALIASES)
def test_connection__is_a_real_driver_connection(alias):
    connection = connections[alias]
    connection.ensure_connection()
    raw = connection.connection
    module = driver_module(alias)
    if module.__name__ == "psycopg":
        assert isinstance(raw, module.Connection)
        assert raw.info.server_version > 0  # psycopg's own .info
        raw.autocommit = False  # attribute writes reach the driver
        assert raw.autocommit is False
        raw.autocommit = True
    elif module.__name__ == "psycopg2":
        assert isinstance(raw, module.extensions.connection)
        assert raw.server_version > 0
    else:
        from MySQLdb.connections import Connection

        assert isinstance(raw, Connection)
        assert raw.get_server_info()
        raw.ping()
    assert connection.get_database_version() > (0,)
    connection.close()


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_uninstall__restores_stock_django(unpatched):
    assert postgresql_base.DatabaseWrapper.Database is driver_module("default")
    assert not isinstance(mysql_base.Database, patch.PooledDatabaseModule)
    assert "get_new_connection" not in vars(mysql_base.DatabaseWrapper) or not getattr(
        mysql_base.DatabaseWrapper.get_new_connection, "_djpool_patched", False
    )
    for alias in ("default", "mysql"):
        if alias in connections.settings:
            connections[alias].ensure_connection()
            assert not isinstance(connections[alias].connection, PooledConnection)
            connections[alias].close()


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


PROBE = """
import django
django.setup()
from django.db import connections
from djpoolapp.drivers import PooledConnection
connection = connections["default"]
connection.ensure_connection()
print(type(connection.Database).__name__, isinstance(connection.connection, PooledConnection))
connection.close()
"""


@pytest.mark.postgres
def test_env_disable__stock_django_without_a_settings_change():
    assert run_python(PROBE).stdout.split() == ["PooledDatabaseModule", "True"]
    result = run_python(PROBE, DJPOOL_DISABLE="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["module", "False"]


@pytest.mark.postgres
def test_removing_the_app__restores_stock_behaviour():
    code = PROBE.replace(
        "import django\n",
        "import django\nfrom django.conf import settings\n"
        "import tests.settings as s\n"
        "s.INSTALLED_APPS.remove('djpoolapp')\n",
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["module", "False"]


def test_bad_options__fail_at_startup_naming_key_and_alias():
    code = (
        "import tests.settings as s\n"
        "s.DJPOOL_OPTIONS = {'aliases': {'default': {'pool_sise': 3}}}\n"
        "import django\ndjango.setup()\n"
    )
    result = run_python(code)
    assert result.returncode != 0
    assert (
        "django.core.exceptions.ImproperlyConfigured: unknown option 'pool_sise' in "
        "DJPOOL_OPTIONS['aliases']['default']; did you mean 'pool_size'?"
    ) in result.stderr


def test_exceptions__pool_timeout_is_a_django_operational_error():
    from djpoolapp import PoolTimeout

    assert issubclass(PoolTimeout, OperationalError)
    assert issubclass(PoolTimeout, DatabaseError)
