"""The pool status page (djpoolapp.urls): access, content, live refresh."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.conf.urls.i18n import i18n_patterns
from django.contrib.auth.views import LoginView
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.test import Client
from django.urls import include, path

import djpoolapp
from djpoolapp.pool import registry
from djpoolapp.tagging import host_name
from tests.browser import APT_PACKAGES, Browser, find_chromium, wait_until
from tests.conftest import ALIASES, IN_CI
from tests.harness import free_port

pytestmark = [
    pytest.mark.urls("tests.status_urls"),
    pytest.mark.django_db(transaction=True, databases="__all__"),
]

PAGE, JSON = "/pool/", "/pool/status.json"
ROOT = Path(__file__).resolve().parent.parent
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


def test_status_page__anonymous_html_403_links_to_login(settings):
    settings.LOGIN_URL = "/accounts/login/"
    response = Client().get(PAGE + "?refresh=5")
    assert response.status_code == 403
    assert response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    assert "you are not logged in" in html
    assert (
        '<a id="djpool-login" href="/accounts/login/?next=%2Fpool%2F%3Frefresh%3D5">'
        in html
    )


def test_status_json__errors_are_json(settings, django_user_model):
    settings.LOGIN_URL = "login"  # a URL name (tests.status_urls)
    response = Client().get(JSON)
    assert response.status_code == 403
    assert response["Content-Type"] == "application/json"
    assert response.json() == {
        "error": "djpoolapp's pool status is for staff users: you are not logged in.",
        "login_url": "/accounts/login/?next=%2Fpool%2Fstatus.json",
    }
    client = Client()
    client.force_login(django_user_model.objects.create_user("clerk"))
    refused = client.get(JSON).json()
    assert refused["error"].endswith("your account is not an active staff account.")


class FreshProjectURLConf:
    """A fresh ``startproject`` with the page mounted: no login page at
    Django's default ``LOGIN_URL`` (``/accounts/login/``), no admin."""

    urlpatterns = [path("pool/", include("djpoolapp.urls"))]


class AdminURLConf:
    """The same with the admin's login, named as ``admin.site.urls`` names
    it (``admin:login``; the tests do not install django.contrib.admin)."""

    urlpatterns = [
        path("pool/", include("djpoolapp.urls")),
        path(
            "admin/",
            include(([path("login/", LoginView.as_view(), name="login")], "admin")),
        ),
    ]


@pytest.mark.parametrize("login_url", ["/accounts/login/", "nameless"])
def test_status_page__403_without_a_login_page_says_how_to_log_in(settings, login_url):
    settings.ROOT_URLCONF = FreshProjectURLConf
    settings.LOGIN_URL = login_url  # a path this site lacks, an unknown URL name
    response = Client().get(PAGE)
    assert response.status_code == 403
    html = response.content.decode()
    assert 'id="djpool-login"' not in html  # no link that would 404
    help_text = (
        f"settings.LOGIN_URL (&#x27;{login_url}&#x27;) is not a page of this "
        "site, so there is no login link. Set LOGIN_URL to your login page (with "
        "django.contrib.admin installed and its URLs included: LOGIN_URL = "
        "&#x27;admin:login&#x27;, i.e. /admin/login/), or log in as a staff user "
        "on your login page first and reload this page."
    )
    assert f'<p id="djpool-login-help">{help_text}</p>' in html
    body = Client().get(JSON).json()
    assert body["login_url"] is None
    assert body["login_help"] == help_text.replace("&#x27;", "'")


