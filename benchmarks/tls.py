"""Make sure the benchmark's PostgreSQL server accepts TLS, for ``postgres-tls``.

A fresh cluster runs with ``ssl = off``.  On a server the benchmark started
itself (a private one, ``servers.py``) it turns TLS on with a self-signed
certificate: it writes ``djpool-bench.crt`` / ``djpool-bench.key`` into that
server's data directory (owned by the server's user, the key mode 0600, as
PostgreSQL demands), points ``ssl_cert_file`` / ``ssl_key_file`` at them
with ``ALTER SYSTEM`` and reloads the configuration (``pg_reload_conf()``).
The data directory goes away with the private server.

A server the benchmark did not start (``DJPOOL_BENCH_POSTGRES_URL``,
``--servers machine``) is never changed: with ``ssl = off`` there,
``postgres-tls`` is skipped (``TLSUnavailable`` says so), unless
``--enable-tls-on-server`` asks for the same change on that server (the
old behaviour: a shared server would keep TLS on, and libpq's default
``sslmode=prefer`` would then negotiate it for every client).

Turning TLS on needs a superuser, the data directory writable from here
and the ``openssl`` command; without them the ``postgres-tls`` runs are
skipped with the reason.  Nothing is done when ``SHOW ssl`` says ``on``.
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


def _is_owned(directory: Path, owned_datadir: Path | None) -> bool:
    """Whether *directory* (the server's ``data_directory``) is the data
    directory of the private server the benchmark started."""
    if owned_datadir is None:
        return False
    try:
        return directory.resolve() == owned_datadir.resolve()
    except OSError:
        return False


def ensure_postgres_tls(
    connect: Any, owned_datadir: Path | None = None, enable_on_server: bool = False
) -> str:
    """Return what was done ("already on" / "enabled ..."); raise TLSUnavailable.

    *connect* opens a plain (non-TLS) driver connection in autocommit mode.
    *owned_datadir*: the data directory of the private server the benchmark
    started (None: it started none); TLS is turned on only in that server,
    recognised by its ``data_directory``, or in any server when
    *enable_on_server* is true (``--enable-tls-on-server``).
    """
    conn = connect()
    try:
        if _show(conn, "ssl") == "on":
            return "TLS already on in the server"
        directory = Path(_show(conn, "data_directory"))
        owned = _is_owned(directory, owned_datadir)
        if not owned and not enable_on_server:
            raise TLSUnavailable(
                "ssl is off in a server this benchmark did not start, which it "
                "never reconfigures (--enable-tls-on-server turns TLS on there; "
                "the default private servers get it)"
            )
        with conn.cursor() as cursor:
            cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            if not cursor.fetchone()[0]:
                raise TLSUnavailable(
                    "ssl is off and the benchmark user is no superuser"
                )
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
    where = "the private server" if owned else "the external server (as asked)"
    return (
        f"TLS was off: enabled it in {where} with a self-signed certificate "
        f"({cert}; ALTER SYSTEM SET ssl = on, ssl_cert_file, ssl_key_file; reloaded)"
    )
