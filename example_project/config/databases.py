"""DATABASES from the environment, with a zero-setup fallback.

- ``default`` (PostgreSQL, the ``catalog`` app): ``DATABASE_URL``; unset, the
  example's own PostgreSQL server (config/embedded_postgres.py: the system's
  ``initdb``/``pg_ctl``, data in ``example_project/.pgdata``), or, where that
  cannot run, the SQLite file ``example_project/default.sqlite3`` -- the
  start-up output says which, and why.
- ``legacy`` (MySQL/MariaDB, the ``crm`` app): ``LEGACY_DATABASE_URL`` (or
  ``MYSQL_URL``); unset, the SQLite file ``example_project/legacy.sqlite3``.
  (``EXAMPLE_DATA_DIR`` puts ``.pgdata`` and the SQLite files elsewhere.)
- ``direct``: the ``default`` database again, opted out of pooling in
  DJPOOL_OPTIONS, for session-level work (see settings.py).

URLs use dj-database-url's syntax, e.g. ``postgres://user:pw@host:5432/name``
and ``mysql://user:pw@host:3306/name``.  Start-up output names the databases
with :func:`describe`, which never shows a password.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dj_database_url

from .embedded_postgres import EmbeddedPostgres, Unavailable

PROJECT_DIR = Path(__file__).resolve().parent.parent
#: Where the fallback databases live (EXAMPLE_DATA_DIR moves them elsewhere).
DATA_DIR = Path(os.environ.get("EXAMPLE_DATA_DIR") or PROJECT_DIR).resolve()
PGDATA = DATA_DIR / ".pgdata"
EMBEDDED_NAME = "example"
LEGACY_SQLITE = DATA_DIR / "legacy.sqlite3"
#: ``default`` when neither DATABASE_URL nor the embedded server is available.
DEFAULT_SQLITE = DATA_DIR / "default.sqlite3"

VENDORS = {
    "postgresql": "PostgreSQL",
    "postgis": "PostgreSQL",
    "mysql": "MySQL/MariaDB",
    "sqlite3": "SQLite",
}


def _sqlite(path: Path) -> dict[str, Any]:
    """An SQLite file in DATA_DIR (created if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return _parse(f"sqlite:///{path}")


def _parse(url: str) -> dict[str, Any]:
    # CONN_MAX_AGE=0: Django closes connections at every request end -- the
    # setting djpoolapp exists for (its pool keeps the server sessions).
    return dj_database_url.parse(url, conn_max_age=0)


def embedded_postgres() -> dict[str, Any]:
    """Start (or reuse) the example's own PostgreSQL server; a DATABASES entry.

    See config/embedded_postgres.py: the system's ``initdb``/``pg_ctl``, data
    and Unix socket in ``DATA_DIR/.pgdata``, never run as root, nothing
    changed outside that directory.  Raises ``Unavailable`` with the reason.
    """
    server = EmbeddedPostgres(PGDATA)
    settings = server.start()
    settings["NAME"] = EMBEDDED_NAME
    _create_database(settings)
    return settings


def _create_database(settings: dict[str, Any]) -> None:
    """CREATE DATABASE the embedded server's example database if missing."""
    try:
        import psycopg as driver
    except ImportError:
        try:
            import psycopg2 as driver  # type: ignore[no-redef]
        except ImportError:
            raise Unavailable(
                "no PostgreSQL driver: pip install 'djpoolapp[psycopg]'"
            ) from None
    try:
        conn = driver.connect(
            host=settings["HOST"], port=int(settings["PORT"]),
            user=settings["USER"], dbname="postgres",
        )  # fmt: skip
    except driver.Error as error:
        raise Unavailable(f"cannot connect to it: {error}") from error
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
        try:
            default = embedded_postgres()
            sources["default"] = (
                f"the example's own PostgreSQL server in {PGDATA}, Unix socket "
                "only; set DATABASE_URL to use yours"
            )
        except Unavailable as reason:
            default = _sqlite(DEFAULT_SQLITE)
            sources["default"] = (
                f"SQLite, NOT PostgreSQL: the example's own PostgreSQL server "
                f"cannot run: {reason}. Or set DATABASE_URL=postgres://..."
            )
    for variable in ("LEGACY_DATABASE_URL", "MYSQL_URL"):
        if os.environ.get(variable):
            legacy = _parse(os.environ[variable])
            sources["legacy"] = variable
            break
    else:
        legacy = _sqlite(LEGACY_SQLITE)
        sources["legacy"] = (
            "SQLite, NOT MySQL: LEGACY_DATABASE_URL is unset; set it to "
            "mysql://USER:PASSWORD@HOST:3306/NAME (and pip install "
            "'djpoolapp[mysql]') to put the crm app on MySQL/MariaDB"
        )
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
