"""The pool status page: ``pool_status()`` of every alias, for staff, live.

Use it when a site reports "too many connections" or pool timeouts: it shows
per alias how many connections Django holds, how many wait idle, how far the
pool overflowed, and how often connections were opened, recycled,
invalidated or timed out -- plus the mean time to open a new connection
next to the mean time to check one out, the saving pooling buys.

Requirements (those of any site with a login, not ``django.contrib.admin``):
``django.contrib.auth``, ``SessionMiddleware`` and ``AuthenticationMiddleware``,
and a ``DjangoTemplates`` engine with ``APP_DIRS`` (or the app directories
loader).  Active staff users only; everyone else gets 403, never a redirect
(a monitoring probe would rather see a plain refusal): the HTML page's 403
links to ``settings.LOGIN_URL`` with ``?next=``, or, when this site does not
serve that URL (Django's default ``/accounts/login/`` in a fresh
``startproject``), to the admin's login if its URLs are included, and says
so and how to set ``LOGIN_URL``; ``status.json`` answers its errors in JSON.

The pool figures are those of the process that serves the request: pools
are per process, so behind several workers each refresh may come from
another one; the page names the process id.  Next to them, the page shows
what the database server sees of every process's pool (connections are
tagged by :mod:`djpoolapp.tagging`), so all workers on all hosts are in view
whichever one answers.

With ``djpoolapp`` removed from ``INSTALLED_APPS`` but its URLs still
included, both views say that nothing is pooled instead of failing.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode, urlsplit

from django.apps import apps
from django.conf import global_settings, settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden, JsonResponse
from django.shortcuts import render, resolve_url
from django.urls import NoReverseMatch, Resolver404, get_script_prefix, resolve, reverse
from django.utils import translation
from django.utils.html import format_html
from django.views.decorators.cache import never_cache

from .pool import registry
from .status import nothing_pooled_reason, pool_status, server_sessions
from .tagging import host_name

#: (key, heading, explanation, numeric): the table, for the template and the JS.
COLUMNS: list[tuple[str, str, str, bool]] = [
    ("alias", "Alias", "Database alias in DATABASES", False),
    ("vendor", "Vendor", "Database vendor", False),
    ("database", "Database", "user@host:port/database of the current pool", False),
    (
        "pool_mode",
        "Mode",
        "pool_mode: 'request' holds a connection for the whole request, "
        "'transaction' only while a transaction, cursor or session state needs it",
        False,
    ),
    ("pool_size", "Size", "pool_size: connections kept open", True),
    ("max_overflow", "Max overflow", "Extra connections allowed under load", True),
    ("checked_out", "Checked out", "Connections Django holds now", True),
    ("idle", "Idle", "Open connections waiting in the pool", True),
    ("overflow", "Overflow", "Connections open beyond pool_size now", True),
    ("opened", "Opened", "Server connections opened since start", True),
    ("recycled", "Recycled", "Replaced for being older than recycle", True),
    ("invalidated", "Invalidated", "Discarded after an error or a dead ping", True),
    ("timeouts", "Timeouts", "Checkouts that gave up after timeout", True),
    ("connect_ms", "Connect ms", "Mean time to open a new server connection", True),
    (
        "checkout_ms",
        "Checkout ms",
        "Mean time to get a connection from the pool (pings and new "
        "connections included)",
        True,
    ),
    ("checkouts", "Checkouts", "Connections handed to Django since start", True),
    ("waiting", "Waiting", "Threads waiting for a free connection now", True),
]

#: The server's view of every process: (key, heading, explanation, numeric).
SERVER_COLUMNS: list[tuple[str, str, str, bool]] = [
    ("host", "Host", "Host name of the process (from its connections' tag)", False),
    ("pid", "Process", "Process id; MySQL/MariaDB: other processes by host", False),
    ("alias", "Alias", "Database alias in that process", False),
    ("sessions", "Sessions", "Server sessions its pool has open", True),
    ("active", "Active", "Sessions running a statement now", True),
    ("idle", "Idle", "Sessions idle in the pool (or between statements)", True),
    (
        "idle_in_transaction",
        "Idle in transaction",
        "Sessions holding an open transaction while doing nothing",
        True,
    ),
    (
        "oldest_transaction",
        "Oldest transaction s",
        "Age in seconds of the oldest open transaction",
        True,
    ),
]

_LOCALE_MIDDLEWARE = "django.middleware.locale.LocaleMiddleware"

DEFAULT_REFRESH = 2.0
REFRESH_RANGE = (0.5, 60.0)


def _served_here(url: str) -> bool:
    """Whether *url* is a page of this site's URLconf (or elsewhere: trusted).

    An absolute URL (another host, a single sign-on server) and a path
    outside this site's script prefix cannot be checked, and count as served.
    A path also counts when ``LocaleMiddleware`` would redirect it to a page
    under the active language's prefix (``i18n_patterns``).
    """
    parts = urlsplit(url)
    if parts.scheme or parts.netloc:
        return True
    prefix = get_script_prefix()
    if not parts.path.startswith(prefix):
        return True
    path = "/" + parts.path[len(prefix) :]
    candidates = [path]
    language = translation.get_language()
    if language and _LOCALE_MIDDLEWARE in settings.MIDDLEWARE:
        candidates.append(f"/{language}{path}")
    for candidate in candidates:
        try:
            resolve(candidate)
        except Resolver404:
            continue
        return True
    return False


def _login(request: HttpRequest) -> tuple[str | None, str]:
    """Where to log in, with ``?next=`` this page, and what to say about it.

    ``settings.LOGIN_URL`` (a URL or a URL name) when the project set it or
    this site serves Django's default; otherwise the admin's login
    (``admin:login``) when the admin's URLs are included; otherwise None.  The text is empty when ``LOGIN_URL`` is used,
    else it says why it is not and how to log in.  Django's default
    ``LOGIN_URL``, ``/accounts/login/``, has no view in a fresh
    ``startproject``.
    """
    setting = settings.LOGIN_URL
    try:
        url: str | None = resolve_url(setting)
    except NoReverseMatch:
        url = None  # a URL name this site does not have
    if url is not None and (
        # A path the project set itself is trusted, as Django's own
        # redirect_to_login() trusts it (a page behind a proxy, outside the
        # URLconf); Django's default is checked (a fresh project lacks it).
        setting != global_settings.LOGIN_URL or _served_here(url)
    ):
        note = ""
    else:
        shown = f" ({setting!r})" if isinstance(setting, str) else ""
        note = f"settings.LOGIN_URL{shown} is not a page of this site"
        try:
            url = reverse("admin:login")
        except NoReverseMatch:
            url = None
            note += (
                ", so there is no login link. Set LOGIN_URL to your login page "
                "(with django.contrib.admin installed and its URLs included: "
                "LOGIN_URL = 'admin:login', i.e. /admin/login/), or log in as "
                "a staff user on your login page first and reload this page"
            )
        else:
            note += (
                f": the link goes to the admin's login ({url}) instead. Set "
                "LOGIN_URL to your login page (or to 'admin:login') to link "
                "there without this note"
            )
    if url is None:
        return None, note
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}{urlencode({'next': request.get_full_path()})}", note


def _refuse(request: HttpRequest, as_json: bool) -> HttpResponse:
    """403: JSON for ``status.json``, else a short page with a login link."""
    user = request.user
    signed_in = user.is_authenticated
    reason = (
        "your account is not an active staff account"
        if signed_in
        else "you are not logged in"
    )
    login_url, note = _login(request)
    if as_json:
        body: dict[str, Any] = {
            "error": f"djpoolapp's pool status is for staff users: {reason}.",
            "login_url": login_url,
        }
        if note:
            body["login_help"] = f"{note}."
        return JsonResponse(body, status=403)
    link = (
        format_html(
            '<p><a id="djpool-login" href="{}">Log in as a staff user</a></p>',
            login_url,
        )
        if login_url is not None
        else ""
    )
    help_text = format_html('<p id="djpool-login-help">{}.</p>', note) if note else ""
    return HttpResponseForbidden(
        format_html(
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<meta name="robots" content="noindex">'
            "<title>403 · Database connection pools</title></head>"
            '<body style="font: 15px/1.5 system-ui, sans-serif; margin: 2rem">'
            "<h1>Staff only</h1><p>The pool status page is for staff users: {}.</p>"
            "{}{}</body></html>",
            reason,
            link,
            help_text,
        )
    )


def staff_only(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Let active staff users through; 403 for everyone else (no redirect):
    JSON for ``status.json``, a page with a login link for the HTML view."""
    as_json = view.__name__ == "status_json"

    @functools.wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        user = getattr(request, "user", None)
        if user is None:
            raise ImproperlyConfigured(
                "djpoolapp's status page needs "
                "'django.contrib.sessions.middleware.SessionMiddleware' and "
                "'django.contrib.auth.middleware.AuthenticationMiddleware' in "
                "MIDDLEWARE to tell staff users apart."
            )
        if not (user.is_active and user.is_staff):
            return _refuse(request, as_json)
        return view(request, *args, **kwargs)

    return wrapped


