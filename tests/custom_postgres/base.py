"""A project backend that overrides ``get_new_connection`` (in the style of
django-prometheus' connection counter, or a backend fetching an IAM token):
with ``CONN_MAX_AGE=0`` stock Django calls it for every request."""

from django.db.backends.postgresql import base


class DatabaseWrapper(base.DatabaseWrapper):
    new_connections = 0

    #: Set by a test: the set-up fails after the driver connection was made
    #: (a failed round trip of a project's own set-up).
    fail_set_up = False
    #: With fail_set_up: the project's code catches its failure and retries.
    retry_set_up = False

    def get_new_connection(self, conn_params):
        type(self).new_connections += 1
        connection = super().get_new_connection(conn_params)
        if self.fail_set_up:
            if self.retry_set_up:  # the project retries with a new connection
                return super().get_new_connection(conn_params)
            raise self.Database.OperationalError("set-up failed (test)")
        return connection

    def get_connection_params(self):
        # A project's own OPTIONS key, taken before the driver sees OPTIONS
        # (djpoolapp's W008 must not report it).
        params = super().get_connection_params()
        timeout = params.pop("timeout", None)
        if timeout is not None:
            params["options"] = f"-c statement_timeout={int(timeout * 1000)}"
        return params
