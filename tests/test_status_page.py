"""The pool status page (djpoolapp.urls): access, content, live refresh."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.test import Client

import djpoolapp
from djpoolapp.pool import registry
from tests.browser import APT_PACKAGES, Browser, find_chromium, wait_until
from tests.conftest import IN_CI

pytestmark = [
    pytest.mark.urls("tests.status_urls"),
    pytest.mark.django_db(transaction=True, databases="__all__"),
]

PAGE, JSON = "/pool/", "/pool/status.json"
SCREENSHOT = Path(__file__).resolve().parent / "tmp" / "status_page.png"


@pytest.fixture
def staff_client(django_user_model) -> Client:
    user = django_user_model.objects.create_user("staff", is_staff=True)
    client = Client()
    client.force_login(user)
    return client


def use(alias: str) -> None:
    """Open (check out) a connection of *alias* and give it back."""
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1")
    connections[alias].close()


def cells(html: str, alias: str) -> dict[str, str]:
    """The server-rendered cells of one alias's row: field -> text."""
    row = re.search(rf'<tr data-alias="{alias}">(.*?)</tr>', html, re.S)
    assert row, f"no row for {alias!r}"
    return dict(re.findall(r'<td data-field="(\w+)"[^>]*>([^<]*)</td>', row.group(1)))


@pytest.mark.parametrize("path", [PAGE, JSON])
def test_status_page__anonymous_gets_403(path):
    response = Client().get(path)
    assert response.status_code == 403
    assert b"checked_out" not in response.content


@pytest.mark.parametrize("path", [PAGE, JSON])
@pytest.mark.parametrize(
    "flags",
    [{"is_staff": False}, {"is_staff": True, "is_active": False}],
    ids=["non-staff", "inactive-staff"],
)
def test_status_page__non_staff_gets_403(path, flags, django_user_model):
    user = django_user_model.objects.create_user("someone", **flags)
    client = Client()
    client.force_login(user)
    response = client.get(path)
    assert response.status_code == 403
    assert b"checked_out" not in response.content


@pytest.mark.postgres
def test_status_page__staff_sees_the_figures_of_every_pooled_alias(staff_client):
    for alias in djpoolapp.pool_status():
        use(alias)
    response = staff_client.get(PAGE)
    assert response.status_code == 200
    assert response["Cache-Control"].startswith("max-age=0")
    html = response.content.decode()
    expected = djpoolapp.pool_status()  # same thread, same figures as the view
    assert expected
    for alias, status in expected.items():
        row = cells(html, alias)
        for field in (
            "pool_size",
            "max_overflow",
            "checked_out",
            "idle",
            "overflow",
            "opened",
            "recycled",
            "invalidated",
            "timeouts",
        ):
            assert row[field] == str(getattr(status, field)), (alias, field)
        assert row["database"] == status.database
        assert float(row["connect_ms"]) > 0  # it connected: a real measurement
    assert 'id="djpool-columns"' in html and "fetch(url" in html
    assert "<link" not in html and "src=" not in html  # no external assets


@pytest.mark.postgres
def test_status_json__same_figures_as_pool_status(staff_client):
    use("default")
    response = staff_client.get(JSON)
    assert response.status_code == 200
    data = response.json()
    assert data["pid"] == os.getpid()
    rows = {row["alias"]: row for row in data["aliases"]}
    assert set(rows) == set(djpoolapp.pool_status())
    default = djpoolapp.pool_status("default")["default"].as_dict()
    assert {key: rows["default"][key] for key in default} == default
    assert rows["default"]["checkouts"] >= 1


@pytest.mark.postgres
def test_status_page__never_shows_a_password(staff_client):
    secret = "s3cret-Pa55word"  # the server trusts 127.0.0.1: any password works
    settings_dict = connections["default"].settings_dict
    original = settings_dict["PASSWORD"]
    connections["default"].close()
    settings_dict["PASSWORD"] = secret
    try:
        use("default")
        (pool,) = registry.pools("default")
        assert pool.connect_kwargs["password"] == secret  # the pool really has it
        page = staff_client.get(PAGE)
        data = staff_client.get(JSON)
        assert page.status_code == data.status_code == 200
        assert cells(page.content.decode(), "default")["database"] == pool.description
        for response in (page, data):
            assert secret not in response.content.decode()
    finally:
        connections["default"].close()
        settings_dict["PASSWORD"] = original
        registry.dispose()