def status_rows() -> list[dict[str, Any]]:
    """One dict per pooled alias: ``PoolStatus.as_dict()`` plus timings.

    Only ``PoolStatus`` fields (which never hold a password) and numbers.
    """
    rows = []
    for alias, status in pool_status().items():
        row = status.as_dict()
        row.update(registry.stats(alias).timings())
        rows.append(row)
    return rows


def format_value(key: str, value: Any) -> str:
    """The text of one cell; the page's JavaScript formats the same way."""
    if value is None or value == "":
        return "\N{EN DASH}"
    if key.endswith("_ms"):
        return f"{value:.2f}"
    if key == "oldest_transaction":
        return f"{value:.1f}"
    return str(value)


def _installed() -> bool:
    return apps.is_installed("djpoolapp")


def _snapshot() -> dict[str, Any]:
    """Everything both views show: this process's pools and, per alias, the
    server's view of every process (``servers``)."""
    installed = _installed()
    rows = status_rows() if installed else []
    servers = [server_sessions(row["alias"]).as_dict() for row in rows]
    return {
        "installed": installed,
        "pid": os.getpid(),
        "host": host_name(),
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "aliases": rows,
        "reason": "" if rows else nothing_pooled_reason(),
        "servers": servers,
    }


def _refresh_seconds(request: HttpRequest) -> float:
    """``?refresh=SECONDS`` within REFRESH_RANGE, else the default."""
    try:
        seconds = float(request.GET.get("refresh", DEFAULT_REFRESH))
    except ValueError:
        return DEFAULT_REFRESH
    if seconds != seconds:  # NaN
        return DEFAULT_REFRESH
    low, high = REFRESH_RANGE
    return min(max(seconds, low), high)


