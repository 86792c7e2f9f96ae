"""example_project/ works as its README says: check, demo, its own tests.

Each command runs in a subprocess, as a user would run it, against
throwaway databases ``djpool_example_<pid>`` created here on the local
PostgreSQL and MariaDB and dropped afterwards.  In the psycopg2 run the
subprocess hides psycopg 3 too, so the example runs on the same driver.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
MANAGE = ROOT / "example_project" / "manage.py"
NAME = f"djpool_example_{os.getpid()}"
SECRET = "Ex4mple-Secret"  # PostgreSQL trusts 127.0.0.1 here: any password works

pytestmark = [pytest.mark.postgres, pytest.mark.mysql, pytest.mark.slow]


def with_database(url: str, name: str, password: str = "") -> str:
    parts = urlsplit(url)
    netloc = parts.netloc
    if password:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':')[0]}:{password}@{host}"
    return parts._replace(netloc=netloc, path=f"/{name}").geturl()


def server_connection(vendor: str):
    """An autocommit driver connection to the server (no database)."""
    if vendor == "postgresql":
        conf = dj_database_url.parse(settings.POSTGRES_URL)
        if settings.DRIVER == "psycopg2":
            import psycopg2 as driver
        else:
            import psycopg as driver
        conn = driver.connect(
            host=conf["HOST"], port=int(conf["PORT"]), user=conf["USER"],
            password=conf["PASSWORD"], dbname="postgres",
        )  # fmt: skip
        conn.autocommit = True
        return conn
    import MySQLdb

    conf = dj_database_url.parse(settings.MYSQL_URL)
    conn = MySQLdb.connect(
        host=conf["HOST"], port=int(conf["PORT"]), user=conf["USER"],
        password=conf["PASSWORD"],
    )  # fmt: skip
    conn.autocommit(True)
    return conn


def databases_named(vendor: str, pattern: str) -> list[str]:
    conn = server_connection(vendor)
    try:
        cursor = conn.cursor()
        if vendor == "postgresql":
            cursor.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", [pattern]
            )
        else:
            cursor.execute(
                "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA "
                "WHERE SCHEMA_NAME LIKE %s",
                [pattern],
            )
        return [row[0] for row in cursor.fetchall()]
    finally:
        conn.close()


def run_sql(vendor: str, *statements: str) -> None:
    conn = server_connection(vendor)
    try:
        cursor = conn.cursor()
        for statement in statements:
            cursor.execute(statement)
    finally:
        conn.close()


@pytest.fixture(scope="module")
def example_env() -> Iterator[dict[str, str]]:
    """Environment for manage.py: throwaway databases on both servers."""
    run_sql("postgresql", f'CREATE DATABASE "{NAME}"')
    run_sql("mysql", f"CREATE DATABASE `{NAME}` CHARACTER SET utf8mb4")
    env = {
        key: value
        for key, value in os.environ.items()
        if key
        not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "MYSQL_URL", "DJPOOL_DISABLE")
    }
    env["DATABASE_URL"] = with_database(settings.POSTGRES_URL, NAME, SECRET)
    env["LEGACY_DATABASE_URL"] = with_database(settings.MYSQL_URL, NAME)
    try:
        yield env
    finally:
        for name in (NAME, f"test_{NAME}"):
            run_sql("postgresql", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            run_sql("mysql", f"DROP DATABASE IF EXISTS `{name}`")
    assert databases_named("postgresql", f"%{NAME}") == []
    assert databases_named("mysql", f"%{NAME}") == []


def manage(
    env: dict[str, str], *args: str, timeout: float = 300
) -> subprocess.CompletedProcess:
    """``python example_project/manage.py ARGS`` with this run's PostgreSQL driver."""
    if settings.DRIVER == "psycopg2":
        command = [
            sys.executable, "-c",
            "import runpy, sys; sys.modules['psycopg'] = None; "
            f"sys.argv = {[str(MANAGE), *args]!r}; "
            f"runpy.run_path({str(MANAGE)!r}, run_name='__main__')",
        ]  # fmt: skip
    else:
        command = [sys.executable, str(MANAGE), *args]
    result = subprocess.run(
        command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def figures(output: str, label: str) -> tuple[int, int]:
    """The (without, with) pair of a summary line of the demo."""
    found = re.search(rf"^\s+{re.escape(label)}\s+(\d+)\s+(\d+)\s*$", output, re.M)
    assert found, f"no {label!r} line in:\n{output}"
    return int(found.group(1)), int(found.group(2))


def test_example_project__check_names_databases_without_password(example_env):
    result = manage(
        example_env, "check", "--database", "default", "--database", "legacy"
    )
    assert "System check identified no issues" in result.stdout
    assert (
        f"default  PostgreSQL root@127.0.0.1:5432/{NAME}  (DATABASE_URL)"
        in result.stderr
    )
    assert f"legacy   MySQL/MariaDB root@127.0.0.1:3306/{NAME}" in result.stderr
    assert SECRET in example_env["DATABASE_URL"]
    assert SECRET not in result.stdout + result.stderr


def test_example_project__demo_shows_pooling_at_work(example_env):
    output = manage(example_env, "demo", "--requests", "20").stdout
    assert SECRET not in output
    assert figures(output, "default: server sessions used") == (20, 1)
    assert figures(output, "legacy: server sessions used") == (20, 1)
    # Stock Django closes its sessions at each request end; the pool keeps one.
    assert figures(output, "default: sessions open between requests") == (0, 1)
    assert figures(output, "legacy: sessions open between requests") == (0, 1)
    assert re.search(r"^\s+default: pool_size=10 checked_out=0 idle=1 ", output, re.M)
    assert re.search(r"^\s+legacy: pool_size=3 checked_out=0 idle=1 ", output, re.M)
    # Re-runnable: migrations and rows are idempotent, the lock was released.
    again = manage(example_env, "demo", "--requests", "3").stdout
    assert figures(again, "legacy: server sessions used") == (3, 1)


def test_example_project__own_tests_pass_on_both_databases(example_env):
    result = manage(example_env, "test", "catalog", "--noinput")
    assert re.search(r"^Ran [1-9]\d* tests? ", result.stderr, re.M), result.stderr
    assert "\nOK\n" in result.stderr
    assert databases_named("postgresql", f"test_{NAME}") == []
    assert databases_named("mysql", f"test_{NAME}") == []


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A fresh directory for the embedded server (pgserver makes the folders
    above it world-readable when run as root, so not pytest's private tmp)."""
    path = Path(tempfile.mkdtemp(prefix="djpool-example-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_example_project__runs_on_embedded_postgres_without_urls(data_dir):
    if importlib.util.find_spec("pgserver") is None:
        pytest.skip("pgserver not installed (pip install 'djpoolapp[example]')")
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "LEGACY_DATABASE_URL",
                       "MYSQL_URL", "DJPOOL_DISABLE")
    }  # fmt: skip
    env["EXAMPLE_DATA_DIR"] = str(data_dir)
    result = manage(env, "demo", "--requests", "5")
    assert (
        f"default  PostgreSQL postgres@{data_dir}/.pgserver:5432/example"
        in result.stderr
    )
    assert f"legacy   SQLite {data_dir}/legacy.sqlite3" in result.stderr
    assert figures(result.stdout, "default: server sessions used") == (5, 1)
    assert "legacy: sqlite, no server sessions to count" in result.stdout
