"""Views the request-cycle tests drive through Django's handler."""

from django.db import connections, transaction
from django.http import HttpResponse, JsonResponse

from .models import Item

BACKEND_ID_SQL = {
    "postgresql": "SELECT pg_backend_pid()",
    "mysql": "SELECT CONNECTION_ID()",
    "sqlite": "SELECT 1",
}


def backend_id(request, alias):
    """One query; answers with the server session id that served it."""
    connection = connections[alias]
    with connection.cursor() as cursor:
        cursor.execute(BACKEND_ID_SQL[connection.vendor])
        (session,) = cursor.fetchone()
    return JsonResponse({"session": session})


def create_item(request, alias):
    with transaction.atomic(using=alias):
        item = Item.objects.using(alias).create(name=request.GET.get("name", "x"))
    return JsonResponse({"id": item.pk})


def leave_transaction_open(request, alias):
    """Misbehaving view: starts a transaction by hand and never ends it."""
    connection = connections[alias]
    connection.set_autocommit(False)
    Item.objects.using(alias).create(name="uncommitted")
    return HttpResponse("left open")


def fail_in_transaction(request, alias):
    with transaction.atomic(using=alias):
        Item.objects.using(alias).create(name="rolled back")
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT * FROM table_that_does_not_exist")
    return HttpResponse("unreachable")


def crash_after_update(request, alias):
    """Transparency item 1: half-done work, then a crash before commit()."""
    transaction.set_autocommit(False, using=alias)
    Item.objects.using(alias).filter(name="alice").update(value=50)
    raise RuntimeError("crashed before commit()")


def lock_rows(request, alias):
    """Transparency item 4: leaves SELECT ... FOR UPDATE locks in an open
    transaction at the end of the request."""
    transaction.set_autocommit(False, using=alias)
    list(Item.objects.using(alias).select_for_update().filter(name="locked"))
    return HttpResponse("locked")