def _not_installed_page(snapshot: dict[str, Any]) -> HttpResponse:
    """The page when djpoolapp's URLs are included but the app is not
    installed: its templates are not found then, so no template is used."""
    return HttpResponse(
        format_html(
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="robots" content="noindex">'
            "<title>Database connection pools · djpoolapp</title></head>"
            '<body style="font: 15px/1.5 system-ui, sans-serif; margin: 2rem">'
            "<h1>Database connection pools</h1>"
            '<p id="djpool-reason">No connection is pooled: {}.</p>'
            "<p>Process {} on {}.</p></body></html>",
            snapshot["reason"],
            snapshot["pid"],
            snapshot["host"],
        )
    )


@never_cache
@staff_only
def status_page(request: HttpRequest) -> HttpResponse:
    """The HTML page, rendered with current figures, then refreshed by JS."""
    snapshot = _snapshot()
    if not snapshot["installed"]:
        return _not_installed_page(snapshot)
    rows = [
        {
            "alias": row["alias"],
            "cells": [
                {
                    "key": key,
                    "label": label,
                    "text": format_value(key, row.get(key)),
                    "numeric": num,
                }
                for key, label, _, num in COLUMNS
            ],
        }
        for row in snapshot["aliases"]
    ]
    refresh = _refresh_seconds(request)
    context = {
        "columns": _columns(COLUMNS),
        "server_columns": _columns(SERVER_COLUMNS),
        "rows": rows,
        "servers": snapshot["servers"],
        "pid": snapshot["pid"],
        "host": snapshot["host"],
        "reason": snapshot["reason"],
        "generated_at": snapshot["generated_at"],
        "refresh": f"{refresh:g}",
        "refresh_ms": int(refresh * 1000),
        "snapshot": snapshot,
    }
    return render(request, "djpoolapp/status.html", context)


def _columns(columns: list[tuple[str, str, str, bool]]) -> list[dict[str, Any]]:
    return [
        {"key": key, "label": label, "help": help_text, "numeric": numeric}
        for key, label, help_text, numeric in columns
    ]


@never_cache
@staff_only
def status_json(request: HttpRequest) -> JsonResponse:
    """The same figures as JSON: ``{"installed", "pid", "host",
    "generated_at", "aliases": [...], "reason", "servers": [...]}``;
    ``reason`` says why ``aliases`` is empty when it is."""
    return JsonResponse(_snapshot())
