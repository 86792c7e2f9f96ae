"""Settings of the servers the integration tests start (gunicorn, uvicorn).

``tests.settings`` with the *test* databases of the pytest run that started
the server: that run passes its ``DJPOOL_TEST_RUN_ID``, so the names agree,
and it has created and migrated them before the server starts.
"""

from tests.integration import MAX_OVERFLOW, POOL_SIZE
from tests.settings import *  # noqa: F403
from tests.settings import DATABASES

for _alias in ("default", "mysql"):
    if _alias in DATABASES:
        DATABASES[_alias]["NAME"] = DATABASES[_alias]["TEST"]["NAME"]

ROOT_URLCONF = "tests.integration.urls"
MIDDLEWARE: list[str] = []

DJPOOL_OPTIONS = {"pool_size": POOL_SIZE, "max_overflow": MAX_OVERFLOW, "timeout": 20}

# Errors and djpoolapp's own lines (pool creation, fork reset) go to stderr,
# which the tests keep as the server's log and search afterwards.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "[%(process)d] %(levelname)s %(name)s: %(message)s"}
    },
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stderr",
            "formatter": "plain",
        }
    },
    "loggers": {
        "django": {"handlers": ["stderr"], "level": "WARNING"},
        "djpoolapp": {"handlers": ["stderr"], "level": "INFO"},
    },
}
