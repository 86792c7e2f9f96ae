"""The record of every attribute djpoolapp sets on other packages' objects.

djpoolapp changes other packages' classes and modules only through
:func:`set_hook`, which records the attribute's previous value in the
target's own ``__dict__`` (or that it had none) before setting it:

- patch.py: the backend classes of the pooled aliases and their modules
  (``Database``, the wrapped ``DatabaseWrapper`` methods), Django's
  ``CursorWrapper.close`` and psycopg 3's ``QueuedLibpqWriter.write``;
- txmode.py: ``BaseDatabaseWrapper`` and ``CursorWrapper``, with the first
  ``pool_mode="transaction"`` pool.

:func:`undo_hooks` (``patch.uninstall()``) restores every one exactly, newest
first: an attribute the target did not define itself is deleted again, so
an inherited one shows through as before.  This module imports nothing of
djpoolapp, so that every module may use it.
"""

from __future__ import annotations

from typing import Any

_MISSING = object()
#: (target, attribute, previous value or _MISSING), in the order applied.
_applied: list[tuple[Any, str, Any]] = []


def set_hook(target: Any, name: str, value: Any) -> None:
    """Set attribute *name* of *target* (a class or module of another
    package) to *value*, recorded for :func:`undo_hooks`."""
    _applied.append((target, name, target.__dict__.get(name, _MISSING)))
    setattr(target, name, value)


def undo_hooks() -> None:
    """Restore every attribute :func:`set_hook` set, newest first."""
    while _applied:
        target, name, previous = _applied.pop()
        if previous is _MISSING:
            delattr(target, name)
        else:
            setattr(target, name, previous)
