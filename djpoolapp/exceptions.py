"""Errors raised by djpoolapp at run time, and the reasons it gives when it
invalidates a connection.

:class:`PoolTimeout` subclasses Django's own exception so that existing
``except`` clauses (``except django.db.OperationalError``) keep working with
the app installed.  :class:`SessionChanged` and :class:`UnreadResults` are
never raised to the application: they are the logged reason (and the
``connection_checked_in`` signal's ``invalidated``) of a checkin that closed
the connection instead of pooling it.
"""

from django.db import OperationalError


class PoolTimeout(OperationalError):
    """No pooled connection became free within the alias's ``timeout``.

    The message names the alias, ``pool_size``, ``max_overflow`` and the
    timeout, and says what to change.
    """


class SessionChanged(Exception):
    """Reason given when a returned connection is invalidated because the
    application changed its session in ways a rollback does not undo."""

    def __init__(self, changes: frozenset[str]) -> None:
        self.changes = changes
        super().__init__(f"session state changed ({', '.join(sorted(changes))})")


class UnreadResults(Exception):
    """Reason given when a returned connection still has results it cannot
    drop without reading them (an unbuffered cursor's rows)."""
