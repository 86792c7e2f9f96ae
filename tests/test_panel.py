"""The django-debug-toolbar panel, rendered for a real request.

django-debug-toolbar's middleware runs around a view that checks out
connections through the pools; the panel's content is then fetched the way
the toolbar's JavaScript does (``render_panel``) and read back: per alias,
each checkout's kind (new, recycled, reused, pinged) and the pool state.
The server's own session count backs the "new" and "reused" figures.  One
test loads the toolbar page in headless Chromium from a live server.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from django.conf import settings
from django.db import connections
from django.http import HttpRequest, HttpResponse
from django.test import override_settings
from django.urls import include, path

from djpoolapp.pool import registry
from tests.conftest import ALIASES
from tests.testapp.models import Item

debug_toolbar = pytest.importorskip("debug_toolbar", reason="djpoolapp[debug-toolbar]")

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def checkouts(request: HttpRequest, alias: str) -> HttpResponse:
    """``?n=`` ORM queries on *alias*, returning the connection between them
    (``?pause=`` seconds before each return) and keeping the last one."""
    count = int(request.GET.get("n", "2"))
    pause = float(request.GET.get("pause", "0"))
    for number in range(count):
        Item.objects.using(alias).count()
        if number < count - 1:
            connections[alias].close()
            time.sleep(pause)
    return HttpResponse("<html><body><p>done</p></body></html>")


def __getattr__(name: str) -> list:
    """``urlpatterns`` of this module (the tests' ROOT_URLCONF), built on
    first use: debug_toolbar's URLs import its models, which need the app
    installed (by override_settings, after collection)."""
    if name != "urlpatterns":
        raise AttributeError(name)
    return [
        path("checkouts/<str:alias>/", checkouts),
        path("__debug__/", include("debug_toolbar.urls")),
    ]


def show_toolbar(request: HttpRequest) -> bool:
    return True


TOOLBAR_SETTINGS = {
    "INSTALLED_APPS": [*settings.INSTALLED_APPS, "debug_toolbar"],
    "MIDDLEWARE": [
        *settings.MIDDLEWARE,
        "debug_toolbar.middleware.DebugToolbarMiddleware",
    ],
    "ROOT_URLCONF": __name__,
    "DEBUG_TOOLBAR_PANELS": ["djpoolapp.panels.PoolPanel"],
    "DEBUG_TOOLBAR_CONFIG": {
        "SHOW_TOOLBAR_CALLBACK": f"{__name__}.show_toolbar",
        "IS_RUNNING_TESTS": False,
        "RENDER_PANELS": False,
    },
}


def render(client, alias: str, query: str = "") -> str:
    """The panel's HTML for one request to the checkouts view, which starts
    with empty pools and no connection held."""
    for connection in connections.all(initialized_only=True):
        connection.close()
    registry.dispose()
    response = client.get(f"/checkouts/{alias}/?{query}")
    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="djDebug"' in page, page  # the toolbar was injected
    request_id = re.search(r'data-request-id="(\w+)"', page).group(1)
    panel = client.get(
        "/__debug__/render_panel/",
        {"request_id": request_id, "panel_id": "PoolPanel"},
    )
    assert panel.status_code == 200, panel.content
    return json.loads(panel.content)["content"]


def section(html: str, alias: str) -> str:
    return html.split(f"Database alias “{alias}”", 1)[1].split("Database alias “", 1)[0]


def kinds(html: str, alias: str) -> list[str]:
    return re.findall(r'<td class="djpool-kind">(\w+)</td>', section(html, alias))


def state(html: str, alias: str, field: str) -> int:
    found = re.search(rf'<td class="djpool-{field}">(\d+)</td>', section(html, alias))
    assert found, html
    return int(found.group(1))


@pytest.mark.parametrize("alias", ALIASES)
def test_panel__new_then_reused_connection(alias, client, server_sessions):
    with override_settings(**TOOLBAR_SETTINGS):
        html = render(client, alias, "n=3")
        assert kinds(html, alias) == ["new", "reused", "reused"]
        # One server session served the three checkouts.
        assert server_sessions(alias) == 1
        # The view still holds its last connection when the toolbar renders.
        assert (state(html, alias, "checked-out"), state(html, alias, "idle")) == (1, 0)
        for other in settings.DATABASES:
            if other not in (alias, "lite"):
                assert kinds(html, other) == []  # no checkout on that alias
        connections[alias].close()


@pytest.mark.parametrize("alias", ALIASES)
def test_panel__pinged_after_idle(alias, client):
    options = {"aliases": {alias: {"ping_after_idle": 0.05}}}
    with override_settings(**TOOLBAR_SETTINGS, DJPOOL_OPTIONS=options):
        html = render(client, alias, "n=2&pause=0.1")
        assert kinds(html, alias) == ["new", "pinged"]
        connections[alias].close()


@pytest.mark.parametrize("alias", ALIASES)
def test_panel__recycled_connection(alias, client):
    options = {"aliases": {alias: {"recycle": 0.05}}}
    with override_settings(**TOOLBAR_SETTINGS, DJPOOL_OPTIONS=options):
        html = render(client, alias, "n=2&pause=0.1")
        assert kinds(html, alias) == ["new", "recycled"]
        connections[alias].close()


def test_panel__nav_subtitle_counts_checkouts(client):
    with override_settings(**TOOLBAR_SETTINGS):
        connections["default"].close()
        response = client.get("/checkouts/default/?n=2")
        page = response.content.decode()
        assert re.search(r"2 checkouts, [\d.]+ ms waited", page), page
        connections["default"].close()


@pytest.mark.postgres
@pytest.mark.slow
def test_panel__renders_in_headless_chromium():
    """The toolbar with the panel rendered into the page (``RENDER_PANELS``),
    loaded by headless Chromium from a live server started with the toolbar's
    middleware: the browser's DOM holds the checkouts and the pool state."""
    import shutil
    import tempfile
    from pathlib import Path

    from django.test.testcases import LiveServerThread

    from tests.browser import Browser
    from tests.test_status_page import chromium_or_skip

    binary, driver = chromium_or_skip()
    toolbar = {**TOOLBAR_SETTINGS["DEBUG_TOOLBAR_CONFIG"], "RENDER_PANELS": True}
    with override_settings(**{**TOOLBAR_SETTINGS, "DEBUG_TOOLBAR_CONFIG": toolbar}):
        for connection in connections.all(initialized_only=True):
            connection.close()
        registry.dispose()
        # A server whose handler loads MIDDLEWARE now (pytest-django's
        # live_server loaded it before the override).
        # No static files: the panel is read from the DOM, not run by JS.
        server = LiveServerThread("127.0.0.1", lambda handler: handler, port=0)
        server.daemon = True
        server.start()
        server.is_ready.wait()
        if server.error:
            raise server.error
        profile = tempfile.mkdtemp(prefix="djpool-chromium-")
        browser = Browser(binary, driver, Path(profile))
        try:
            browser.get(f"http://127.0.0.1:{server.port}/checkouts/default/?n=3")
            # django-debug-toolbar 8 renders into a (declarative) shadow root.
            scope = (
                "var root = document.getElementById('djDebugRoot');"
                "var scope = (root && root.shadowRoot) || document;"
            )
            shown = browser.execute(
                scope + "return Array.from(scope.querySelectorAll("
                "'#PoolPanel td.djpool-kind')).map(function (td) "
                "{ return td.textContent; })"
            )
            subtitle = browser.execute(
                scope + "var a = scope.querySelector('#djdt-PoolPanel');"
                "return a ? a.textContent : '';"
            )
            checked_out = browser.execute(
                scope + "var td = scope.querySelector("
                "'#PoolPanel td.djpool-checked-out');"
                "return td ? td.textContent : document.documentElement.outerHTML;"
            )
        finally:
            browser.quit()
            server.terminate()
            shutil.rmtree(profile, ignore_errors=True)
    assert shown == ["new", "reused", "reused"], checked_out
    assert "3 checkouts" in " ".join(subtitle.split()), subtitle
    assert checked_out == "1"  # held until the server's request_finished
