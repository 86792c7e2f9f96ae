"""The AppConfig: validate the options and patch the backends, nothing else.

``ready()`` never touches the database: pools open lazily, on the first
connection Django asks for.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from django.apps import AppConfig
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


class DjpoolConfig(AppConfig):
    name = "djpoolapp"
    verbose_name = "Database connection pooling"
    default = True

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
        from .conf import env_disabled, get_config
        from .patch import install_for_databases

        get_config()  # raises ImproperlyConfigured for bad options, at startup
        setting_changed.connect(_on_setting_changed, dispatch_uid="djpoolapp")
        if importlib.util.find_spec("prometheus_client") is not None:
            from . import metrics  # imports prometheus_client: only if installed

            metrics.register()
        if env_disabled():
            logger.info("DJPOOL_DISABLE is set: connection pooling is off")
            return
        aliases = install_for_databases()
        logger.debug("Pooling database aliases: %s", ", ".join(aliases) or "none")
