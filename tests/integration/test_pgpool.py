"""The core ORM and pooling tests through Pgpool-II (Debian's ``pgpool2``).

Pgpool-II runs in the foreground (``-n``) on a free port with a configuration
written here: ``raw`` clustering mode with the local PostgreSQL as its only
backend, no load balancing, health checks or failover, its sockets, pid and
status files in a temporary directory, ``connection_cache = on`` (a child
keeps its backend connection for the next client: Pgpool-II's pooling) and
``log_connections = on`` so that client connections can be counted.  The
machine's own pgpool2 configuration and service are never touched.  Under
root it runs as ``postgres``, as the PgBouncer test does.

Pgpool-II pools per session, so unlike PgBouncer in transaction mode
prepared statements and session state work as on a direct connection.  One
exception, with or without djpoolapp: Pgpool-II 4.3 fails psycopg 3's named
(server-side) cursors ("unable to execute Describe: unable to get the bind
message"), so with psycopg 3 the nested run sets
``DISABLE_SERVER_SIDE_CURSORS = True`` (tests.integration.pgbouncer_settings)
and leaves out the test of ``.iterator()``'s named cursor; psycopg2's work.
The nested pytest points ``default`` at Pgpool-II and runs test_orm.py,
test_pooling.py and pgpool_cases.py on PostgreSQL.  As behind PgBouncer, the test database it creates is dropped
straight on the server afterwards (Pgpool-II's cached backend connections
would block DROP DATABASE).

Left out, with reasons: the tests that count server sessions
(test_requests__reuse_pooled_server_sessions, ...without_the_app_open_a_
session_each, test_threads__never_exceed_pool_size): behind Pgpool-II the
server sessions are its children's cached ones (up to num_init_children x
max_pool, whoever used them last); pgpool_cases.py counts client connections
instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from tests.integration.conftest import free_port, require_tool
from tests.integration.servers import pooler, run_core_tests_through

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.postgres]

CONFIG = """\
backend_clustering_mode = 'raw'
listen_addresses = '127.0.0.1'
port = {listen_port}
socket_dir = '{directory}'
pcp_listen_addresses = ''
pcp_port = {pcp_port}
pcp_socket_dir = '{directory}'
wd_ipc_socket_dir = '{directory}'
pid_file_name = '{directory}/pgpool.pid'
logdir = '{directory}'
backend_hostname0 = '{host}'
backend_port0 = {port}
backend_flag0 = 'DISALLOW_TO_FAILOVER'
enable_pool_hba = off
num_init_children = 32
max_pool = 1
connection_cache = on
log_connections = on
log_destination = 'stderr'
health_check_period = 0
sr_check_period = 0
load_balance_mode = off
failover_on_backend_error = off
memory_cache_enabled = off
"""
DESELECTED = [
    "tests/test_pooling.py::test_requests__without_the_app_open_a_session_each[postgres]",
    "tests/test_pooling.py::test_requests__reuse_pooled_server_sessions[postgres]",
    "tests/test_pooling.py::test_threads__never_exceed_pool_size[postgres]",
]
#: psycopg 3's named cursors fail through Pgpool-II 4.3 (also without djpoolapp).
PSYCOPG3_DESELECTED = [
    "tests/test_orm.py::test_iterator__uses_a_server_side_cursor_on_postgresql",
]


@pytest.fixture
def pgpool(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """Pgpool-II on a free port in front of the test server: (port, log)."""
    binary = require_tool("pgpool")
    upstream = settings.DATABASES["default"]

    def configure(directory: Path, port: int) -> list[str]:
        config = directory / "pgpool.conf"
        config.write_text(
            CONFIG.format(
                host=upstream["HOST"], port=upstream["PORT"], listen_port=port,
                pcp_port=free_port(), directory=directory,
            )
        )  # fmt: skip
        (directory / "pcp.conf").write_text("")
        return [binary, "-n", "-f", str(config), "-F", str(directory / "pcp.conf")]

    with pooler("pgpool", tmp_path, configure) as port_and_log:
        yield port_and_log


def test_pgpool__core_orm_tests_pass_through_pgpool(pgpool, tmp_path):
    port, log = pgpool
    psycopg3 = settings.DRIVER == "psycopg3"
    run_core_tests_through(
        "pgpool", "Pgpool-II", port, log,
        settings_module=(
            "tests.integration.pgbouncer_settings" if psycopg3 else "tests.settings"
        ),
        deselected=DESELECTED + (PSYCOPG3_DESELECTED if psycopg3 else []),
        min_passed=10,
    )  # fmt: skip
