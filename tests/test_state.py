"""What a checkout hands out: a clean connection in the state Django expects."""

from __future__ import annotations

import json
import warnings

import pytest
from django.db import Error as DjangoError
from django.db import ProgrammingError, connections, transaction
from django.db.transaction import TransactionManagementError
from django.db.utils import ConnectionHandler
from django.test import override_settings

import djpoolapp
from djpoolapp.drivers import PooledConnection
from tests.conftest import ALIASES, driver_module
from tests.testapp.models import Item

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def session(request_cycle, alias):
    status, body = request_cycle(f"/session/{alias}/")
    assert status == 200
    return json.loads(body)["session"]


def server_in_transaction(alias) -> bool:
    """Ask the server whether the pooled session has a transaction open."""
    connection = connections[alias]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT now() = statement_timestamp()")
            # now() is the transaction start: equal only for a fresh statement
            # outside a transaction block.
            return not cursor.fetchone()[0]
        cursor.execute(
            "SELECT COUNT(*) FROM information_schema.innodb_trx "
            "WHERE trx_mysql_thread_id = CONNECTION_ID()"
        )
        return cursor.fetchone()[0] > 0


@pytest.mark.parametrize("alias", ALIASES)
def test_checkout__after_a_request_left_a_transaction_open(alias, request_cycle):
    first = session(request_cycle, alias)
    status, _ = request_cycle(f"/leave-open/{alias}/")
    assert status == 200
    assert session(request_cycle, alias) == first  # same pooled connection
    assert not Item.objects.using(alias).filter(name="uncommitted").exists()
    assert connections[alias].get_autocommit() is True
    assert not server_in_transaction(alias)


@pytest.mark.parametrize("alias", ALIASES)
def test_checkout__after_a_request_failed_mid_transaction(alias, request_cycle):
    first = session(request_cycle, alias)
    status, _ = request_cycle(f"/fail/{alias}/")
    assert status == 500
    assert session(request_cycle, alias) == first  # Django found it usable
    assert not Item.objects.using(alias).filter(name="rolled back").exists()
    assert connections[alias].get_autocommit() is True


@pytest.mark.postgres
def test_checkout__time_zone_is_djangos_again(request_cycle):
    connection = connections["default"]
    with connection.cursor() as cursor:
        cursor.execute("SET TIME ZONE 'Asia/Tokyo'")
    connection.close()
    with connection.cursor() as cursor:
        cursor.execute("SHOW TIME ZONE")
        assert cursor.fetchone()[0] == "UTC"


@pytest.mark.parametrize("alias", ALIASES)
def test_session_state__set_local_ends_with_the_transaction(alias):
    connection = connections[alias]
    sql = {
        "postgresql": ("SET LOCAL statement_timeout = 1234", "SHOW statement_timeout"),
        "mysql": (
            "SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SELECT @@session.tx_isolation",
        ),
    }[connection.vendor]
    if connection.vendor == "postgresql":
        with transaction.atomic(using=alias):
            with connection.cursor() as cursor:
                cursor.execute(sql[0])
        with connection.cursor() as cursor:
            cursor.execute(sql[1])
            assert cursor.fetchone()[0] == "0"
    else:
        # Django re-applies its isolation level at every checkout.
        with connection.cursor() as cursor:
            cursor.execute(sql[0])
        connection.close()
        with connection.cursor() as cursor:
            cursor.execute(sql[1])
            assert cursor.fetchone()[0] == "READ-COMMITTED"


@pytest.mark.parametrize("alias", ALIASES)
@override_settings(DJPOOL_OPTIONS={"reset_session": False})
def test_session_state__plain_set_survives_a_checkin_without_reset(alias):
    """Documented: with reset_session=False, session variables set with plain
    SET stay with the connection (as with CONN_MAX_AGE).  The default resets
    them (tests/test_transparency.py)."""
    connection = connections[alias]
    with connection.cursor() as cursor:
        cursor.execute(
            "SET application_name = 'changed'"
            if connection.vendor == "postgresql"
            else "SET @djpool_marker = 42"
        )
    connection.close()
    with connection.cursor() as cursor:
        cursor.execute(
            "SHOW application_name"
            if connection.vendor == "postgresql"
            else "SELECT @djpool_marker"
        )
        value = cursor.fetchone()[0]
    # MySQL: the pool saw the SET (djpoolapp.sql) and did not reuse the session.
    assert value is None if connection.vendor == "mysql" else value == "changed"


@pytest.mark.parametrize("alias", ALIASES)
def test_close__after_an_error_invalidates_the_connection(alias):
    connection = connections[alias]
    connection.ensure_connection()
    raw = connection.connection
    before = djpoolapp.pool_status(alias)[alias].invalidated
    with pytest.raises(ProgrammingError):
        with connection.cursor() as cursor:
            cursor.execute("SELECT * FROM no_such_table_anywhere")
    assert connection.errors_occurred
    connection.close()
    status = djpoolapp.pool_status(alias)[alias]
    assert status.invalidated == before + 1
    assert status.idle == 0
    connection.ensure_connection()
    assert connection.connection is not raw


