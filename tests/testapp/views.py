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
