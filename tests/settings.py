"""Test settings: PostgreSQL ``default``, MariaDB ``mysql``, SQLite ``lite``.

Servers: by default the private ones this test run started
(tests/harness.py); ``DJPOOL_TEST_POSTGRES_URL`` / ``DJPOOL_TEST_MYSQL_URL``
(dj-database-url syntax) select external ones instead.  A missing or
unreachable server's alias is left out and its tests skip, except under
``CI=true``, where conftest.py turns that into a failure.
"""

import json
import os
import socket
import sys
from pathlib import Path

import dj_database_url

DRIVER = os.environ.get("DJPOOL_TEST_DRIVER", "psycopg3")
if DRIVER == "psycopg2":
    # Django prefers psycopg 3 when both are importable; hide it so this run
    # exercises Django's psycopg2 code path (nox's psycopg2 session does not
    # install psycopg 3 at all).
    sys.modules["psycopg"] = None  # type: ignore[assignment]

BASE_DIR = Path(__file__).resolve().parent
SECRET_KEY = "djpoolapp-tests"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.testapp.urls"
# Sessions and auth for the status page's staff check; signed-cookie sessions
# need no table, and neither middleware queries a database unless a view asks
# for request.user.
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
STATIC_URL = "static/"  # pytest-django's live_server fails without it
TEMPLATES = [
    {"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}
]
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "djpoolapp",
    "tests.testapp",
]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


def _private_url(name: str) -> str | None:
    """The URL of this process's private server (tests/harness.py)."""
    value = os.environ.get(f"DJPOOL_TEST_PRIVATE_{name.upper()}")
    return json.loads(value)["url"] if value else None


# An external server (the variable is set) or this run's private one; with
# neither (binaries missing, see tests/harness.py) the alias is left out.
EXTERNAL = {
    "postgres": os.environ.get("DJPOOL_TEST_POSTGRES_URL") or None,
    "mysql": os.environ.get("DJPOOL_TEST_MYSQL_URL") or None,
}
#: The servers this run started itself, the only ones a test may restart.
PRIVATE = {name: not EXTERNAL[name] and bool(_private_url(name)) for name in EXTERNAL}
#: Why a server is missing (the Debian package to install), by name.
MISSING_SERVERS = json.loads(os.environ.get("DJPOOL_TEST_MISSING_SERVERS") or "{}")
POSTGRES_URL = EXTERNAL["postgres"] or _private_url("postgres") or ""
MYSQL_URL = EXTERNAL["mysql"] or _private_url("mysql") or ""


def reachable(config: dict) -> bool:
    if not config.get("HOST"):
        return False
    try:
        with socket.create_connection((config["HOST"], int(config["PORT"])), 2):
            return True
    except OSError:
        return False


# Each test run gets its own test databases, so that concurrent runs (nox
# sessions, developers) never drop each other's.
RUN_ID = os.environ.get("DJPOOL_TEST_RUN_ID", str(os.getpid()))
postgres = dj_database_url.parse(POSTGRES_URL or "postgres://", conn_max_age=0)
postgres["OPTIONS"] = {"application_name": f"djpool-tests-{RUN_ID}"}
postgres["TEST"] = {"NAME": f"test_djpool_{RUN_ID}"}
mysql = dj_database_url.parse(MYSQL_URL or "mysql://", conn_max_age=0)
mysql["OPTIONS"] = {"charset": "utf8mb4"}
mysql["TEST"] = {
    "NAME": f"test_djpool_{RUN_ID}",
    "CHARSET": "utf8mb4",
    "COLLATION": "utf8mb4_unicode_ci",
}
lite = {
    "ENGINE": "django.db.backends.sqlite3",
    "NAME": str(BASE_DIR / "tmp" / "lite.sqlite3"),
    "TEST": {"NAME": str(BASE_DIR / "tmp" / f"test_lite_{os.getpid()}.sqlite3")},
}
(BASE_DIR / "tmp").mkdir(exist_ok=True)

SERVERS = {"postgres": reachable(postgres), "mysql": reachable(mysql)}
DATABASES = {"default": postgres if SERVERS["postgres"] else dict(lite)}
if SERVERS["mysql"]:
    DATABASES["mysql"] = mysql
DATABASES["lite"] = lite

# DJPOOL_TEST_POOL_MODE=transaction: the suite with pool_mode="transaction"
# (tests that set DJPOOL_OPTIONS themselves use what they set).
if os.environ.get("DJPOOL_TEST_POOL_MODE"):
    DJPOOL_OPTIONS = {"pool_mode": os.environ["DJPOOL_TEST_POOL_MODE"]}
