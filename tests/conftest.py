"""Shared test machinery.

- Servers: private ones started for this run by tests/harness.py (a pytest
  plugin), or external ones (``DJPOOL_TEST_POSTGRES_URL`` /
  ``DJPOOL_TEST_MYSQL_URL``).  Tests marked ``postgres`` / ``mysql`` skip when
  that server is missing, naming the package to install, except under
  ``CI=true``, where the run fails instead; tests marked ``restart`` skip on
  an external server.
- ``--second-driver-cut`` (nox's tests-psycopg2 session): the tests whose
  verdict cannot depend on the PostgreSQL driver djpoolapp pools are
  deselected (``driver_independent``).
- ``request_cycle``: drive a path through Django's real ``WSGIHandler``
  (request_started / request_finished, so ``close_old_connections()`` runs as
  in production; the test ``Client`` disconnects it).
- ``server_sessions``: count the server-side sessions of an alias's database,
  from a monitoring connection opened straight with the driver (unpooled).
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler
from django.db import connections
from django.test import override_settings

import djpoolapp
from djpoolapp import patch

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

SERVER_MARKERS = {"postgres": "postgres", "mysql": "mysql"}


def _why_missing(name: str) -> str:
    """One line: why the server *name* is not there and how to get it."""
    if name in settings.MISSING_SERVERS:
        return settings.MISSING_SERVERS[name]
    if settings.EXTERNAL[name]:
        variable = f"DJPOOL_TEST_{name.upper()}_URL"
        return f"{name} server of {variable} unreachable"
    return f"{name} server unreachable"


# -- --second-driver-cut: the psycopg2 session's cut ---------------------------
#: Paths whose tests use no database server and no driver: pure functions
#: (tests/unit) and the documentation's text and Sphinx build.
POSTGRES_FREE_PATHS = ("tests/unit/", "tests/test_docs.py")
#: Files whose code under test reaches every alias's server whatever the
#: test's own alias (the status page queries each server; its staff user
#: lives in ``default``): their ``[mysql]`` cases touch PostgreSQL too.
EVERY_ALIAS_FILES = ("tests/test_status_page.py",)
DESELECT_OPTION = "--second-driver-cut"
DESELECT_REPORT_ENV = "DJPOOL_TEST_DESELECT_REPORT"


def pytest_addoption(parser: Any) -> None:
    parser.addoption(
        DESELECT_OPTION,
        action="store_true",
        help="deselect the tests whose verdict cannot depend on the PostgreSQL "
        "driver djpoolapp pools (MariaDB-only cases and files, tests/unit, "
        "tests/test_docs.py, the stock-Django baselines): nox's tests-psycopg2 "
        "session, after tests-psycopg3 ran them all (docs/testing.rst)",
    )


def driver_independent(item: Any) -> bool:
    """True for a test whose verdict cannot depend on the PostgreSQL driver
    djpoolapp pools: a stock-Django baseline (marked ``stock_baseline``: the
    same load with ``DJPOOL_DISABLE=1``, the comparison column of a table,
    which tests Django and the driver, not djpoolapp), or a test that never
    touches PostgreSQL (``never_touches_postgres``)."""
    return bool(item.get_closest_marker("stock_baseline")) or never_touches_postgres(
        item
    )


def never_touches_postgres(item: Any) -> bool:
    """True for a test that uses no database (tests/unit, the docs), or only
    MariaDB -- marked
    ``mysql`` and not ``postgres`` (the ``[mysql]`` case of an alias-
    parametrised test, a MariaDB-only file), not an integration test, and
    not in a file whose code under test reaches every alias.

    Such a test still has pytest-django's per-test transaction (or flush) on
    the databases its ``django_db`` marker lists, ``default`` among them;
    that plumbing is the same for every test and runs under psycopg2 in each
    PostgreSQL test of the session.  Checked with PostgreSQL's
    ``log_statement = 'all'`` over a whole run: none of these tests sends a
    statement to PostgreSQL from its own body, fixtures or subprocesses
    (docs/testing.rst)."""
    path = item.nodeid.split("::", 1)[0]
    if item.get_closest_marker("postgres") or item.get_closest_marker("integration"):
        return False
    if path.startswith(POSTGRES_FREE_PATHS):
        return True
    return bool(item.get_closest_marker("mysql")) and not path.startswith(
        EVERY_ALIAS_FILES
    )


def _second_driver_cut(config: Any, items: list[Any]) -> None:
    if not config.getoption(DESELECT_OPTION):
        return
    kept = [item for item in items if not driver_independent(item)]
    dropped = [item for item in items if driver_independent(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
    line = (
        f"{DESELECT_OPTION}: {len(dropped)} of {len(kept) + len(dropped)} tests "
        f"deselected, {len(kept)} run"
    )
    config._djpool_deselect_line = line
    report = os.environ.get(DESELECT_REPORT_ENV)
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if report and worker:  # the controller prints it (no terminal in a worker)
        with open(os.path.join(report, f"{worker}.txt"), "w") as f:
            f.write(line)


def pytest_report_header(config: Any) -> str | None:
    if not config.getoption(DESELECT_OPTION):
        return None
    return (
        f"{DESELECT_OPTION}: deselects the tests that never touch PostgreSQL "
        "(MariaDB-only cases and files, tests/unit, tests/test_docs.py) and the "
        "stock-Django baselines, which add nothing to a run on a second "
        "PostgreSQL driver; the count follows the collection"
    )


def pytest_configure(config: Any) -> None:
    if config.getoption(DESELECT_OPTION) and not os.environ.get("PYTEST_XDIST_WORKER"):
        import tempfile

        # Workers inherit the environment: each writes its count here.
        config._djpool_deselect_report = tempfile.mkdtemp(prefix="djpool-deselect-")
        os.environ[DESELECT_REPORT_ENV] = config._djpool_deselect_report


def pytest_unconfigure(config: Any) -> None:
    report = getattr(config, "_djpool_deselect_report", None)
    if report:  # only the process that made it
        import shutil

        shutil.rmtree(report, ignore_errors=True)
        os.environ.pop(DESELECT_REPORT_ENV, None)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    """Controller: print the first worker's count once (all collect alike)."""
    config = node.config
    report = os.environ.get(DESELECT_REPORT_ENV)
    if not report or getattr(config, "_djpool_deselect_line", None):
        return
    path = os.path.join(report, f"{node.gateway.id}.txt")
    if os.path.exists(path):
        with open(path) as f:
            config._djpool_deselect_line = f.read()
        terminal = config.pluginmanager.get_plugin("terminalreporter")
        if terminal is not None:
            terminal.write_line(config._djpool_deselect_line)


