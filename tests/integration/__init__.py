"""Integration tests: real servers (gunicorn, uvicorn, PgBouncer, forked
worker pools) in front of the real databases, on 127.0.0.1.

The pool options of the servers under test live here, so that the settings
module and the tests' bounds read the same numbers: small pools, so that the
bound processes x (pool_size + max_overflow) is reached under load.
"""

import pytest

#: Marks of the tests that run a server against both databases.
BOTH_DATABASES = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.postgres,
    pytest.mark.mysql,
    pytest.mark.django_db(transaction=True, databases="__all__"),
]
#: Marks of the ``*_cases.py`` modules run behind a server-side pooler.
POOLER_CASES = [
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True, databases="__all__"),
]

POOL_SIZE = 2
MAX_OVERFLOW = 2

#: The ``mode`` parameter of a test that runs the same load with djpoolapp
#: and on stock Django (``DJPOOL_DISABLE=1``); the stock case is a baseline,
#: left out of the psycopg2 session (``--second-driver-cut``).
MODES = ["djpoolapp", pytest.param("stock", marks=pytest.mark.stock_baseline)]
