"""Views of the ``pool_mode="transaction"`` request-cycle tests
(tests/test_pool_mode.py, benchmarks/capacity.py)."""

from __future__ import annotations

import asyncio
import time

from asgiref.sync import sync_to_async
from django.db import connections, transaction
from django.http import HttpRequest, JsonResponse
from django.urls import path

from tests.testapp.models import Item

SESSION_ID = {
    "postgresql": "SELECT pg_backend_pid()",
    "mysql": "SELECT CONNECTION_ID()",
}
SET_STATE = {
    "postgresql": "SELECT set_config('app.tenant', 'pinned', false)",
    "mysql": "SET @tenant = 'pinned'",
}
READ_STATE = {
    "postgresql": "SELECT current_setting('app.tenant', true)",
    "mysql": "SELECT @tenant",
}


def _one(alias: str, sql: str) -> object:
    with connections[alias].cursor() as cursor:
        cursor.execute(sql)
        row = cursor.fetchone() if cursor.description else None
        return None if row is None else row[0]


def wait(request: HttpRequest, alias: str) -> JsonResponse:
    """Query, wait (an external call's stand-in), query again."""
    vendor = connections[alias].vendor
    first = _one(alias, SESSION_ID[vendor])
    count = Item.objects.using(alias).count()
    time.sleep(float(request.GET.get("sleep", "0.2")))
    second = _one(alias, SESSION_ID[vendor])
    return JsonResponse({"sessions": [first, second], "count": count})


def pin(request: HttpRequest, alias: str) -> JsonResponse:
    """Sets session state (pins), waits, reads it back."""
    vendor = connections[alias].vendor
    _one(alias, SET_STATE[vendor])
    time.sleep(float(request.GET.get("sleep", "0.2")))
    return JsonResponse(
        {
            "value": _one(alias, READ_STATE[vendor]),
            "session": _one(alias, SESSION_ID[vendor]),
        }
    )


def probe(request: HttpRequest, alias: str) -> JsonResponse:
    vendor = connections[alias].vendor
    return JsonResponse(
        {
            "value": _one(alias, READ_STATE[vendor]),
            "session": _one(alias, SESSION_ID[vendor]),
        }
    )


# -- async views (tests/test_pool_mode_async.py) -------------------------------
#: Set by the test inside its event loop: views that pass ``?gate=1`` await it
#: (the stand-in for an external call) instead of sleeping; ``WAITING`` counts
#: the views awaiting it right now (read and written in the loop's thread).
GATE: asyncio.Event | None = None
WAITING = 0
#: One entry per ``?what=atomic`` hop that reached its slow statement
#: (appended from the hops' threads).
SLOW_STARTED: list[int] = []
SLOW = {
    "postgresql": "SELECT pg_sleep(%s)",
    "mysql": "SELECT SLEEP(%s)",
}


async def _external_call(request: HttpRequest) -> None:
    global WAITING
    WAITING += 1
    try:
        if request.GET.get("gate") and GATE is not None:
            await GATE.wait()
        else:
            await asyncio.sleep(float(request.GET.get("sleep", "0.2")))
    finally:
        WAITING -= 1


async def async_wait(request: HttpRequest, alias: str) -> JsonResponse:
    """The async ORM (``acreate``, ``acount``, ``aget``, ``async for``,
    ``aiterator()``), an awaited external call, the async ORM again."""
    vendor = connections[alias].vendor
    items = Item.objects.using(alias)
    created = await items.acreate(name="async")
    count = await items.acount()
    got = await items.aget(pk=created.pk)
    names = [item.name async for item in items.filter(pk=created.pk)]
    chunked = [item.pk async for item in items.filter(pk=created.pk).aiterator()]
    first = await sync_to_async(_one)(alias, SESSION_ID[vendor])
    await _external_call(request)
    if request.GET.get("fail"):
        raise RuntimeError("the view failed after its queries")
    second = await sync_to_async(_one)(alias, SESSION_ID[vendor])
    await items.filter(pk=created.pk).aupdate(value=1)
    return JsonResponse(
        {
            "sessions": [first, second],
            "count": count,
            "rows": [got.name, names, chunked == [created.pk]],
        }
    )


async def async_hold(request: HttpRequest, alias: str) -> JsonResponse:
    """Something holds the connection across the awaited call: ``?what=pin``
    (session state), ``iterator`` (an ``aiterator()`` left open) or, inside
    one ``sync_to_async`` hop, ``atomic`` (a transaction and a slow
    statement: the client may go away while it runs)."""
    vendor = connections[alias].vendor
    what = request.GET["what"]
    if what == "atomic":

        def slow() -> None:
            with transaction.atomic(using=alias):
                Item.objects.using(alias).create(name="atomic")
                SLOW_STARTED.append(1)
                _one(alias, SLOW[vendor] % float(request.GET.get("sleep", "0.5")))

        await sync_to_async(slow)()
    elif what == "pin":
        await sync_to_async(_one)(alias, SET_STATE[vendor])
        await _external_call(request)
    else:
        rows = Item.objects.using(alias).aiterator(chunk_size=1).__aiter__()
        await rows.__anext__()
        await _external_call(request)
        await rows.aclose()
    return JsonResponse(
        {"session": await sync_to_async(_one)(alias, SESSION_ID[vendor])}
    )


urlpatterns = [
    path("pool-mode/async/wait/<str:alias>/", async_wait),
    path("pool-mode/async/hold/<str:alias>/", async_hold),
    path("pool-mode/wait/<str:alias>/", wait),
    path("pool-mode/pin/<str:alias>/", pin),
    path("pool-mode/probe/<str:alias>/", probe),
]
