"""Views the servers under test answer: sync ones for WSGI, async for ASGI.

Every database view answers with the process id and the server session that
served it, so tests can tell whose connection was used.
"""

from __future__ import annotations

import os

from asgiref.sync import sync_to_async
from django.db import connections
from django.http import HttpRequest, HttpResponse, JsonResponse

from tests.testapp.models import Item

SESSION_SQL = {
    "postgresql": "SELECT pg_backend_pid()",
    "mysql": "SELECT CONNECTION_ID()",
}
SLEEP_SQL = {
    "postgresql": "SELECT pg_sleep(%s)",
    "mysql": "SELECT SLEEP(%s)",
}


def session_id(alias: str) -> int:
    connection = connections[alias]
    with connection.cursor() as cursor:
        cursor.execute(SESSION_SQL[connection.vendor])
        (session,) = cursor.fetchone()
    return int(session)


def ping(request: HttpRequest) -> HttpResponse:
    """No database: tells the test that the server is up."""
    return HttpResponse("pong")


def orm(request: HttpRequest, alias: str) -> JsonResponse:
    """A typical read: a count and the first rows, through the ORM."""
    items = Item.objects.using(alias)
    names = [item.name for item in items.order_by("id")[:10]]
    return JsonResponse(
        {
            "count": items.count(),
            "names": names,
            "pid": os.getpid(),
            "session": session_id(alias),
        }
    )


def session(request: HttpRequest, alias: str) -> JsonResponse:
    return JsonResponse({"pid": os.getpid(), "session": session_id(alias)})


def sleep(request: HttpRequest, alias: str) -> JsonResponse:
    """Hold a connection in a server-side sleep (shows who waits for whom);
    ``?seconds=`` overrides the 0.2 s."""
    connection = connections[alias]
    with connection.cursor() as cursor:
        seconds = float(request.GET.get("seconds", 0.2))
        cursor.execute(SLEEP_SQL[connection.vendor], [seconds])
        cursor.fetchone()
    return JsonResponse({"pid": os.getpid()})


async def async_orm(request: HttpRequest, alias: str) -> JsonResponse:
    """Django's async ORM API, plus sync code run through sync_to_async."""
    items = Item.objects.using(alias)
    count = await items.acount()
    first = await items.order_by("id").afirst()
    same = await items.aget(pk=first.pk) if first is not None else None
    names = [item.name async for item in items.order_by("id")[:10]]
    session = await sync_to_async(session_id)(alias)
    return JsonResponse(
        {
            "count": count,
            "first": same.name if same is not None else None,
            "names": names,
            "pid": os.getpid(),
            "session": session,
        }
    )
