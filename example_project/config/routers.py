"""Which database each app's models live on.

``crm`` (the "legacy" customer records) lives on ``legacy``; everything else
-- ``catalog``, auth, admin, sessions, content types -- on ``default``.
``direct`` is the ``default`` database again (unpooled), so nothing is ever
migrated through it.  Relations across the two databases are refused: an
order stores its customer's id, and views join in Python.
"""

from __future__ import annotations

from typing import Any

LEGACY_APPS = {"crm"}


class LegacyRouter:
    def _is_legacy(self, model: Any) -> bool:
        return model._meta.app_label in LEGACY_APPS

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        return "legacy" if self._is_legacy(model) else None

    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        return "legacy" if self._is_legacy(model) else None

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        if self._is_legacy(obj1) != self._is_legacy(obj2):
            return False
        return None

    def allow_migrate(
        self, db: str, app_label: str, model_name: str | None = None, **hints: Any
    ) -> bool:
        if db == "direct":
            return False
        return (app_label in LEGACY_APPS) == (db == "legacy")
