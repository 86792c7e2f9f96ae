"""What djpoolapp asks a database server, one SQL dialect per vendor.

The system checks (``max_connections``), ``manage.py djpool check`` (version,
TLS) and the benchmark (which server session served a request) need the same
few facts; this module is the one place that knows how each vendor says them.
Every function takes a Django connection wrapper and runs on its cursor, so
it goes through the pool like any other query.
"""

from __future__ import annotations

from typing import Any

#: A query answering the id of the server session that runs it.
SESSION_ID_SQL = {
    "postgresql": "SELECT pg_backend_pid()",
    "mysql": "SELECT CONNECTION_ID()",
}


def _one(connection: Any, sql: str) -> Any:
    with connection.cursor() as cursor:
        cursor.execute(sql)
        row = cursor.fetchone()
    return None if row is None else row[0] if len(row) == 1 else tuple(row)


def max_connections(connection: Any) -> int | None:
    """The server's ``max_connections``; None where the vendor has none."""
    if connection.vendor == "postgresql":
        return int(_one(connection, "SHOW max_connections"))
    if connection.vendor == "mysql":
        return int(_one(connection, "SELECT @@max_connections"))
    return None


def server_version(connection: Any) -> str:
    """Product and version as the server reports them."""
    sql = {
        "postgresql": "SHOW server_version",
        "mysql": "SELECT VERSION()",
        "sqlite": "SELECT sqlite_version()",
    }.get(connection.vendor)
    if sql is None:
        return str(connection.display_name)
    return f"{connection.display_name} {_one(connection, sql)}"


def tls_status(connection: Any) -> tuple[bool | None, str]:
    """Whether this session is encrypted, from the server's side.

    Returns ``(in_use, detail)``; ``in_use`` is None where the question makes
    no sense (SQLite) or the server does not say.
    """
    if connection.vendor == "postgresql":
        row = _one(
            connection,
            "SELECT ssl, version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        )
        if row is None:
            return None, "unknown (no pg_stat_ssl row for this session)"
        ssl, version, cipher = row
        return (True, f"yes ({version}, {cipher})") if ssl else (False, "no")
    if connection.vendor == "mysql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SHOW SESSION STATUS WHERE Variable_name IN "
                "('Ssl_cipher', 'Ssl_version')"
            )
            status = {name: value for name, value in cursor.fetchall()}
        cipher = status.get("Ssl_cipher") or ""
        if cipher:
            return True, f"yes ({status.get('Ssl_version') or '?'}, {cipher})"
        return False, "no"
    return None, f"not applicable ({connection.display_name})"


def session_id(connection: Any) -> int | None:
    """The server session id of this connection; None for SQLite."""
    sql = SESSION_ID_SQL.get(connection.vendor)
    return None if sql is None else int(_one(connection, sql))
