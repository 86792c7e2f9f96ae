"""Make sure the local PostgreSQL server accepts TLS, for the ``postgres-tls`` runs.

A stock Debian cluster may run with ``ssl = off``.  The benchmark then
turns TLS on with a self-signed certificate, once: it writes
``djpool-bench.crt`` / ``djpool-bench.key`` into the server's data directory
(the key owned by the server's user, mode 0600, as PostgreSQL demands),
points ``ssl_cert_file`` / ``ssl_key_file`` at them with ``ALTER SYSTEM``
and reloads the configuration.  Nothing is done when ``SHOW ssl`` already
says ``on``; a second run finds it on.  Clients that do not ask for TLS are
unaffected except that libpq's default ``sslmode=prefer`` now negotiates it.

This needs a superuser, a server on this machine (the data directory must
be writable from here, as root) and the ``openssl`` command; without them
the ``postgres-tls`` runs are skipped with the reason.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

CERT_NAME = "djpool-bench.crt"
KEY_NAME = "djpool-bench.key"


class TLSUnavailable(Exception):
    """TLS is off and could not be turned on; the message says why."""


def _show(conn: Any, name: str) -> str:
    with conn.cursor() as cursor:
        cursor.execute(f"SHOW {name}")
        return str(cursor.fetchone()[0])


def _make_certificate(directory: Path, owner: str) -> tuple[Path, Path]:
    """A self-signed certificate and its key in *directory*, owned by *owner*."""
    cert, key = directory / CERT_NAME, directory / KEY_NAME
    if cert.exists() and key.exists():
        return cert, key  # made by an earlier run
    if shutil.which("openssl") is None:
        raise TLSUnavailable("the openssl command is not installed")
    subprocess.run(
        [
            "openssl", "req", "-new", "-x509", "-nodes", "-days", "3650",
            "-newkey", "rsa:2048", "-subj", "/CN=localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    account = pwd.getpwnam(owner)
    for path, mode in ((cert, 0o644), (key, 0o600)):
        os.chown(path, account.pw_uid, account.pw_gid)
        os.chmod(path, mode)
    return cert, key


def ensure_postgres_tls(connect: Any) -> str:
    """Return what was done ("already on" / "enabled ..."); raise TLSUnavailable.

    *connect* opens a plain (non-TLS) driver connection in autocommit mode.
    """
    conn = connect()
    try:
        if _show(conn, "ssl") == "on":
            return "TLS already on in the server"
        with conn.cursor() as cursor:
            cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            if not cursor.fetchone()[0]:
                raise TLSUnavailable(
                    "ssl is off and the benchmark user is no superuser"
                )
        directory = Path(_show(conn, "data_directory"))
        if not directory.is_dir() or not os.access(directory, os.W_OK):
            raise TLSUnavailable(
                f"ssl is off and the data directory {directory} is not writable here "
                "(server on another machine, or not running as root)"
            )
        owner = pwd.getpwuid(directory.stat().st_uid).pw_name
        cert, key = _make_certificate(directory, owner)
        with conn.cursor() as cursor:
            cursor.execute(f"ALTER SYSTEM SET ssl_cert_file = '{cert}'")
            cursor.execute(f"ALTER SYSTEM SET ssl_key_file = '{key}'")
            cursor.execute("ALTER SYSTEM SET ssl = on")
            cursor.execute("SELECT pg_reload_conf()")
    finally:
        conn.close()
    for _ in range(50):  # the postmaster reloads asynchronously
        conn = connect()  # a new session sees the reloaded settings
        try:
            if _show(conn, "ssl") == "on":
                break
        finally:
            conn.close()
        time.sleep(0.1)
    else:
        raise TLSUnavailable(
            "ssl is still off 5 s after ALTER SYSTEM and reload; see the server log"
        )
    return (
        f"TLS was off: enabled it with a self-signed certificate ({cert}; "
        "ALTER SYSTEM SET ssl = on, ssl_cert_file, ssl_key_file; reloaded)"
    )
