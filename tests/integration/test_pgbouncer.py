"""The core ORM and pooling tests through PgBouncer in transaction mode.

PgBouncer (Debian's package) runs as a non-daemon subprocess on a free port
with a configuration written here: ``auth_type = trust`` for user root (the
local PostgreSQL trusts it too), ``pool_mode = transaction``, a wildcard
database entry so that the test database created through it is reachable.
PgBouncer refuses to run as root, so under root it runs as ``postgres``.

The nested pytest run points ``default`` at PgBouncer with
``DISABLE_SERVER_SIDE_CURSORS = True`` and runs test_orm.py, test_pooling.py
and pgbouncer_cases.py on PostgreSQL.  Its test database is *created* through
PgBouncer (CREATE DATABASE and the migrations work there), but it could not
be dropped through it: PgBouncer keeps idle server connections to that
database, which block DROP DATABASE.  So the nested run keeps it
(``--reuse-db``) and this test drops it straight on the server after
stopping PgBouncer.

Left out, with reasons:
- test_iterator__uses_a_server_side_cursor_on_postgresql: asserts the named
  cursor that DISABLE_SERVER_SIDE_CURSORS turns off;
- test_requests__without_the_app_open_a_session_each[postgres]: counts a
  server session per request, but behind PgBouncer the server sessions are
  PgBouncer's; pgbouncer_cases.py counts client logins instead.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from tests.conftest import monitor_connection
from tests.integration.conftest import ROOT, free_port, require_tool, serve

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.postgres]

CONFIG = """\
[databases]
* = host={host} port={port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen_port}
unix_socket_dir = {directory}
auth_type = trust
auth_file = {directory}/userlist.txt
admin_users = root
pool_mode = transaction
default_pool_size = 20
max_client_conn = 200
log_connections = 1
log_disconnections = 1
"""
DESELECTED = [
    "tests/test_orm.py::test_iterator__uses_a_server_side_cursor_on_postgresql",
    "tests/test_pooling.py::test_requests__without_the_app_open_a_session_each[postgres]",
]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 1):
            return True
    except OSError:
        return False


def _run_as() -> str | None:
    return "postgres" if os.geteuid() == 0 else None


@pytest.fixture
def pgbouncer(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A PgBouncer in transaction mode on a free port: (port, log file)."""
    binary = require_tool("pgbouncer")
    upstream = settings.DATABASES["default"]
    directory = Path(tempfile.mkdtemp(prefix="djpool-pgbouncer-"))
    port = free_port()
    try:
        (directory / "userlist.txt").write_text('"root" ""\n')
        config = directory / "pgbouncer.ini"
        config.write_text(
            CONFIG.format(
                host=upstream["HOST"], port=upstream["PORT"], listen_port=port,
                directory=directory,
            )
        )  # fmt: skip
        if _run_as():
            subprocess.run(["chown", "-R", "postgres", str(directory)], check=True)
        with serve(
            [binary, str(config)], tmp_path / "pgbouncer.log",
            ready=lambda: _accepts(port), user=_run_as(),
        ):  # fmt: skip
            yield port, tmp_path / "pgbouncer.log"
    finally:
        subprocess.run(["rm", "-rf", str(directory)], check=False)


def _drop_test_databases(name: str) -> None:
    for alias in ("default", "mysql"):
        if alias not in settings.DATABASES:
            continue
        conn = monitor_connection(alias)
        try:
            cursor = conn.cursor()
            if settings.DATABASES[alias]["ENGINE"].endswith("postgresql"):
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            else:
                cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
            cursor.close()
        finally:
            conn.close()


def test_pgbouncer__core_orm_tests_pass_in_transaction_mode(pgbouncer, tmp_path):
    port, log = pgbouncer
    run_id = f"{settings.RUN_ID}_pgbouncer"
    env = dict(os.environ)
    env.update(
        DJPOOL_TEST_POSTGRES_URL=f"postgres://root@127.0.0.1:{port}/postgres",
        DJPOOL_TEST_RUN_ID=run_id,
        DJPOOL_TEST_DRIVER=settings.DRIVER,
        DJPOOL_IT_PGBOUNCER_PORT=str(port),
        DJPOOL_IT_PGBOUNCER_LOG=str(log),
    )
    env.pop("DJPOOL_DISABLE", None)
    cmd = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
        "--ds", "tests.integration.pgbouncer_settings", "--reuse-db",
        "-m", "postgres",
        *(f"--deselect={node}" for node in DESELECTED),
        "tests/test_orm.py", "tests/test_pooling.py",
        "tests/integration/pgbouncer_cases.py",
    ]  # fmt: skip
    try:
        process = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        try:
            output, _ = process.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
            pytest.fail(f"the run through PgBouncer timed out:\n{output}")
    finally:
        _drop_test_databases(f"test_djpool_{run_id}")
        lite = ROOT / "tests" / "tmp" / f"test_lite_{process.pid}.sqlite3"
        lite.unlink(missing_ok=True)
    summary = output.strip().splitlines()[-1] if output.strip() else ""
    print(f"\nthrough PgBouncer (transaction mode): {summary}")
    assert process.returncode == 0, output
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 12, output
    assert " skipped" not in summary and "deselected" in summary, output
