"""DATABASES from the environment, with a zero-setup fallback.

- ``default`` (PostgreSQL, the ``catalog`` app): ``DATABASE_URL``; unset, an
  embedded PostgreSQL started by the ``pgserver`` package (``pip install
  'djpoolapp[example]'``) with its data in ``example_project/.pgserver``.
- ``legacy`` (MySQL/MariaDB, the ``crm`` app): ``LEGACY_DATABASE_URL`` (or
  ``MYSQL_URL``); unset, the SQLite file ``example_project/legacy.sqlite3``.
  (``EXAMPLE_DATA_DIR`` puts ``.pgserver`` and the SQLite file elsewhere.)
- ``direct``: the ``default`` database again, opted out of pooling in
  DJPOOL_OPTIONS, for session-level work (see settings.py).

URLs use dj-database-url's syntax, e.g. ``postgres://user:pw@host:5432/name``
and ``mysql://user:pw@host:3306/name``.  Start-up output names the databases
with :func:`describe`, which never shows a password.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

PROJECT_DIR = Path(__file__).resolve().parent.parent
#: Where the fallback databases live (EXAMPLE_DATA_DIR moves them elsewhere).
DATA_DIR = Path(os.environ.get("EXAMPLE_DATA_DIR") or PROJECT_DIR).resolve()
PGDATA = DATA_DIR / ".pgserver"
EMBEDDED_NAME = "example"
LEGACY_SQLITE = DATA_DIR / "legacy.sqlite3"

VENDORS = {
    "postgresql": "PostgreSQL",
    "postgis": "PostgreSQL",
    "mysql": "MySQL/MariaDB",
    "sqlite3": "SQLite",
}


def _parse(url: str) -> dict[str, Any]:
    # CONN_MAX_AGE=0: Django closes connections at every request end -- the
    # setting djpoolapp exists for (its pool keeps the server sessions).
    return dj_database_url.parse(url, conn_max_age=0)


def embedded_postgres() -> dict[str, Any]:
    """Start (or reuse) pgserver's PostgreSQL and return a DATABASES entry.

    pgserver listens on a Unix socket only, so it never clashes with a
    PostgreSQL on port 5432.  Run as root, it creates a system user
    ``pgserver`` to run the server as (PostgreSQL refuses to run as root) and
    makes the folders above ``.pgserver`` readable to it.  The server stops
    when the last process using it exits normally (Ctrl-C included); after a
    ``kill`` it stays up and the next run reuses it.
    """
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers,
            # CI) and falls back to /tmp; that fallback is fine here.
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError:
        raise ImproperlyConfigured(
            "DATABASE_URL is not set and the embedded PostgreSQL is not "
            "available: pip install 'djpoolapp[example]' (pgserver; wheels for "
            "CPython 3.9-3.12) or set DATABASE_URL=postgres://USER@HOST:5432/NAME."
        ) from None
    _forget_dead_users()
    server = pgserver.get_server(PGDATA, cleanup_mode="stop")
    info = server.get_postmaster_info()
    settings = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": EMBEDDED_NAME,
        "USER": "postgres",
        "PASSWORD": "",
        "HOST": str(info.socket_dir),
        "PORT": str(info.port or 5432),
        "CONN_MAX_AGE": 0,
    }
    _create_database(settings)
    return settings


def _forget_dead_users() -> None:
    """Drop the ids of dead processes from pgserver's list of users.

    pgserver stops the server when the last process in that list exits
    normally; a process that was killed never leaves the list, and the
    server would then never be stopped again.
    """
    import psutil  # a dependency of pgserver

    users = PGDATA / ".handle_pids.json"
    try:
        pids = json.loads(users.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if psutil.pid_exists(pid)]
    if alive != pids:
        users.write_text(json.dumps(alive))


def _create_database(settings: dict[str, Any]) -> None:
    """CREATE DATABASE the embedded server's example database if missing."""
    try:
        import psycopg as driver
    except ImportError:
        import psycopg2 as driver  # type: ignore[no-redef]
    conn = driver.connect(
        host=settings["HOST"], port=int(settings["PORT"]),
        user=settings["USER"], dbname="postgres",
    )  # fmt: skip
    try:
        conn.autocommit = True
        cursor = conn.cursor()
        cursor.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [settings["NAME"]]
        )
        if cursor.fetchone() is None:
            cursor.execute(f'CREATE DATABASE "{settings["NAME"]}"')
    finally:
        conn.close()


def configure() -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """``(DATABASES, {alias: where its configuration came from})``."""
    sources = {}
    if os.environ.get("DATABASE_URL"):
        default = _parse(os.environ["DATABASE_URL"])
        sources["default"] = "DATABASE_URL"
    else:
        default = embedded_postgres()
        sources["default"] = (
            f"embedded pgserver in {PGDATA}; set DATABASE_URL to use yours"
        )
    for variable in ("LEGACY_DATABASE_URL", "MYSQL_URL"):
        if os.environ.get(variable):
            legacy = _parse(os.environ[variable])
            sources["legacy"] = variable
            break
    else:
        legacy = _parse(f"sqlite:///{LEGACY_SQLITE}")
        sources["legacy"] = "no LEGACY_DATABASE_URL: SQLite, set it to a mysql:// URL"
    if legacy["ENGINE"] == "django.db.backends.mysql":
        legacy.setdefault("OPTIONS", {})["charset"] = "utf8mb4"
        legacy["TEST"] = {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"}
    direct = {
        **default,
        # A persistent connection: Django keeps it across requests, so the
        # session-level state it carries (locks, LISTEN) stays put.
        "CONN_MAX_AGE": None,
        "TEST": {"MIRROR": "default"},
    }
    sources["direct"] = "the default database, not pooled"
    return {"default": default, "legacy": legacy, "direct": direct}, sources


def describe(settings: dict[str, Any]) -> str:
    """``Vendor user@host:port/name``; never the password."""
    engine = settings["ENGINE"].rsplit(".", 1)[-1]
    vendor = VENDORS.get(engine, engine)
    if engine == "sqlite3":
        return f"{vendor} {settings['NAME']}"
    user = f"{settings.get('USER')}@" if settings.get("USER") else ""
    port = f":{settings['PORT']}" if settings.get("PORT") else ""
    return (
        f"{vendor} {user}{settings.get('HOST') or 'localhost'}{port}/{settings['NAME']}"
    )


def startup_lines(
    databases: dict[str, dict[str, Any]], sources: dict[str, str]
) -> list[str]:
    width = max(map(len, databases))
    return ["example_project databases:"] + [
        f"  {alias:<{width}}  {describe(settings)}  ({sources[alias]})"
        for alias, settings in databases.items()
    ]