def pytest_report_collectionfinish(config: Any, items: list[Any]) -> str | None:
    """Without xdist: the count, after pytest's own "collected" line."""
    return getattr(config, "_djpool_deselect_line", None)


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    _second_driver_cut(config, items)
    missing = [name for name, up in settings.SERVERS.items() if not up]
    if missing and IN_CI:
        raise pytest.UsageError(
            "CI=true but these database servers are missing: "
            + "; ".join(_why_missing(name) for name in missing)
            + " (.ci/run installs the packages)."
        )
    for item in items:
        for name in missing:
            if item.get_closest_marker(SERVER_MARKERS[name]):
                item.add_marker(pytest.mark.skip(reason=_why_missing(name)))
        if item.get_closest_marker("restart"):
            for name in SERVER_MARKERS:
                if item.get_closest_marker(name) and not settings.PRIVATE[name]:
                    item.add_marker(
                        pytest.mark.skip(
                            reason=f"restarts the {name} server: the suite only "
                            "restarts servers it started itself, not the external "
                            f"one of DJPOOL_TEST_{name.upper()}_URL"
                        )
                    )


def driver_module(alias: str) -> Any:
    """The real DB-API module behind an alias (unwrapping djpoolapp's proxy)."""
    database = type(connections[alias]).Database
    return getattr(database, "djpool_driver_module", database)


_closed_errors: dict[str, type[Exception]] = {}


def closed_connection_error(module: Any) -> type[Exception]:
    """The class of error DB-API *module* raises when a statement is run on
    a connection that was closed -- what stock Django's stale handle raises,
    and so what djpoolapp raises for a refused one (``Driver.refused``).
    Found out once per driver on an unpooled connection to the test server
    (psycopg2: InterfaceError; psycopg 3 and mysqlclient: OperationalError)."""
    name = module.__name__
    if name not in _closed_errors:
        alias = "mysql" if name == "MySQLdb" else "default"
        conn = monitor_connection(alias)
        conn.close()
        try:
            conn.cursor().execute("SELECT 1")
        except module.Error as error:
            _closed_errors[name] = type(error)
        else:  # pragma: no cover - a driver that runs on a closed connection
            raise AssertionError(f"{name} ran a statement on a closed connection")
    return _closed_errors[name]


