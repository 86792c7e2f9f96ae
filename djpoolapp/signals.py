"""Django signals for hooks on the pool's hot path.

Use them to trace or meter checkouts without patching djpoolapp, e.g.::

    from django.dispatch import receiver
    from djpoolapp.signals import connection_checked_out

    @receiver(connection_checked_out)
    def note_wait(sender, alias, dbapi_connection, wait, **kwargs):
        if wait > 0.1:
            logger.warning("waited %.0f ms for a %s connection", wait * 1000, alias)

They cost one attribute test per checkout and per checkin while nobody
listens (the pool checks ``signal.receivers`` before sending anything).
Receivers run synchronously on the request's thread: keep them short.  An
exception in a receiver is logged by Django (``django.dispatch``) and does not
fail the checkout (``send_robust``).  ``sender`` is
:class:`djpoolapp.pool.AliasPool`.
"""

from __future__ import annotations

from django.dispatch import Signal

#: Sent after Django received a pooled connection.
#: Arguments: ``alias``; ``dbapi_connection`` (the driver connection);
#: ``wait``, the seconds the checkout took (queueing for a free connection,
#: the liveness check and, for a new connection, connecting).
connection_checked_out = Signal()

#: Sent after a connection Django closed went back to the pool, or was
#: closed instead (``invalidated`` is then True: an error, a retired pool or
#: a reset that failed).  Arguments: ``alias``, ``dbapi_connection`` (do not
#: use it for queries any more), ``invalidated``.
connection_checked_in = Signal()
