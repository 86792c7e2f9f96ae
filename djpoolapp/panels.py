"""A django-debug-toolbar panel: what the pools did for one request.

Install ``djpoolapp[debug-toolbar]`` (django-debug-toolbar 6.x-8.x) and add
the panel to the toolbar's list::

    DEBUG_TOOLBAR_PANELS = [
        *debug_toolbar.settings.PANELS_DEFAULTS,
        "djpoolapp.panels.PoolPanel",
    ]

Per request it shows, for each alias, every checkout with its wait (ms) and
what the pool handed out: a **new** connection (opened for this checkout), a
**recycled** one (new, replacing one older than ``recycle``), a **reused**
idle one, or one **pinged** first (idle at least ``ping_after_idle`` with
``pre_ping``); the checkins seen during the request; and each pool's state
when the toolbar rendered.

Where the figures come from: :mod:`djpoolapp.signals`
(``connection_checked_out`` / ``connection_checked_in``, only those sent on
the request's thread), each connection's opened and last-returned times,
and :func:`djpoolapp.pool_status`.  "Recycled" is read from the alias's
process-wide ``recycled`` counter, so under a threaded server another
thread's recycle can be attributed to this request's new connection.

Django returns a connection it holds for a whole request (the default
``CONN_MAX_AGE = 0``) at ``request_finished``, after the toolbar rendered:
such a checkin is not in the list, and the pool state shows the
connection still checked out.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from debug_toolbar.panels import Panel
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from .pool import registry
from .signals import connection_checked_in, connection_checked_out
from .status import pool_status

#: What a checkout handed out, in the panel's words.
KINDS = ("new", "recycled", "reused", "pinged")


class PoolPanel(Panel):
    """Checkouts, waits and pool state of one request, per alias."""

    title = _("Connection pools")
    template = "djpoolapp/panel.html"
    is_async = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._thread: int | None = None
        self._checkouts: list[dict[str, Any]] = []
        self._checkins: list[dict[str, Any]] = []
        self._recycled: dict[str, int] = {}
        self._uid = f"djpoolapp-panel-{id(self)}"

    @property
    def nav_subtitle(self) -> str:
        stats = self.get_stats()
        count = len(stats.get("checkouts", ()))
        waited = sum(c["wait_ms"] for c in stats.get("checkouts", ()))
        return ngettext(
            "%(count)d checkout, %(waited).1f ms waited",
            "%(count)d checkouts, %(waited).1f ms waited",
            count,
        ) % {"count": count, "waited": waited}

    # -- instrumentation ---------------------------------------------------
    def enable_instrumentation(self) -> None:
        self._thread = threading.get_ident()
        self._recycled = {
            alias: registry.stats(alias).snapshot()["recycled"]
            for alias in pool_status()
        }
        connection_checked_out.connect(
            self._on_checkout, weak=False, dispatch_uid=self._uid
        )
        connection_checked_in.connect(
            self._on_checkin, weak=False, dispatch_uid=self._uid
        )

    def disable_instrumentation(self) -> None:
        connection_checked_out.disconnect(dispatch_uid=self._uid)
        connection_checked_in.disconnect(dispatch_uid=self._uid)

    def _on_checkout(
        self, sender: Any, alias: str, dbapi_connection: Any, wait: float, **kwargs: Any
    ) -> None:
        if threading.get_ident() != self._thread:
            return  # another request's thread
        started = time.monotonic() - wait
        lease = dbapi_connection._djpool_lease  # djpoolapp.lease.Lease
        opened, returned = lease.created_at, lease.returned_at
        recycled = registry.stats(alias).snapshot()["recycled"]
        if opened == returned:  # never returned yet: opened by this checkout
            kind = "recycled" if recycled > self._recycled.get(alias, 0) else "new"
            idle = None
        else:
            idle = max(0.0, started - returned)
            options = lease.pool.options
            pinged = options["pre_ping"] and idle >= options["ping_after_idle"]
            kind = "pinged" if pinged else "reused"
        self._recycled[alias] = recycled
        self._checkouts.append(
            {
                "alias": alias,
                "wait_ms": wait * 1000,
                "kind": kind,
                "idle_s": idle,
            }
        )

    def _on_checkin(
        self, sender: Any, alias: str, invalidated: bool, **kwargs: Any
    ) -> None:
        if threading.get_ident() != self._thread:
            return
        self._checkins.append({"alias": alias, "invalidated": invalidated})

    # -- results -----------------------------------------------------------
    def generate_stats(self, request: Any, response: Any) -> None:
        aliases: dict[str, dict[str, Any]] = {}
        for status in pool_status().values():
            aliases[status.alias] = {
                "state": status.as_dict(),
                "checkouts": [],
                "checkins": [],
                "wait_ms": 0.0,
                **{kind: 0 for kind in KINDS},
            }
        for checkout in self._checkouts:
            entry = aliases.get(checkout["alias"])
            if entry is None:
                continue
            entry["checkouts"].append(checkout)
            entry["wait_ms"] += checkout["wait_ms"]
            entry[checkout["kind"]] += 1
        for checkin in self._checkins:
            entry = aliases.get(checkin["alias"])
            if entry is not None:
                entry["checkins"].append(checkin)
        self.record_stats(
            {
                "aliases": aliases,
                "checkouts": self._checkouts,
                "checkins": self._checkins,
                "kinds": KINDS,
            }
        )