def monitor_connection(alias: str) -> Any:
    """An unpooled driver connection to the same server as *alias*."""
    conf = connections[alias].settings_dict
    module = driver_module(alias)
    if connections[alias].vendor == "postgresql":
        # No prepared statements from psycopg 3 (after 5 runs of a query):
        # they break behind PgBouncer in transaction mode (tests/integration).
        extra = {"prepare_threshold": None} if module.__name__ == "psycopg" else {}
        conn = module.connect(
            host=conf["HOST"],
            port=int(conf["PORT"]),
            user=conf["USER"],
            password=conf["PASSWORD"],
            dbname="postgres",
            **extra,
        )
    else:
        conn = module.connect(
            host=conf["HOST"],
            port=int(conf["PORT"]),
            user=conf["USER"],
            password=conf["PASSWORD"],
        )
    if connections[alias].vendor == "postgresql":
        conn.autocommit = True
    else:
        conn.autocommit(True)
    return conn


#: One connection per pool: a second Django connection takes the same session.
ONE_CONNECTION = {"pool_size": 1, "max_overflow": 0, "timeout": 10}


@pytest.fixture
def psycopg3() -> Any:
    """The psycopg 3 module behind the ``default`` alias; the test is skipped
    when this run uses psycopg2 (``DJPOOL_TEST_DRIVER=psycopg2``)."""
    module = driver_module("default")
    if module.__name__ != "psycopg":
        pytest.skip("psycopg 3 only (this run uses psycopg2)")
    return module


@pytest.fixture
def one_connection() -> Iterator[None]:
    """Every alias pooled with :data:`ONE_CONNECTION`, from closed Django
    connections, closed again after."""
    for connection in connections.all(initialized_only=True):
        connection.close()
    with override_settings(DJPOOL_OPTIONS=ONE_CONNECTION):
        yield
    for connection in connections.all(initialized_only=True):
        connection.close()


_SESSION_LISTED = {
    "postgresql": "SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
    "mysql": "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %s",
}


def wait_session_gone(alias: str, session: int, seconds: float = 5.0) -> bool:
    """Whether the server stops listing *session* (pg_backend_pid() /
    CONNECTION_ID()) within *seconds*.

    A session ends asynchronously on both servers, after a client's close as
    after pg_terminate_backend() or KILL: the backend (PostgreSQL) or handler
    thread (MariaDB) leaves pg_stat_activity / PROCESSLIST only once it has
    read the end of the stream and cleaned up, which on a loaded machine takes
    longer than a monitor's next query.  A session still listed after
    *seconds* was not ended."""
    monitor = monitor_connection(alias)
    try:
        cursor = monitor.cursor()
        deadline = time.monotonic() + seconds
        while True:
            cursor.execute(_SESSION_LISTED[connections[alias].vendor], [session])
            if not cursor.fetchone()[0]:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
    finally:
        monitor.close()


#: Client sessions only: an autovacuum worker on the test database is listed
#: with its ``datname`` and no client port, and was counted as a session
#: (5 sampled for a 4-connection pool, docs/testing.rst).
SESSION_CLIENTS_SQL = {
    "postgresql": "SELECT client_port FROM pg_stat_activity WHERE datname = %s "
    "AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
    "mysql": "SELECT HOST FROM information_schema.PROCESSLIST "
    "WHERE DB = %s AND ID <> CONNECTION_ID()",
}


def _established_sockets() -> list[tuple[int, str]] | None:
    """(local port, socket inode) of this machine's ESTABLISHED TCP
    connections (/proc/net/tcp and tcp6), or None where they cannot be read."""
    sockets: list[tuple[int, str]] = []
    found = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        found = True
        for line in lines:
            fields = line.split()
            if fields[3] == "01":  # TCP_ESTABLISHED
                sockets.append((int(fields[1].rsplit(":", 1)[1], 16), fields[9]))
    return sockets if found else None


def _established_client_ports() -> set[int] | None:
    """Local ports of this machine's ESTABLISHED TCP connections (/proc), or
    None where /proc/net/tcp cannot be read."""
    sockets = _established_sockets()
    return None if sockets is None else {port for port, _ in sockets}


def client_ports_of_group(pgid: int) -> set[int]:
    """Local ports of the ESTABLISHED TCP connections whose socket a process
    of process group *pgid* holds open (/proc): the client ends of a server
    started with ``start_new_session`` and all its workers."""
    inodes: set[str] = set()
    for pid in [name for name in os.listdir("/proc") if name.isdigit()]:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            if int(fields[2]) != pgid:  # state, ppid, pgrp, ...
                continue
            descriptors = os.listdir(f"/proc/{pid}/fd")
        except OSError:  # the process ended meanwhile
            continue
        for fd in descriptors:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:  # closed meanwhile
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return {port for port, inode in _established_sockets() or [] if inode in inodes}


