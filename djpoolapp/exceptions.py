"""Errors raised by djpoolapp at run time.

They subclass Django's own exceptions so that existing ``except`` clauses
(``except django.db.OperationalError``) keep working with the app installed.
"""

from django.db import OperationalError


class PoolTimeout(OperationalError):
    """No pooled connection became free within the alias's ``timeout``.

    The message names the alias, ``pool_size``, ``max_overflow`` and the
    timeout, and says what to change.
    """
