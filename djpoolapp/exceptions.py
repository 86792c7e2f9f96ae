"""Errors raised by djpoolapp at run time, and the reasons it gives when it
invalidates a connection.

:class:`PoolTimeout` subclasses Django's own exception so that existing
``except`` clauses (``except django.db.OperationalError``) keep working with
the app installed; :class:`SessionValueLost` subclasses Django's
``ProgrammingError``.  :class:`SessionChanged` and :class:`UnreadResults` are
never raised to the application: they are the logged reason (and the
``connection_checked_in`` signal's ``invalidated``) of a checkin that closed
the connection instead of pooling it.
"""

from django.db import OperationalError, ProgrammingError


class PoolTimeout(OperationalError):
    """No pooled connection became free within the alias's ``timeout``.

    The message names the alias, ``pool_size``, ``max_overflow`` and the
    timeout, and says what to change.
    """


class SessionValueLost(ProgrammingError):
    """``pool_mode="transaction"``: a statement reads a value the session kept
    from an earlier statement of the request (``lastval()``, ``currval()``,
    ``LAST_INSERT_ID()``, ``FOUND_ROWS()``, ``ROW_COUNT()``), but the
    connection was released after that statement and another Django
    connection has held it since, or another connection serves this one: the
    value would be another request's.  Raised before the statement runs.
    Read the value with the statement that sets it (``INSERT ... RETURNING``,
    ``cursor.lastrowid``), in the same cursor block, or inside one
    ``atomic()`` with it.  A subclass of Django's ``ProgrammingError``."""


class SessionChanged(Exception):
    """Reason given when a returned connection is invalidated because the
    application changed its session in ways a rollback does not undo."""

    def __init__(self, changes: frozenset[str]) -> None:
        self.changes = changes
        super().__init__(f"session state changed ({', '.join(sorted(changes))})")


class UnreadResults(Exception):
    """Reason given when a returned connection still has results it cannot
    drop without reading them (an unbuffered cursor's rows)."""