def count_sessions(
    conn: Any, vendor: str, database: str, group: int | None = None
) -> int:
    """Sessions the server lists on *database* (the monitor *conn* excluded)
    whose client end is still open; with *group*, only those whose client is
    a process of that process group (see ``client_ports_of_group``), so that
    a process another test left behind is never counted as the server's.

    A server lists a session for a moment after its client closed it
    (PostgreSQL until the backend exits, MariaDB until the thread is cleaned
    up); on a loaded machine that moment is long enough for the client's next
    connection to be counted with it.  A TCP session from this machine whose
    client socket is no longer ESTABLISHED is therefore not counted; sessions
    over Unix sockets and from other hosts always are."""
    cursor = conn.cursor()
    try:
        cursor.execute(SESSION_CLIENTS_SQL[vendor], [database])
        rows = cursor.fetchall()
    finally:
        cursor.close()
    ports: list[int | None] = []
    for (client,) in rows:
        if vendor == "postgresql":
            ports.append(int(client) if client and int(client) > 0 else None)
        else:
            host, _, port = str(client or "").rpartition(":")
            ports.append(int(port) if host and port.isdigit() else None)
    if group is not None:
        clients = client_ports_of_group(group)  # read after the server's list
        return sum(1 for port in ports if port in clients)
    established = _established_client_ports()  # read after the server's list
    if established is None:
        return len(ports)
    return sum(1 for port in ports if port is None or port in established)


@pytest.fixture
def server_sessions() -> Iterator[Callable[..., int]]:
    """``server_sessions(alias, group=None)``: sessions the server has open on
    the alias's (test) database, excluding the monitor itself; with *group*,
    only those of that process group (see ``count_sessions``)."""
    monitors: dict[str, Any] = {}

    def count(alias: str, group: int | None = None) -> int:
        connection = connections[alias]
        if alias not in monitors:
            monitors[alias] = monitor_connection(alias)
        return count_sessions(
            monitors[alias], connection.vendor, connection.settings_dict["NAME"], group
        )

    yield count
    for conn in monitors.values():
        conn.close()


def peak_while(clients: list[Callable[[], None]], sample: Callable[[], int]) -> int:
    """Run each of *clients* in its own thread, all at once, while another
    thread calls *sample* every 20 ms; the highest value it returned (0 if
    it never ran).  Each client reports its own errors."""
    peak = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.wait(0.02):
            peak = max(peak, sample())

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=client) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    done.set()
    watcher.join()
    return peak


_handler: WSGIHandler | None = None


def run_request(path: str) -> tuple[int, bytes]:
    """One GET through Django's WSGI handler, as a WSGI server would run it."""
    global _handler
    if _handler is None:
        _handler = WSGIHandler()
    environ: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    if "?" in path:
        environ["PATH_INFO"], environ["QUERY_STRING"] = path.split("?", 1)
    setup_testing_defaults(environ)
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        statuses.append(status)

    response = _handler(environ, start_response)
    try:
        body = b"".join(response)
    finally:
        response.close()  # sends request_finished -> close_old_connections()
    return int(statuses[0].split()[0]), body


@pytest.fixture
def request_cycle() -> Callable[[str], tuple[int, bytes]]:
    return run_request


@contextlib.contextmanager
def stock_django() -> Iterator[None]:
    """Stock Django meanwhile: djpoolapp's patches undone, every connection
    closed before and after."""
    for connection in connections.all(initialized_only=True):
        connection.close()
    patch.uninstall()
    try:
        yield
    finally:
        for connection in connections.all(initialized_only=True):
            connection.close()
        patch.install_for_databases()


@pytest.fixture
def unpatched() -> Iterator[None]:
    """Stock Django for the duration of a test (djpoolapp's patches undone)."""
    with stock_django():
        yield


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None) -> Iterator[None]:
    """pytest-django's, then: the flush that ends each transactional test
    leaves the content types and permissions out of ``post_migrate``.

    Django's ``TransactionTestCase`` flushes every database the test lists
    and then sends ``post_migrate``, whose contenttypes and auth receivers
    re-create every content type and permission: most of each test's
    tear-down (one flush measured on a loaded 2-core machine: 56-182 ms per
    database with them, 4-56 ms without; test_orm, test_pooling and
    test_transparency: 10.5 s of tear-down in all, 3.1 s without), for rows
    no test of this suite reads.  The test databases are
    created with them (``migrate`` runs with the receivers connected); after
    a transactional test they are gone.  A test that needs them creates
    them (``django.contrib.contenttypes.management.create_contenttypes``,
    ``django.contrib.auth.management.create_permissions``).  The content
    type cache is still cleared at each flush, so no test sees an id of a
    deleted row."""
    from django.contrib.auth.management import create_permissions
    from django.contrib.contenttypes.management import create_contenttypes
    from django.contrib.contenttypes.models import ContentType
    from django.db.models.signals import post_migrate

    def clear_content_type_cache(**kwargs: Any) -> None:
        ContentType.objects.clear_cache()

    auth_uid = "django.contrib.auth.management.create_permissions"
    post_migrate.disconnect(create_contenttypes)
    post_migrate.disconnect(create_permissions, dispatch_uid=auth_uid)
    post_migrate.connect(clear_content_type_cache, dispatch_uid="tests.flush")
    try:
        yield
    finally:
        post_migrate.disconnect(dispatch_uid="tests.flush")
        post_migrate.connect(create_contenttypes)
        post_migrate.connect(create_permissions, dispatch_uid=auth_uid)


