"""ORM work through pooled connections, on PostgreSQL and MariaDB."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.db import IntegrityError, connections, transaction

from djpoolapp.drivers import PooledConnection
from tests.conftest import ALIASES
from tests.testapp.models import Item

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def pooled(alias: str) -> bool:
    connections[alias].ensure_connection()
    return isinstance(connections[alias].connection, PooledConnection)


@pytest.mark.parametrize("alias", ALIASES)
def test_crud__through_a_pooled_connection(alias):
    items = Item.objects.using(alias)
    assert pooled(alias)
    item = items.create(name="a", value=1)
    items.filter(pk=item.pk).update(value=2)
    assert items.get(pk=item.pk).value == 2
    items.filter(pk=item.pk).delete()
    assert not items.exists()


@pytest.mark.parametrize("alias", ALIASES)
def test_atomic__nested_savepoint_rolls_back_only_inner(alias):
    items = Item.objects.using(alias)
    with transaction.atomic(using=alias):
        items.create(name="outer")
        with pytest.raises(RuntimeError):
            with transaction.atomic(using=alias):
                items.create(name="inner")
                raise RuntimeError("roll back the savepoint")
        items.create(name="after")
    assert list(items.values_list("name", flat=True)) == ["outer", "after"]


@pytest.mark.parametrize("alias", ALIASES)
def test_atomic__rollback_after_integrity_error_keeps_connection_usable(alias):
    items = Item.objects.using(alias)
    first = items.create(name="first")
    with pytest.raises(IntegrityError):
        with transaction.atomic(using=alias):
            items.create(name="dup", pk=first.pk)
    assert items.count() == 1
    connections[alias].close()
    assert items.count() == 1  # the next checkout works


@pytest.mark.parametrize("alias", ALIASES)
def test_select_for_update__locks_inside_atomic(alias):
    item = Item.objects.using(alias).create(name="locked")
    with transaction.atomic(using=alias):
        locked = Item.objects.using(alias).select_for_update().get(pk=item.pk)
        locked.value = 7
        locked.save(using=alias)
    assert Item.objects.using(alias).get(pk=item.pk).value == 7


@pytest.mark.parametrize("alias", ALIASES)
def test_on_commit__hooks_run_after_commit_only(alias):
    ran = []
    with transaction.atomic(using=alias):
        Item.objects.using(alias).create(name="x")
        transaction.on_commit(lambda: ran.append("committed"), using=alias)
    with pytest.raises(RuntimeError):
        with transaction.atomic(using=alias):
            transaction.on_commit(lambda: ran.append("rolled back"), using=alias)
            raise RuntimeError
    assert ran == ["committed"]


@pytest.mark.postgres
def test_iterator__uses_a_server_side_cursor_on_postgresql():
    Item.objects.bulk_create(Item(name=f"i{n}") for n in range(2500))
    connection = connections["default"]
    seen = 0
    with transaction.atomic():
        for _ in Item.objects.iterator(chunk_size=100):
            seen += 1
            if seen == 1:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT count(*) FROM pg_cursors")
                    assert cursor.fetchone()[0] >= 1  # a named cursor is open
    assert seen == 2500
    # Outside atomic (autocommit): Django uses a WITH HOLD cursor.
    assert sum(1 for _ in Item.objects.iterator(chunk_size=100)) == 2500
    connection.close()
    assert Item.objects.count() == 2500


@pytest.mark.parametrize("alias", ALIASES)
def test_migrate__backwards_and_forwards_through_the_pool(alias):
    call_command("migrate", "testapp", "zero", database=alias, verbosity=0)
    tables = connections[alias].introspection.table_names()
    assert "testapp_item" not in tables
    call_command("migrate", "testapp", database=alias, verbosity=0)
    assert "testapp_item" in connections[alias].introspection.table_names()
    assert pooled(alias)
