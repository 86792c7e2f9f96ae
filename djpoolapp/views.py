"""The pool status page: ``pool_status()`` of every alias, for staff, live.

Use it when a site reports "too many connections" or pool timeouts: it shows
per alias how many connections Django holds, how many wait idle, how far the
pool overflowed, and how often connections were opened, recycled,
invalidated or timed out -- plus the mean time to open a new connection
next to the mean time to check one out, the saving pooling buys.

Requirements (those of any site with a login, not ``django.contrib.admin``):
``django.contrib.auth``, ``SessionMiddleware`` and ``AuthenticationMiddleware``,
and a ``DjangoTemplates`` engine with ``APP_DIRS`` (or the app directories
loader).  Active staff users only; everyone else gets 403, never a redirect:
the app cannot know the project's login URL without the admin, and a
monitoring probe would rather see a plain refusal.

The figures are those of the process that serves the request: pools are per
process, so behind several workers each refresh may come from another one;
the page names the process id.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache

from .pool import registry
from .status import pool_status

#: (key, heading, explanation, numeric): the table, for the template and the JS.
COLUMNS: list[tuple[str, str, str, bool]] = [
    ("alias", "Alias", "Database alias in DATABASES", False),
    ("vendor", "Vendor", "Database vendor", False),
    ("database", "Database", "user@host:port/database of the current pool", False),
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
]

DEFAULT_REFRESH = 2.0
REFRESH_RANGE = (0.5, 60.0)


def staff_only(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Let active staff users through; 403 for everyone else (no redirect)."""

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
            raise PermissionDenied("djpoolapp's pool status is for staff users")
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
    return str(value)


def _snapshot() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "aliases": status_rows(),
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


@never_cache
@staff_only
def status_page(request: HttpRequest) -> HttpResponse:
    """The HTML table, rendered with current figures, then refreshed by JS."""
    snapshot = _snapshot()
    rows = [
        {
            "alias": row["alias"],
            "cells": [
                {"key": key, "text": format_value(key, row.get(key)), "numeric": num}
                for key, _, _, num in COLUMNS
            ],
        }
        for row in snapshot["aliases"]
    ]
    refresh = _refresh_seconds(request)
    context = {
        "columns": [
            {"key": key, "label": label, "help": help_text, "numeric": numeric}
            for key, label, help_text, numeric in COLUMNS
        ],
        "rows": rows,
        "pid": snapshot["pid"],
        "generated_at": snapshot["generated_at"],
        "refresh": f"{refresh:g}",
        "refresh_ms": int(refresh * 1000),
    }
    return render(request, "djpoolapp/status.html", context)


@never_cache
@staff_only
def status_json(request: HttpRequest) -> JsonResponse:
    """The same figures as JSON: ``{"pid", "generated_at", "aliases": [...]}``."""
    return JsonResponse(_snapshot())