@pytest.mark.postgres
def test_pool_timings__checkout_is_cheaper_than_connect():
    connections["default"].close()
    registry.dispose("default")  # so that exactly one new connection is opened
    opened_before = djpoolapp.pool_status("default")["default"].opened
    for _ in range(50):
        use("default")
    assert djpoolapp.pool_status("default")["default"].opened - opened_before == 1
    timings = registry.stats("default").timings()
    assert timings["checkouts"] >= 50
    assert 0 < timings["checkout_ms"] < timings["connect_ms"]


@pytest.mark.parametrize(
    ("query", "milliseconds"),
    [
        ("", 2000),
        ("?refresh=5", 5000),
        ("?refresh=0.01", 500),
        ("?refresh=9999", 60000),
        ("?refresh=nan", 2000),
        ("?refresh=x", 2000),
    ],
)
def test_status_page__refresh_interval_is_bounded(staff_client, query, milliseconds):
    response = staff_client.get(PAGE + query)
    assert f'data-refresh-ms="{milliseconds}"' in response.content.decode()


def test_status_page__without_auth_middleware_says_what_is_missing(settings):
    settings.MIDDLEWARE = []
    with pytest.raises(ImproperlyConfigured, match="AuthenticationMiddleware"):
        Client().get(PAGE)


# -- end to end, in headless Chromium ------------------------------------------
def chromium_or_skip() -> tuple[str, str]:
    found = find_chromium()
    if found is None:
        reason = (
            "headless Chromium not found: install the Debian packages "
            f"{' '.join(APT_PACKAGES)} (apt-get install -y {' '.join(APT_PACKAGES)})"
        )
        if IN_CI:
            pytest.fail(f"CI=true: {reason}")
        pytest.skip(reason)
    return found


def cell_js(alias: str, field: str) -> str:
    return (
        f'var td = document.querySelector(\'tr[data-alias="{alias}"] '
        f'td[data-field="{field}"]\'); return td ? td.textContent : null;'
    )


@pytest.mark.postgres
@pytest.mark.slow
def test_status_page__figures_refresh_in_headless_chromium(live_server, staff_client):
    binary, driver = chromium_or_skip()
    cookie = staff_client.cookies["sessionid"].value
    connections["default"].close()  # the test thread holds nothing at first
    profile = tempfile.mkdtemp(prefix="djpool-chromium-")
    browser = Browser(binary, driver, Path(profile))
    try:
        browser.get(live_server.url + JSON)  # 403, but sets the cookie's origin
        browser.add_cookie("sessionid", cookie)
        browser.get(live_server.url + PAGE + "?refresh=0.5")
        title = browser.execute("return document.title")
        assert title.startswith("Database"), browser.execute(
            "return document.documentElement.outerHTML"
        )[:800]
        browser.execute("window.djpoolNotReloaded = true;")

        def refreshes() -> int:
            return int(browser.execute("return document.body.dataset.refreshes"))

        wait_until(lambda: refreshes() >= 1, what="the first JS refresh")
        before = int(browser.execute(cell_js("default", "checked_out")))
        connections["default"].ensure_connection()  # one more checked out
        count = refreshes()
        wait_until(
            lambda: (
                refreshes() > count
                and browser.execute(cell_js("default", "checked_out"))
                == str(before + 1)
            ),
            what=f"checked_out of 'default' to become {before + 1} on the page",
        )
        assert browser.execute("return window.djpoolNotReloaded") is True
        assert (
            browser.execute(
                "return document.getElementById('djpool-error').textContent"
            )
            == ""
        )
        shown = browser.execute(
            "return Array.from(document.querySelectorAll('tbody tr'))"
            ".map(function (tr) { return tr.dataset.alias; })"
        )
        assert shown == list(djpoolapp.pool_status())
        assert float(browser.execute(cell_js("default", "connect_ms"))) > 0
        png = browser.screenshot(SCREENSHOT)
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    finally:
        browser.quit()
        connections["default"].close()
        shutil.rmtree(profile, ignore_errors=True)
