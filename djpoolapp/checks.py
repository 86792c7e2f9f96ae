"""System checks (``djpoolapp.E…`` / ``W…``)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Warning, register

from . import conf


@register("djpoolapp")
def check_options(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """E001: every problem in DJPOOL_OPTIONS at once."""
    raw = getattr(settings, conf.SETTING, None)
    if raw is None:
        return []
    return [
        Error(
            problem,
            hint="See the options table in djpoolapp's README.",
            id="djpoolapp.E001",
        )
        for problem in conf.problems(raw, list(settings.DATABASES))
    ]


@register("djpoolapp")
def check_native_pool(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """W002: aliases on Django's own pool are left alone."""
    return [
        Warning(
            f"Database alias '{alias}' uses Django's own connection pool "
            "(OPTIONS['pool']); djpoolapp leaves it alone.",
            hint="Remove OPTIONS['pool'] to pool it with djpoolapp, or opt the "
            f"alias out with DJPOOL_OPTIONS['aliases']['{alias}'] = False.",
            id="djpoolapp.W002",
        )
        for alias, db in settings.DATABASES.items()
        if (db.get("OPTIONS") or {}).get("pool")
    ]