def test_status_page__403_links_to_the_admin_login_without_a_login_page(settings):
    settings.ROOT_URLCONF = AdminURLConf  # LOGIN_URL: Django's /accounts/login/
    response = Client().get(PAGE + "?refresh=5")
    assert response.status_code == 403
    html = response.content.decode()
    assert (
        '<a id="djpool-login" href="/admin/login/?next=%2Fpool%2F%3Frefresh%3D5">'
        in html
    )
    assert (
        "settings.LOGIN_URL (&#x27;/accounts/login/&#x27;) is not a page of this "
        "site: the link goes to the admin&#x27;s login (/admin/login/) instead."
    ) in html
    body = Client().get(JSON).json()
    assert body["login_url"] == "/admin/login/?next=%2Fpool%2Fstatus.json"
    assert body["login_help"].startswith("settings.LOGIN_URL ('/accounts/login/')")


class I18nURLConf:
    """A login page under ``i18n_patterns`` (``/en/accounts/login/``):
    LocaleMiddleware redirects Django's default ``/accounts/login/`` there."""

    urlpatterns = [
        path("pool/", include("djpoolapp.urls")),
        *i18n_patterns(path("accounts/login/", LoginView.as_view(), name="login")),
    ]


class NoSlashURLConf:
    """A login page at ``/accounts/login/``, which the project's LOGIN_URL
    names without its slash (APPEND_SLASH redirects)."""

    urlpatterns = [
        path("pool/", include("djpoolapp.urls")),
        path("accounts/login/", LoginView.as_view(), name="login"),
    ]


@pytest.mark.parametrize(
    "urlconf, login_url, expected",
    [
        (I18nURLConf, "/accounts/login/", "/accounts/login/"),
        (NoSlashURLConf, "/accounts/login", "/accounts/login"),
        # A path the project set, served outside Django (an auth proxy):
        # trusted, as Django's own redirect_to_login() trusts it.
        (FreshProjectURLConf, "/oauth2/sign_in", "/oauth2/sign_in"),
    ],
    ids=["i18n-patterns", "append-slash", "proxy"],
)
def test_status_page__403_links_a_login_url_django_would_redirect_to(
    settings, urlconf, login_url, expected
):
    """A second review: the first version hid links that work with stock
    Django (a login page under i18n_patterns, a LOGIN_URL without its slash,
    a same-host path an auth proxy serves), saying "not a page of this
    site"."""
    settings.ROOT_URLCONF = urlconf
    settings.LOGIN_URL = login_url
    if urlconf is I18nURLConf:
        settings.MIDDLEWARE = [
            *settings.MIDDLEWARE,
            "django.middleware.locale.LocaleMiddleware",
        ]
    html = Client().get(PAGE).content.decode()
    assert f'<a id="djpool-login" href="{expected}?next=%2Fpool%2F">' in html
    assert "djpool-login-help" not in html


def test_status_page__403_i18n_login_page_needs_locale_middleware(settings):
    """Third review: without LocaleMiddleware nothing redirects Django's
    default ``/accounts/login/`` to the language-prefixed page, so it is not
    linked (it would 404)."""
    settings.ROOT_URLCONF = I18nURLConf
    html = Client().get(PAGE).content.decode()
    assert 'id="djpool-login"' not in html
    assert "djpool-login-help" in html


def test_status_page__403_trusts_a_login_url_on_another_host(settings):
    settings.ROOT_URLCONF = FreshProjectURLConf
    settings.LOGIN_URL = "https://sso.example.com/login"
    html = Client().get(PAGE).content.decode()
    assert (
        '<a id="djpool-login" href="https://sso.example.com/login?next=%2Fpool%2F">'
        in html
    )
    assert "djpool-login-help" not in html


def test_status_page__app_removed_but_urls_kept_tells_the_truth(staff_client, settings):
    """djpoolapp out of INSTALLED_APPS, its URLs still included, DJPOOL_OPTIONS
    left over: no 500 (its template is not found then), and no pools listed."""
    settings.DJPOOL_OPTIONS = {"pool_size": 3}
    settings.INSTALLED_APPS = [
        app for app in settings.INSTALLED_APPS if app != "djpoolapp"
    ]
    page = staff_client.get(PAGE)
    assert page.status_code == 200
    assert "djpoolapp is not in INSTALLED_APPS, so no connection is pooled" in (
        page.content.decode()
    )
    data = staff_client.get(JSON).json()
    assert (data["installed"], data["aliases"], data["servers"]) == (False, [], [])
    assert data["reason"].startswith("djpoolapp is not in INSTALLED_APPS")
    assert djpoolapp.pool_status() == {}


