"""What djpoolapp changes in Django's database backends, and how it is undone.

For the backend class of every pooled alias (and the classes it inherits
from, so PostGIS, GIS MySQL and a project's own subclass are covered):

- ``Database``, the DB-API module Django calls (the module global that MySQL
  and SQLite use, and the class attribute PostgreSQL uses as
  ``self.Database``), becomes a :class:`PooledDatabaseModule`: its
  ``connect()`` checks a connection out of the pool of the alias being
  opened; every other attribute, notably the exception classes Django maps,
  is the driver's own object.
- ``get_new_connection()`` records which alias is connecting, so that
  ``connect()`` knows whose pool and options to use.  Django's own code runs
  unchanged around the checkout.
- ``_close()`` marks the connection for invalidation when Django saw an error
  on it or closes it inside ``atomic()``.
- ``init_connection_state()`` is skipped for a pooled mysqlclient connection
  that Django already set up and that ran no session-changing statement
  since (see ``drivers.PooledMySQLConnection``).
- ``_nodb_cursor()`` (used only to create, clone and drop test databases)
  first disposes the pools, so that idle pooled connections never block
  ``DROP DATABASE`` or ``CREATE DATABASE ... TEMPLATE``.

:func:`uninstall` restores every attribute exactly.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from contextvars import ContextVar
from types import ModuleType
from typing import Any

from django.db.backends.base.base import BaseDatabaseWrapper

from .drivers import DRIVERS, PooledConnection, driver_for
from .pool import registry

logger = logging.getLogger("djpoolapp")

#: The Django connection wrapper currently inside ``get_new_connection()``.
_opening: ContextVar[Any] = ContextVar("djpoolapp_opening", default=None)

_MISSING = object()
#: (target, attribute, previous value or _MISSING), in the order applied.
_applied: list[tuple[Any, str, Any]] = []
_installed: set[type] = set()


class PooledDatabaseModule:
    """Stands in for a backend's ``Database`` module; only ``connect`` differs."""

    def __init__(self, module: ModuleType) -> None:
        self.djpool_driver_module = module

    def __getattr__(self, name: str) -> Any:
        return getattr(self.djpool_driver_module, name)

    def __repr__(self) -> str:
        return f"<djpoolapp pooled {self.djpool_driver_module.__name__}>"

    def connect(self, *args: Any, **kwargs: Any) -> Any:
        wrapper = _opening.get()
        if wrapper is None:
            return self.djpool_driver_module.connect(*args, **kwargs)
        return registry.connect(wrapper, self.djpool_driver_module, args, kwargs)


@functools.cache
def _module_proxy(module: ModuleType) -> PooledDatabaseModule:
    return PooledDatabaseModule(module)


def _is_driver_module(value: Any) -> bool:
    return isinstance(value, ModuleType) and value.__name__ in DRIVERS


def _set(target: Any, name: str, value: Any) -> None:
    _applied.append((target, name, target.__dict__.get(name, _MISSING)))
    setattr(target, name, value)


# -- the wrapped DatabaseWrapper methods ----------------------------------
def _wrap_get_new_connection(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def get_new_connection(self: Any, conn_params: dict[str, Any]) -> Any:
        token = _opening.set(self)
        try:
            return original(self, conn_params)
        finally:
            _opening.reset(token)

    get_new_connection._djpool_patched = True  # type: ignore[attr-defined]
    return get_new_connection


def _wrap_close(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def _close(self: Any) -> Any:
        connection = self.connection
        if isinstance(connection, PooledConnection) and (
            self.errors_occurred or self.in_atomic_block
        ):
            # Django saw an error it did not clear with a successful
            # is_usable(), or the connection is closed mid-transaction while
            # Django keeps a reference to it: never hand it out again.
            connection._djpool_discard = True
        return original(self)

    _close._djpool_patched = True  # type: ignore[attr-defined]
    return _close


def _wrap_init_connection_state(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def init_connection_state(self: Any) -> Any:
        connection = self.connection
        if getattr(connection, "_djpool_session_ready", None) is True:
            # A pooled connection whose driver watches session-changing
            # statements (mysqlclient): Django already set this session up
            # for this alias and nothing has changed it since.
            return None
        result = original(self)
        if getattr(connection, "_djpool_session_ready", None) is False:
            connection._djpool_session_ready = True
        return result

    init_connection_state._djpool_patched = True  # type: ignore[attr-defined]
    return init_connection_state


def _wrap_create_cursor(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def create_cursor(self: Any, *args: Any, **kwargs: Any) -> Any:
        cursor = original(self, *args, **kwargs)
        connection = self.connection
        if isinstance(connection, PooledConnection):
            # Closed at checkin if still open: a cursor must not outlive
            # the checkout (see AliasPool.checkin).
            connection._djpool_track_cursor(cursor)
        return cursor

    create_cursor._djpool_patched = True  # type: ignore[attr-defined]
    return create_cursor


def _wrap_nodb_cursor(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def _nodb_cursor(self: Any) -> Any:
        registry.dispose()
        return original(self)

    _nodb_cursor._djpool_patched = True  # type: ignore[attr-defined]
    return _nodb_cursor


_WRAPPERS = {
    "get_new_connection": _wrap_get_new_connection,
    "_close": _wrap_close,
    "init_connection_state": _wrap_init_connection_state,
    "create_cursor": _wrap_create_cursor,
    "_nodb_cursor": _wrap_nodb_cursor,
}


def install(wrapper_class: type[BaseDatabaseWrapper]) -> None:
    """Patch one backend's ``DatabaseWrapper`` class (idempotent)."""
    if wrapper_class in _installed:
        return
    for klass in wrapper_class.__mro__:
        if klass in (BaseDatabaseWrapper, object):
            break
        module = sys.modules.get(klass.__module__)
        if module is not None and _is_driver_module(module.__dict__.get("Database")):
            _set(module, "Database", _module_proxy(module.__dict__["Database"]))
        if _is_driver_module(klass.__dict__.get("Database")):
            _set(klass, "Database", _module_proxy(klass.__dict__["Database"]))
    driver = driver_for(getattr(wrapper_class, "Database", None))
    for name, wrap in _WRAPPERS.items():
        if name == "init_connection_state" and not (
            driver and driver.tracks_session_statements
        ):
            continue  # only a driver that watches SET statements can skip it
        current = getattr(wrapper_class, name)
        if getattr(current, "_djpool_patched", False):
            continue  # inherited from a class already patched
        _set(wrapper_class, name, wrap(current))
    _installed.add(wrapper_class)
    logger.debug("Patched %s.%s", wrapper_class.__module__, wrapper_class.__qualname__)


def uninstall() -> None:
    """Undo every patch, newest first, and dispose all pools."""
    while _applied:
        target, name, previous = _applied.pop()
        if previous is _MISSING:
            delattr(target, name)
        else:
            setattr(target, name, previous)
    _installed.clear()
    registry.dispose()


def install_for_databases() -> list[str]:
    """Patch the backend of every alias that may be pooled; return the aliases."""
    from .pool import pooled_backends

    backends = pooled_backends()
    for wrapper_class in backends.values():
        install(wrapper_class)
    return list(backends)


def is_installed() -> bool:
    return bool(_installed)
