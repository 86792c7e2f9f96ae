"""Settings of the nested test run that goes through PgBouncer.

``tests.settings`` with ``DJPOOL_TEST_POSTGRES_URL`` pointing at PgBouncer
(set by test_pgbouncer.py) and the setting Django requires behind a
transaction-mode pooler: server-side cursors (``.iterator()`` on PostgreSQL)
would need the same server connection across transactions.
"""

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES

DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = True