@pytest.mark.parametrize("alias", ALIASES)
def test_close__inside_atomic_never_returns_it_to_the_pool(alias):
    connection = connections[alias]
    # As without the app: the closed connection (InterfaceError), Django's
    # needs_rollback guard (TransactionManagementError), or mysqlclient
    # failing to close a cursor of the closed connection stops the query.
    errors = (DjangoError, TransactionManagementError, driver_module(alias).Error)
    with pytest.raises(errors):
        with transaction.atomic(using=alias):
            Item.objects.using(alias).create(name="in atomic")
            raw = connection.connection
            connection.close()
            assert djpoolapp.pool_status(alias)[alias].idle == 0
            Item.objects.using(alias).count()  # fails, as without the app
    assert not Item.objects.using(alias).exists()
    assert connection.connection is not raw


@pytest.mark.parametrize("alias", ALIASES)
def test_connect_arguments__changed_name_never_gets_an_old_connection(alias):
    connection = connections[alias]
    vendor = connection.vendor
    current_db = (
        "SELECT current_database()" if vendor == "postgresql" else "SELECT DATABASE()"
    )
    test_name = connection.settings_dict["NAME"]
    other_name = "postgres" if vendor == "postgresql" else "test"
    with connection.cursor() as cursor:
        cursor.execute(current_db)
        assert cursor.fetchone()[0] == test_name
    connection.close()
    new_settings = {
        name: dict(conf, NAME=other_name if name == alias else conf["NAME"])
        for name, conf in connections.settings.items()
    }
    # override_settings(DATABASES) alone does not rebuild django.db.connections;
    # code that honours it builds its own handler, as done here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Overriding setting DATABASES")
        with override_settings(DATABASES=new_settings):
            handler = ConnectionHandler(new_settings)
            with handler[alias].cursor() as cursor:
                cursor.execute(current_db)
                assert cursor.fetchone()[0] == other_name
            assert isinstance(handler[alias].connection, PooledConnection)
            handler[alias].close()
    with connections[alias].cursor() as cursor:
        cursor.execute(current_db)
        assert cursor.fetchone()[0] == test_name


@pytest.mark.parametrize("alias", ALIASES)
def test_connect_arguments__changed_in_place_like_the_test_runner(alias):
    connection = connections[alias]
    vendor = connection.vendor
    current_db = (
        "SELECT current_database()" if vendor == "postgresql" else "SELECT DATABASE()"
    )
    test_name = connection.settings_dict["NAME"]
    connection.ensure_connection()
    connection.close()
    connection.settings_dict["NAME"] = "postgres" if vendor == "postgresql" else "test"
    try:
        with connection.cursor() as cursor:
            cursor.execute(current_db)
            assert cursor.fetchone()[0] == connection.settings_dict["NAME"]
        # the test database's pool was retired: nothing idle left connected to it
        assert all(
            pool.connect_kwargs.get("dbname", pool.connect_kwargs.get("database"))
            != test_name
            for pool in djpoolapp.status.registry.pools(alias)
        )
    finally:
        connection.close()
        connection.settings_dict["NAME"] = test_name
    assert isinstance(connection.connection, (type(None), PooledConnection))


def mysql_questions(connection) -> int:
    """Statements this MySQL session has received (the SHOW included)."""
    with connection.cursor() as cursor:
        cursor.execute("SHOW SESSION STATUS LIKE 'Questions'")
        return int(cursor.fetchone()[1])


@pytest.mark.mysql
def test_mysql_checkin_checkout__sends_no_statement_when_nothing_changed():
    connection = connections["mysql"]
    connection.ensure_connection()
    before = mysql_questions(connection)
    connection.close()
    connection.ensure_connection()  # Django's connect(): autocommit, SETs, ...
    assert mysql_questions(connection) - before == 1  # only the SHOW itself


@pytest.mark.mysql
def test_mysql_checkin__rolls_back_an_explicit_start_transaction():
    connection = connections["mysql"]
    with connection.cursor() as cursor:
        cursor.execute("START TRANSACTION")
        cursor.execute(
            "INSERT INTO testapp_item (name, value, created) VALUES ('raw', 1, NOW())"
        )
    assert connection.get_autocommit()  # Django's flag: it did not see it
    connection.close()
    assert not server_in_transaction("mysql")
    assert not Item.objects.using("mysql").filter(name="raw").exists()


@pytest.mark.mysql
def test_mysql_checkin__discards_a_connection_that_locked_tables():
    connection = connections["mysql"]
    before = djpoolapp.pool_status("mysql")["mysql"].invalidated
    with connection.cursor() as cursor:
        cursor.execute("LOCK TABLES testapp_item READ")
    connection.close()
    assert djpoolapp.pool_status("mysql")["mysql"].invalidated == before + 1
    assert Item.objects.using("mysql").count() == 0  # no lock left behind