def test_status_page__disabled_says_why(staff_client, monkeypatch):
    from djpoolapp.conf import get_config

    monkeypatch.setenv("DJPOOL_DISABLE", "1")
    get_config.cache_clear()
    for connection in connections.all(initialized_only=True):
        connection.close()
    registry.dispose()  # as in a process started with DJPOOL_DISABLE=1
    try:
        page = staff_client.get(PAGE).content.decode()
        data = staff_client.get(JSON).json()
    finally:
        monkeypatch.delenv("DJPOOL_DISABLE")
        get_config.cache_clear()
    assert data["aliases"] == []
    assert "DJPOOL_DISABLE=1 is set in this process" in data["reason"]
    assert '<p id="djpool-reason" class="error">No database alias is pooled: ' in page
    assert "DJPOOL_DISABLE=1 is set in this process" in page


@pytest.mark.parametrize("alias", ALIASES)
def test_status_json__server_view_names_this_process(staff_client, alias):
    use(alias)
    data = staff_client.get(JSON).json()
    (server,) = [s for s in data["servers"] if s["alias"] == alias]
    assert server["error"] == ""
    mine = [p for p in server["processes"] if p["this_process"]]
    assert len(mine) == 1
    assert (mine[0]["pid"], mine[0]["host"], mine[0]["alias"]) == (
        os.getpid(),
        host_name(),
        alias,
    )
    # One idle pooled session (use() returned it); the view's own query ran
    # on it, so the server saw it active at that moment.
    assert mine[0]["sessions"] == 1
    assert mine[0]["active"] + mine[0]["idle"] == 1


@pytest.mark.postgres
def test_tagging__application_name_on_the_server(server_sessions):
    """The server sees host, pid and alias after the alias's own name."""
    connections["default"].ensure_connection()
    with connections["default"].cursor() as cursor:
        cursor.execute(
            "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()"
        )
        (name,) = cursor.fetchone()
    own = connections["default"].settings_dict["OPTIONS"]["application_name"]
    assert name == f"{own} djpool/{host_name()}/{os.getpid()}/default"
    # Django's connection parameters, and so the pool's key, are untouched.
    (pool,) = registry.pools("default")
    assert pool.connect_kwargs["application_name"] == own


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
            "pool_mode",
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
@pytest.mark.mysql
@pytest.mark.parametrize("mode", ["request", "transaction"])
def test_status_page__pool_mode_of_each_alias(staff_client, settings, mode):
    other = {"request": "transaction", "transaction": "request"}[mode]
    settings.DJPOOL_OPTIONS = {
        "pool_mode": mode,
        "aliases": {"mysql": {"pool_mode": other}},
    }
    use("default")
    use("mysql")
    expected = {"default": mode, "mysql": other}
    html = staff_client.get(PAGE).content.decode()
    assert {alias: cells(html, alias)["pool_mode"] for alias in expected} == expected
    rows = {row["alias"]: row for row in staff_client.get(JSON).json()["aliases"]}
    assert {alias: rows[alias]["pool_mode"] for alias in expected} == expected


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
    stats = registry.stats("default")  # cumulative per process: use deltas
    opened_before = djpoolapp.pool_status("default")["default"].opened
    before = (stats.checkouts, stats.checkout_seconds, stats.connect_seconds)
    for _ in range(50):
        use("default")
    assert djpoolapp.pool_status("default")["default"].opened - opened_before == 1
    checkouts = stats.checkouts - before[0]
    checkout_mean = (stats.checkout_seconds - before[1]) / checkouts
    connect = stats.connect_seconds - before[2]  # this test's one connect
    assert checkouts >= 50
    assert 0 < checkout_mean < connect
    # The page's figures come from the same counters.
    timings = stats.timings()
    assert timings["checkouts"] >= checkouts and timings["checkout_ms"] > 0


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


