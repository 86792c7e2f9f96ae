"""A project backend that overrides ``init_connection_state`` (transparency
item 9): each new Django connection must run it."""

from django.db.backends.mysql import base


class DatabaseWrapper(base.DatabaseWrapper):
    def init_connection_state(self):
        super().init_connection_state()
        self.setup_calls = getattr(self, "setup_calls", 0) + 1

    #: Set by a test: the set-up fails after the driver connection was made
    #: (a failed round trip of a project's own set-up).
    fail_set_up = False
    #: With fail_set_up: the project's code catches its failure and retries.
    retry_set_up = False

    def get_new_connection(self, conn_params):
        connection = super().get_new_connection(conn_params)
        if self.fail_set_up:
            if self.retry_set_up:  # the project retries with a new connection
                return super().get_new_connection(conn_params)
            raise self.Database.OperationalError(2013, "set-up failed (test)")
        return connection