@pytest.fixture(scope="session")
def django_db_modify_db_settings_xdist_suffix() -> None:
    """No ``_gwN`` suffix from pytest-django under pytest-xdist: the test
    database names hold ``settings.RUN_ID`` (the process id), unique per
    worker already, and the processes a test starts (gunicorn, gevent
    workers) find the names from ``DJPOOL_TEST_RUN_ID`` alone."""


@pytest.fixture
def live_server(request: Any) -> Iterator[Any]:
    """pytest-django's ``live_server``, stopped when the test ends.

    pytest-django's own is session-scoped: its server thread would live on
    for the rest of the run, and the fork tests, which require a process with
    one thread, would fail whenever they ran after a live-server test."""
    from pytest_django.live_server_helper import LiveServer

    server = LiveServer(
        request.config.getvalue("liveserver")
        or os.getenv("DJANGO_LIVE_TEST_SERVER_ADDRESS")
        or "localhost"
    )
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _fresh_pools() -> Iterator[None]:
    """Every test starts and ends with empty pools and closed connections.

    A connection another thread of the test still holds, or one whose owner
    is gone but not yet collected, would stay open on the server after the
    pools are disposed, and be counted by the next test in this process: when
    a pool still has checkouts, collect garbage (abandoned checkouts return
    to the pool) and give live threads up to 2 s to return theirs.

    At the start too: pytest-django's database set-up, or a fixture of another
    test file, may have left this thread's connections open (outside a
    test's ``atomic()`` block), which a test counting server sessions would
    see."""
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close()
    patch.registry.dispose()
    yield
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close()
    if _checked_out():
        gc.collect()
        deadline = time.monotonic() + 2.0
        while _checked_out() and time.monotonic() < deadline:
            time.sleep(0.02)
    patch.registry.dispose()


def _checked_out() -> int:
    """Connections checked out of this process's pools (``pool_status()``)."""
    try:
        return sum(status.checked_out for status in djpoolapp.pool_status().values())
    except Exception:  # settings a test left broken are its own failure
        return 0


ALIASES = [
    pytest.param("default", marks=pytest.mark.postgres, id="postgres"),
    pytest.param("mysql", marks=pytest.mark.mysql, id="mysql"),
]


@pytest.fixture
def parking(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every pool of the test parks (``park=True``, the default; the fast
    path of docs/how_it_works.rst), whatever DJPOOL_OPTIONS the test sets
    or ``DJPOOL_PARK`` says."""
    from djpoolapp import pool

    monkeypatch.setattr(pool, "PARK_OVERRIDE", True)
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close()
    patch.registry.dispose()  # pools made from now on read the override
    yield
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close()
    patch.registry.dispose()


@contextlib.contextmanager
def custom_handler(alias: str, engine: str) -> Iterator[Any]:
    """A ``ConnectionHandler`` whose *alias* uses the project-style backend
    *engine* (``tests.custom_mysql``, ``tests.custom_postgres``), patched by
    djpoolapp."""
    import warnings

    from django.db.utils import ConnectionHandler

    settings_dict = {**connections.settings[alias], "ENGINE": engine}
    databases = {**connections.settings, alias: settings_dict}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Overriding setting DATABASES")
        with override_settings(DATABASES=databases):
            handler = ConnectionHandler(databases)
            patch.install(type(handler[alias]))
            yield handler


@contextlib.contextmanager
def custom_mysql_handler() -> Iterator[Any]:
    """:func:`custom_handler` for the ``mysql`` alias and
    ``tests.custom_mysql`` (an ``init_connection_state()`` override counting
    its calls in ``setup_calls``)."""
    with custom_handler("mysql", "tests.custom_mysql") as handler:
        yield handler
