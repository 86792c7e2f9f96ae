"""Django settings of one benchmark worker, built from its environment.

``benchmarks/run.py`` starts every (strategy, database, threads) run in a
fresh interpreter with this module as ``DJANGO_SETTINGS_MODULE`` and the
choice in ``DJPOOL_BENCH_*`` variables, so that no strategy can leave a
patched backend, a pool or an open connection behind for the next one.

The project is deliberately bare (no middleware, one view) so that the
connection path is as large a share of a request as it can be: the ratios
are the worst case a real project will see.
"""

from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit

from benchmarks import servers

STRATEGY = os.environ.get("DJPOOL_BENCH_STRATEGY", "djpoolapp")
DATABASE = os.environ.get("DJPOOL_BENCH_DATABASE", "postgres")
THREADS = int(os.environ.get("DJPOOL_BENCH_THREADS", "1"))
#: pool_size for the pooled strategies; 0 keeps each pool's own default.
POOL_SIZE = int(os.environ.get("DJPOOL_BENCH_POOL_SIZE", "0"))
#: Seconds a checkout waits for a pooled connection; 0 keeps each pool's
#: default.  Set with POOL_SIZE, it also sets max_overflow 0.
TIMEOUT = float(os.environ.get("DJPOOL_BENCH_TIMEOUT", "0"))
#: Strategies that are djpoolapp ("barging": djpoolapp with SQLAlchemy's own
#: queue, as before issue 12; the worker swaps the queue class), with the
#: DJPOOL_OPTIONS each sets beyond the defaults.
DJPOOLAPP_STRATEGIES: dict[str, dict[str, object]] = {
    "djpoolapp": {},
    "barging": {},
    "djpoolapp-nopark": {"park": False},  # without the fast path (issue 12)
    "djpoolapp-tx": {"pool_mode": "transaction"},  # issue 13
}
#: Marks this worker's sessions on PostgreSQL (pg_stat_activity).
APPLICATION_NAME = os.environ.get("DJPOOL_BENCH_APPLICATION_NAME", "djpool-bench")

#: The servers: ``DJPOOL_BENCH_POSTGRES_URL`` / ``DJPOOL_BENCH_MYSQL_URL``,
#: set by ``run.py`` to its private servers (``benchmarks/servers.py``).
POSTGRES_URL = servers.url("postgres")
MYSQL_URL = servers.url("mysql")

ENGINES = {
    # strategy -> (PostgreSQL engine, MySQL engine)
    "dbcp": ("dj_db_conn_pool.backends.postgresql", "dj_db_conn_pool.backends.mysql"),
}
STOCK_ENGINES = ("django.db.backends.postgresql", "django.db.backends.mysql")


def parse_url(url: str) -> dict[str, object]:
    """The DATABASES fields of a ``scheme://user:password@host:port/name`` URL."""
    parts = urlsplit(url)
    return {
        "NAME": unquote(parts.path.lstrip("/")),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
    }


def database_settings(strategy: str, database: str) -> dict[str, object]:
    """The ``default`` alias for *strategy* on *database*."""
    postgres = database.startswith("postgres")
    engines = ENGINES.get(strategy, STOCK_ENGINES)
    entry: dict[str, object] = parse_url(POSTGRES_URL if postgres else MYSQL_URL)
    options: dict[str, object] = {}
    entry["ENGINE"] = engines[0] if postgres else engines[1]
    entry["CONN_MAX_AGE"] = None if strategy == "persistent" else 0
    if postgres:
        options["sslmode"] = "require" if database == "postgres-tls" else "disable"
        options["application_name"] = APPLICATION_NAME
    if strategy == "native":
        # psycopg_pool's default min_size is 4; max_size defaults to min_size.
        pool: dict[str, object] = (
            {"min_size": POOL_SIZE, "max_size": POOL_SIZE} if POOL_SIZE else {}
        )
        if TIMEOUT:
            pool["timeout"] = TIMEOUT
        options["pool"] = pool or True
    if strategy == "dbcp" and POOL_SIZE:
        entry["POOL_OPTIONS"] = {"POOL_SIZE": POOL_SIZE, "MAX_OVERFLOW": 0}
        if TIMEOUT:
            entry["POOL_OPTIONS"]["TIMEOUT"] = TIMEOUT
    entry["OPTIONS"] = options
    return entry


SECRET_KEY = "djpoolapp-benchmarks"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "djpoolapp.bench"  # unused: BenchHandler routes every request
MIDDLEWARE: list[str] = []
INSTALLED_APPS = ["djpoolapp"] if STRATEGY in DJPOOLAPP_STRATEGIES else []
DATABASES = {"default": database_settings(STRATEGY, DATABASE)}
if STRATEGY in DJPOOLAPP_STRATEGIES:
    DJPOOL_OPTIONS: dict[str, object] = dict(DJPOOLAPP_STRATEGIES[STRATEGY])
    if POOL_SIZE:
        DJPOOL_OPTIONS.update(pool_size=POOL_SIZE, max_overflow=0)
        if TIMEOUT:
            DJPOOL_OPTIONS["timeout"] = TIMEOUT
