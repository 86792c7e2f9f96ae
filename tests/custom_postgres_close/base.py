"""A project backend that overrides ``_close()`` (a connection counter, a
wrapper that logs or audits each close): stock Django with
``CONN_MAX_AGE=0`` calls it at the end of every request."""

from django.db.backends.postgresql import base


class DatabaseWrapper(base.DatabaseWrapper):
    closes = 0

    def _close(self):
        type(self).closes += 1
        return super()._close()
