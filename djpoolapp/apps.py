"""The AppConfig: validate the options and patch the backends, nothing else.

``ready()`` never touches the database: pools open lazily, on the first
connection Django asks for.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from django.apps import AppConfig
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

logger = logging.getLogger("djpoolapp")


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    """Keep ``override_settings`` honest: new options, new pools."""
    from .conf import WATCHED_SETTINGS, get_config
    from .patch import install_for_databases, is_installed
    from .pool import registry

    if setting not in WATCHED_SETTINGS:
        return
    get_config.cache_clear()
    registry.dispose()
    if setting in ("DATABASES", "DJPOOL_OPTIONS") and is_installed():
        try:
            install_for_databases()  # a newly pooled backend may need patching
        except ImproperlyConfigured:
            pass  # raised again, with every problem, when the options are used


def check_deprecated_settings(
    app_configs: Any = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """W007: djorm-ext-pool's settings are still in use; say what to rename.

    A system check, so that ``manage.py check``, ``runserver`` and ``migrate``
    show it without ``python -W always`` (a ``DeprecationWarning`` alone is
    hidden by default).
    """
    from django.conf import settings

    from .conf import LEGACY_IGNORED, LEGACY_PESSIMISTIC, LEGACY_SETTING, SETTING

    legacy = getattr(settings, LEGACY_SETTING, None)
    pessimistic = getattr(settings, LEGACY_PESSIMISTIC, None)
    if legacy is None and pessimistic is None:
        return []
    present = [
        name
        for name, value in ((LEGACY_SETTING, legacy), (LEGACY_PESSIMISTIC, pessimistic))
        if value is not None
    ]
    if getattr(settings, SETTING, None) is not None:
        return [
            checks.Warning(
                f"{' and '.join(present)} (djorm-ext-pool) are ignored: "
                f"{SETTING} is set.",
                hint=f"Remove {' and '.join(present)} from the settings.",
                id="djpoolapp.W007",
            )
        ]
    steps = []
    if legacy is not None:
        steps.append(f"rename {LEGACY_SETTING} to {SETTING}")
    if pessimistic is not None:
        steps.append(
            f"replace {LEGACY_PESSIMISTIC} = {pessimistic!r} with "
            f"{SETTING}['pre_ping'] = {bool(pessimistic)!r}"
        )
    ignored = sorted(set(legacy or {}) & set(LEGACY_IGNORED))
    if ignored:
        steps.append(
            f"remove {', '.join(map(repr, ignored))} (no equivalent in djpoolapp)"
        )
    hint = "; ".join(steps)
    return [
        checks.Warning(
            f"{' and '.join(present)} (djorm-ext-pool) are deprecated; djpoolapp "
            "still reads them.",
            hint=f"{hint[:1].upper()}{hint[1:]}.",
            id="djpoolapp.W007",
        )
    ]


class DjpoolConfig(AppConfig):
    name = "djpoolapp"
    verbose_name = "Database connection pooling"
    default = True

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
        from .conf import env_disabled, get_config
        from .patch import install_for_databases

        checks.register(check_deprecated_settings, "djpoolapp")
        get_config()  # raises ImproperlyConfigured for bad options, at startup
        setting_changed.connect(_on_setting_changed, dispatch_uid="djpoolapp")
        if importlib.util.find_spec("prometheus_client") is not None:
            from . import metrics  # imports prometheus_client: only if installed

            metrics.register()
        if env_disabled():
            logger.info("DJPOOL_DISABLE is set: connection pooling is off")
            return
        aliases = install_for_databases()
        from .pool import refuse_persistent_connections

        refuse_persistent_connections(aliases)
        config = get_config()  # pool_mode: hooks before the first connect
        if any((config.for_alias(a) or {}).get("pool_mode") == "transaction"
               for a in aliases):  # fmt: skip
            from . import txmode

            txmode.install()
        logger.debug("Pooling database aliases: %s", ", ".join(aliases) or "none")
