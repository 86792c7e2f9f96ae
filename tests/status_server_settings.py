"""Settings of the gunicorn the status page's two-worker test starts.

``tests.settings`` with the *test* databases of the pytest run that started
it (the run passes its ``DJPOOL_TEST_RUN_ID``, so the names agree, and it
created them first), and the status page's URLconf.
"""

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES

for _alias in ("default", "mysql"):
    if _alias in DATABASES:
        DATABASES[_alias]["NAME"] = DATABASES[_alias]["TEST"]["NAME"]

ROOT_URLCONF = "tests.status_urls"
