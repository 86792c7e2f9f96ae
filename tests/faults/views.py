"""Views that misbehave the way real ones do, for the fault suite."""

from __future__ import annotations

import collections
from contextlib import nullcontext

from django.db import connections, transaction
from django.http import HttpResponse, JsonResponse

from tests.testapp.models import Item

from .servers import SESSION_ID_SQL, Admin, session_id

#: Cursors and iterators that views "forget": kept alive past the request
#: (a cache, a reference cycle, a generator parked in a closure), released
#: later from whichever thread appends the 65th.
ABANDONED: collections.deque = collections.deque(maxlen=64)

#: Session ids killed by ``killed_mid_request``, newest last.
KILLED: list[int] = []


def killed_mid_request(request, alias):
    """Its own server session is killed from another session between two
    queries (inside ``atomic()`` with ``?atomic=1``); the second query fails."""
    atomic = request.GET.get("atomic") == "1"
    with transaction.atomic(using=alias) if atomic else nullcontext():
        if atomic:
            Item.objects.using(alias).create(name="killed")
        session = session_id(alias)
        KILLED.append(session)
        admin = Admin(alias)
        try:
            admin.kill([session])
        finally:
            admin.close()
        session_id(alias)  # raises: the session is gone
    return HttpResponse("unreachable")


def raise_in_atomic(request, alias):
    """Writes inside ``atomic()`` then raises: the transaction rolls back."""
    with transaction.atomic(using=alias):
        Item.objects.using(alias).create(name="atomic-raise")
        raise RuntimeError("the view failed inside atomic()")


def leave_cursor_open(request, alias):
    """Runs a query on a cursor it never closes, and keeps the cursor."""
    cursor = connections[alias].cursor()
    cursor.execute("SELECT 1")
    ABANDONED.append(cursor)
    return HttpResponse("cursor left open")


def abandon_iterator(request, alias):
    """Reads one row of a chunked iterator (a server-side cursor on
    PostgreSQL), keeps the iterator and never finishes it."""
    iterator = Item.objects.using(alias).iterator(chunk_size=2)
    item = next(iterator, None)
    ABANDONED.append(iterator)
    return JsonResponse({"first": item.pk if item else None})


def marker(request, alias):
    """One statement, ``SELECT <session id>, '<text>'``, so that the server's
    record of the session's last statement is known; answers the session id."""
    text = request.GET.get("text", "marker")
    connection = connections[alias]
    function = SESSION_ID_SQL[connection.vendor].removeprefix("SELECT ")
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {function}, %s", [text])
        session, _ = cursor.fetchone()
    return JsonResponse({"session": session})


WHOAMI_SQL = {
    "postgresql": "SELECT current_user, current_database(), pg_backend_pid()",
    "mysql": "SELECT CURRENT_USER(), DATABASE(), CONNECTION_ID()",
}


def whoami(request, alias):
    """The user, database and session the server sees for this alias."""
    connection = connections[alias]
    with connection.cursor() as cursor:
        cursor.execute(WHOAMI_SQL[connection.vendor])
        user, database, session = cursor.fetchone()
    return JsonResponse(
        {"user": user.split("@")[0], "database": database, "session": session}
    )
