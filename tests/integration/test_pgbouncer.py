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
- test_requests__without_the_app_open_a_session_each[postgres],
  test_requests__reuse_pooled_server_sessions[postgres] and
  test_threads__never_exceed_pool_size[postgres]: count server sessions, but
  behind PgBouncer the server sessions are PgBouncer's (a server connection
  it opened for an earlier test of the run stays open, idle, and is counted);
  pgbouncer_cases.py counts PgBouncer's clients and logins instead (as the
  Pgpool-II run leaves the same three out).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from tests.integration.conftest import require_tool
from tests.integration.servers import pooler, run_core_tests_through

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
    "tests/test_pooling.py::test_requests__reuse_pooled_server_sessions[postgres]",
    "tests/test_pooling.py::test_threads__never_exceed_pool_size[postgres]",
]


@pytest.fixture
def pgbouncer(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A PgBouncer in transaction mode on a free port: (port, log file)."""
    binary = require_tool("pgbouncer")
    upstream = settings.DATABASES["default"]

    def configure(directory: Path, port: int) -> list[str]:
        (directory / "userlist.txt").write_text('"root" ""\n')
        config = directory / "pgbouncer.ini"
        config.write_text(
            CONFIG.format(
                host=upstream["HOST"], port=upstream["PORT"], listen_port=port,
                directory=directory,
            )
        )  # fmt: skip
        return [binary, str(config)]

    with pooler("pgbouncer", tmp_path, configure) as port_and_log:
        yield port_and_log


def test_pgbouncer__core_orm_tests_pass_in_transaction_mode(pgbouncer, tmp_path):
    port, log = pgbouncer
    run_core_tests_through(
        "pgbouncer", "PgBouncer (transaction mode)", port, log,
        settings_module="tests.integration.pgbouncer_settings",
        deselected=DESELECTED, min_passed=11,
    )  # fmt: skip
