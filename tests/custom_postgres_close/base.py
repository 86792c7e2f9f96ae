"""A project backend that overrides ``_close()`` (a connection counter, a
wrapper that logs or audits each close) and
``close_if_health_check_failed()`` (which Django calls before every
cursor): stock Django with ``CONN_MAX_AGE=0`` calls the first at the end of
every request and the second for every query."""

from django.db.backends.postgresql import base


class DatabaseWrapper(base.DatabaseWrapper):
    closes = 0
    health_checks = 0

    def _close(self):
        type(self).closes += 1
        return super()._close()

    def close_if_health_check_failed(self):
        type(self).health_checks += 1
        return super().close_if_health_check_failed()