def chart_y(browser: Browser, series: str) -> list[float]:
    """The y coordinates of one line of the chart (smaller: higher value)."""
    points = browser.execute(
        f"return document.querySelector('#djpool-chart polyline[data-series=\"{series}\"]')"
        ".getAttribute('points');"
    )
    return [float(point.split(",")[1]) for point in points.split()]


def chart_values(browser: Browser, series: str) -> list[int]:
    """The sampled values one line of the chart draws, oldest first."""
    values = browser.execute(
        f"return document.querySelector('#djpool-chart polyline[data-series=\"{series}\"]')"
        ".getAttribute('data-values');"
    )
    return [int(value) for value in values.split()]


def assert_fits_the_window(browser: Browser) -> None:
    """No sideways scrolling; every column of both tables is in view."""
    found = browser.execute(
        "var right = 0; document.querySelectorAll('th, td').forEach(function (c) {"
        "  right = Math.max(right, c.getBoundingClientRect().right); });"
        "return {inner: window.innerWidth, scroll: document.documentElement.scrollWidth,"
        "        right: right};"
    )
    assert found["scroll"] <= found["inner"], found
    assert found["right"] <= found["inner"], found


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
        browser.get(live_server.url + PAGE)  # 403 with a login link
        login = browser.execute(
            "var a = document.getElementById('djpool-login'); return a && a.href;"
        )
        assert login and "next=%2Fpool%2F" in login
        browser.add_cookie("sessionid", cookie)
        browser.set_window_size(1280, 900)
        browser.get(live_server.url + PAGE + "?refresh=0.5")
        title = browser.execute("return document.title")
        assert title.startswith("Database"), browser.execute(
            "return document.documentElement.outerHTML"
        )[:800]
        browser.execute("window.djpoolNotReloaded = true;")

        def refreshes() -> int:
            return int(browser.execute("return document.body.dataset.refreshes"))

        wait_until(lambda: refreshes() >= 1, what="the first JS refresh")
        assert_fits_the_window(browser)
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
        # The chart drew the extra checked-out connection: its line rose.
        values = chart_values(browser, "checked_out")
        assert len(values) >= 3 and len(chart_y(browser, "checked_out")) == len(values)
        assert max(values) >= before + 1 and min(values) < max(values)
        ys = chart_y(browser, "checked_out")
        assert ys[values.index(max(values))] < ys[values.index(min(values))]
        assert (
            browser.execute(
                "return document.getElementById('djpool-error').textContent"
            )
            == ""
        )
        shown = browser.execute(
            "return Array.from(document.querySelectorAll('#djpool-pools tbody tr'))"
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


# -- two gunicorn workers: the server's view shows both -------------------------
WORKERS_SCREENSHOT = Path(__file__).resolve().parent / "tmp" / "status_page_workers.png"


def _get_json(url: str, cookie: str) -> dict:
    request = urllib.request.Request(url, headers={"Cookie": f"sessionid={cookie}"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.postgres
@pytest.mark.slow
def test_status_page__two_gunicorn_workers_in_headless_chromium(staff_client):
    """gunicorn -w 2: whichever worker answers, the page lists both workers'
    sessions from the server's side (``tests/tmp/status_page_workers.png``,
    copied to docs/status_page.png)."""
    binary, driver = chromium_or_skip()
    if importlib.util.find_spec("gunicorn") is None:
        if IN_CI:
            pytest.fail("gunicorn is missing (setup.cfg extra 'test')")
        pytest.skip("gunicorn is missing (setup.cfg extra 'test')")
    cookie = staff_client.cookies["sessionid"].value
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.status_server_settings",
        "DJPOOL_TEST_RUN_ID": str(django_settings.RUN_ID),
    }
    server = subprocess.Popen(
        [
            sys.executable, "-m", "gunicorn", "--workers", "2", "--bind",
            f"127.0.0.1:{port}", "--config", "python:tests.integration.gunicorn_conf",
            "django.core.wsgi:get_wsgi_application()",
        ],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    profile = tempfile.mkdtemp(prefix="djpool-chromium-")
    browser = None
    try:
        workers: set[int] = set()

        def both_workers_seen() -> bool:
            # Concurrent requests, so that both workers serve some (and so
            # open their pools); collect the pids the server reports.
            with ThreadPoolExecutor(4) as pool:
                answers = list(
                    pool.map(lambda _: _get_json(base + JSON, cookie), range(8))
                )
            for data in answers:
                server_view = next(
                    s for s in data["servers"] if s["alias"] == "default"
                )
                workers.update(
                    p["pid"]
                    for p in server_view["processes"]
                    if p["pid"] not in (None, os.getpid())
                    and p["host"] == host_name()
                    and p["sessions"] >= 1
                )
            return len(workers) >= 2

        def up() -> bool:
            try:
                return both_workers_seen()
            except OSError:
                return False

        wait_until(up, 60, "both gunicorn workers to have pooled sessions")
        browser = Browser(binary, driver, Path(profile))
        browser.get(base + JSON)  # 403, but sets the cookie's origin
        browser.add_cookie("sessionid", cookie)
        browser.set_window_size(1280, 1500)
        browser.get(base + PAGE + "?refresh=1")

        def shown_workers() -> set[int]:
            pids = browser.execute(
                "return Array.from(document.querySelectorAll("
                "'#djpool-servers section[data-alias=\"default\"] tbody tr'))"
                ".map(function (tr) { return tr.dataset.pid; });"
            )
            return {int(pid) for pid in pids if pid} & workers

        wait_until(
            lambda: (
                int(browser.execute("return document.body.dataset.refreshes")) >= 8
                and len(shown_workers()) >= 2
            ),
            30,
            "the page to list both workers",
        )
        answering = int(browser.execute(
            "return Number(document.getElementById('djpool-pid').textContent)"
        ))  # fmt: skip
        assert answering in workers  # a worker answered, and it names itself
        assert_fits_the_window(browser)
        png = browser.screenshot(WORKERS_SCREENSHOT)
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    finally:
        if browser is not None:
            browser.quit()
        os.killpg(server.pid, signal.SIGTERM)
        try:
            _, errors = server.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            _, errors = server.communicate()
        shutil.rmtree(profile, ignore_errors=True)
    assert b"Traceback" not in errors, errors.decode(errors="replace")[-3000:]


@pytest.mark.parametrize("alias", ALIASES)
def test_pool_status__waiting_counts_threads_blocked_on_an_exhausted_pool(
    alias, settings
):
    """``waiting`` (the page's red line): threads blocked in a checkout now."""
    import threading

    settings.DJPOOL_OPTIONS = {
        "aliases": {alias: {"pool_size": 1, "max_overflow": 0, "timeout": 20}}
    }
    connections[alias].close()
    connections[alias].ensure_connection()  # the only connection
    done = []

    def checkout() -> None:
        connection = connections[alias]  # this thread's own wrapper
        try:
            connection.ensure_connection()
            done.append(True)
        finally:
            connection.close()

    threads = [threading.Thread(target=checkout) for _ in range(2)]
    try:
        for thread in threads:
            thread.start()
        wait_until(
            lambda: djpoolapp.pool_status(alias)[alias].waiting == 2,
            what="two threads waiting",
        )
    finally:
        connections[alias].close()  # hands the connection to a waiter
        for thread in threads:
            thread.join(30)
    assert done == [True, True]
    assert djpoolapp.pool_status(alias)[alias].waiting == 0
