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

STRATEGY = os.environ.get("DJPOOL_BENCH_STRATEGY", "djpoolapp")
DATABASE = os.environ.get("DJPOOL_BENCH_DATABASE", "postgres")
THREADS = int(os.environ.get("DJPOOL_BENCH_THREADS", "1"))
#: pool_size for the pooled strategies; 0 keeps each pool's own default.
POOL_SIZE = int(os.environ.get("DJPOOL_BENCH_POOL_SIZE", "0"))
#: Marks this worker's sessions on PostgreSQL (pg_stat_activity).
APPLICATION_NAME = os.environ.get("DJPOOL_BENCH_APPLICATION_NAME", "djpool-bench")

POSTGRES_URL = os.environ.get(
    "DJPOOL_BENCH_POSTGRES_URL", "postgres://root@127.0.0.1:5432/postgres"
)
MYSQL_URL = os.environ.get("DJPOOL_BENCH_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")

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
        options["pool"] = (
            {"min_size": POOL_SIZE, "max_size": POOL_SIZE} if POOL_SIZE else True
        )
    if strategy == "dbcp" and POOL_SIZE:
        entry["POOL_OPTIONS"] = {"POOL_SIZE": POOL_SIZE, "MAX_OVERFLOW": 0}
    entry["OPTIONS"] = options
    return entry


SECRET_KEY = "djpoolapp-benchmarks"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "djpoolapp.bench"  # unused: BenchHandler routes every request
MIDDLEWARE: list[str] = []
INSTALLED_APPS = ["djpoolapp"] if STRATEGY == "djpoolapp" else []
DATABASES = {"default": database_settings(STRATEGY, DATABASE)}
if STRATEGY == "djpoolapp" and POOL_SIZE:
    DJPOOL_OPTIONS = {"pool_size": POOL_SIZE, "max_overflow": 0}
