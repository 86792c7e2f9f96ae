"""A project backend that overrides ``init_connection_state`` (transparency
item 9): each new Django connection must run it."""

from django.db.backends.mysql import base


class DatabaseWrapper(base.DatabaseWrapper):
    def init_connection_state(self):
        super().init_connection_state()
        self.setup_calls = getattr(self, "setup_calls", 0) + 1
