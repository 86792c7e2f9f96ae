"""example_project/ works as its README says: check, demo, its own tests.

Each command runs in a subprocess, as a user would run it, against
throwaway databases ``djpool_example_<pid>`` created here on the local
PostgreSQL and MariaDB and dropped afterwards.  In the psycopg2 run the
subprocess hides psycopg 3 too, so the example runs on the same driver.
"""

from __future__ import annotations

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

pytestmark = pytest.mark.slow
# Tests taking ``example_env`` use throwaway databases on the machine's
# PostgreSQL and MariaDB (marked so); the others run the example's own
# PostgreSQL server, or no database at all.


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


@pytest.mark.postgres
@pytest.mark.mysql
def test_example_project__check_names_databases_without_password(example_env):
    result = manage(
        example_env, "check", "--database", "default", "--database", "legacy"
    )
    assert "System check identified no issues" in result.stdout
    pg = dj_database_url.parse(settings.POSTGRES_URL)
    my = dj_database_url.parse(settings.MYSQL_URL)
    assert (
        f"default  PostgreSQL root@{pg['HOST']}:{pg['PORT']}/{NAME}  (DATABASE_URL)"
        in result.stderr
    )
    assert (
        f"legacy   MySQL/MariaDB root@{my['HOST']}:{my['PORT']}/{NAME}" in result.stderr
    )
    assert SECRET in example_env["DATABASE_URL"]
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.postgres
@pytest.mark.mysql
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


@pytest.mark.postgres
@pytest.mark.mysql
def test_example_project__own_tests_pass_on_both_databases(example_env):
    result = manage(example_env, "test", "catalog", "--noinput")
    assert re.search(r"^Ran [1-9]\d* tests? ", result.stderr, re.M), result.stderr
    assert "\nOK\n" in result.stderr
    assert databases_named("postgresql", f"test_{NAME}") == []
    assert databases_named("mysql", f"test_{NAME}") == []


def example_env_without_urls(data_dir: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "LEGACY_DATABASE_URL",
                       "MYSQL_URL", "DJPOOL_DISABLE")
    }  # fmt: skip
    env["EXAMPLE_DATA_DIR"] = str(data_dir)
    return env


def modes_up_to_root(path: Path) -> dict[str, tuple[int, int, int]]:
    """(mode, uid, gid) of *path* and every folder above it."""
    found = {}
    for folder in [path, *path.parents]:
        info = folder.stat()
        found[str(folder)] = (info.st_mode, info.st_uid, info.st_gid)
    return found


def accounts() -> str:
    return Path("/etc/passwd").read_text() + Path("/etc/group").read_text()


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A fresh folder, open to other users as a home or project folder
    usually is (mkdtemp makes it private; the test opens its own folder)."""
    parent = Path(tempfile.mkdtemp(prefix="djpool-example-"))
    parent.chmod(0o755)
    try:
        yield parent / "data"
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def test_example_project__runs_its_own_postgres_without_urls(data_dir):
    """No URLs: the example starts PostgreSQL from the system's binaries in its
    own folder, unprivileged, changes nothing above that folder, creates no
    account, and stops the server when it is done."""
    before, users = modes_up_to_root(data_dir.parent), accounts()
    result = manage(example_env_without_urls(data_dir), "demo", "--requests", "5")
    pgdata = data_dir / ".pgdata"
    assert (
        f"default  PostgreSQL postgres@{pgdata}:5432/example  (the example's own "
        "PostgreSQL server" in result.stderr
    )
    assert f"legacy   SQLite {data_dir}/legacy.sqlite3  (SQLite, NOT MySQL" in (
        result.stderr
    )
    assert figures(result.stdout, "default: server sessions used") == (5, 1)
    assert "legacy: sqlite, no server sessions to count" in result.stdout
    assert modes_up_to_root(data_dir.parent) == before
    assert accounts() == users
    info = pgdata.stat()
    assert info.st_mode & 0o777 == 0o700
    if os.geteuid() == 0:  # PostgreSQL refuses root: an unprivileged account
        assert info.st_uid != 0
    assert not (pgdata / "postmaster.pid").exists()  # stopped at exit


@pytest.mark.skipif(os.geteuid() != 0, reason="root only: the folder is ours")
def test_example_project__as_root_never_opens_private_folders(tmp_path):
    """Under root, with a private folder above the data directory, the
    example says why it cannot run PostgreSQL and uses SQLite instead of
    chmodding its way up to / (what pgserver did)."""
    private = Path(tempfile.mkdtemp(prefix="djpool-private-"))  # mode 0700
    try:
        data_dir = private / "data"
        before, users = modes_up_to_root(private), accounts()
        result = manage(example_env_without_urls(data_dir), "check")
        assert (
            f"default  SQLite {data_dir}/default.sqlite3  (SQLite, NOT PostgreSQL"
            in result.stderr
        )
        assert "does not change permissions outside its data directory" in (
            result.stderr
        )
        assert modes_up_to_root(private) == before
        assert private.stat().st_mode & 0o777 == 0o700
        assert accounts() == users
        assert not (data_dir / ".pgdata").exists()
    finally:
        shutil.rmtree(private, ignore_errors=True)


# -- nox -s example on the Python that is there (issue 15, item 1) ---------------
#: The nox session installs psycopg 3 whatever this run's driver: run these
#: (minutes of pip installs) in the psycopg 3 runs only.
only_once = pytest.mark.skipif(
    settings.DRIVER != "psycopg3", reason="driver-independent; runs with psycopg 3"
)


def nox_venv(python: str, where: Path) -> Path:
    """A virtualenv of *python* with nox in it; its interpreter."""
    subprocess.run([python, "-m", "venv", str(where)], check=True, timeout=120)
    interpreter = where / "bin" / "python"
    subprocess.run(
        [str(interpreter), "-m", "pip", "install", "--quiet", "nox"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return interpreter


def working_python(version: str) -> str | None:
    """An interpreter of *version* that runs (a pyenv shim of a version not
    selected with ``pyenv global`` is on PATH but fails), or None."""
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    candidates = [shutil.which(f"python{version}")] + sorted(
        str(path) for path in pyenv.glob(f"versions/{version}.*/bin/python{version}")
    )
    for candidate in candidates:
        if (
            candidate
            and subprocess.run(
                [candidate, "-c", "pass"], capture_output=True, timeout=60
            ).returncode
            == 0
        ):
            return candidate
    return None


def other_python() -> str | None:
    """A supported Python other than the default session's 3.11, if any."""
    for version in ("3.12", "3.13", "3.10"):
        found = working_python(version)
        if found:
            return found
    return None


@only_once
@pytest.mark.postgres
@pytest.mark.mysql
def test_nox_example__runs_on_the_python_that_runs_nox(example_env, tmp_path):
    python = other_python()
    if python is None:
        pytest.skip("no python3.12, 3.13 or 3.10 on PATH")
    interpreter = nox_venv(python, tmp_path / "nox")
    version = subprocess.run(
        [str(interpreter), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    env = {k: v for k, v in example_env.items() if k != "LEGACY_DATABASE_URL"}
    env["EXAMPLE_DATA_DIR"] = str(tmp_path / "data")
    result = subprocess.run(
        [
            str(interpreter), "-m", "nox", "-f", str(ROOT / "noxfile.py"),
            "-s", "example", "--envdir", str(tmp_path / "envs"), "--", "--requests", "3",
        ],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Session example was successful" in output
    assert figures(result.stdout + result.stderr, "default: server sessions used") == (
        3,
        1,
    )
    built = subprocess.run(
        [str(tmp_path / "envs" / "example" / "bin" / "python"), "-c",
         "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert built == version  # the session ran on the Python that ran nox


@only_once
def test_nox_example__fails_loudly_without_a_supported_python(tmp_path):
    old = working_python("3.9")
    if old is None:
        pytest.skip("no Python 3.9 to run nox with")
    interpreter = nox_venv(old, tmp_path / "nox")
    home = tmp_path / "home"  # no ~/.pyenv: nothing but the venv on PATH
    home.mkdir()
    result = subprocess.run(
        [str(interpreter), "-m", "nox", "-f", str(ROOT / "noxfile.py"),
         "-s", "example", "--envdir", str(tmp_path / "envs")],
        cwd=ROOT, env={"PATH": str(interpreter.parent), "HOME": str(home)},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        "Session example aborted: no supported Python found: this is Python 3.9"
        in result.stderr
    )


# -- manage.py serve: the documented way to browse it (item 2) -------------------
@pytest.mark.postgres
@pytest.mark.mysql
def test_example_serve__prepares_a_staff_user_and_names_the_urls(example_env):
    result = manage(example_env, "serve", "--no-server", "127.0.0.1:8765")
    assert "Staff user 'admin' (password 'admin') created" in result.stdout
    assert "http://127.0.0.1:8765/pool/" in result.stdout
    again = manage(example_env, "serve", "--no-server")
    assert "Staff user 'admin' (password 'admin') exists" in again.stdout
    check = manage(
        example_env, "shell", "-c",
        "from django.contrib.auth.models import User; "
        "u = User.objects.get(username='admin'); "
        "print(u.is_staff, u.is_superuser, u.check_password('admin'))",
    )  # fmt: skip
    assert check.stdout.strip().splitlines()[-1] == "True True True"


def test_example_serve__browsable_and_stops_its_own_postgres_on_sigterm(data_dir):
    """``manage.py serve``: the status page answers (403 with a login link for
    an anonymous visitor), and SIGTERM ends the server it started."""
    import signal
    import time
    import urllib.error
    import urllib.request

    from tests.harness import free_port

    port = free_port()
    env = example_env_without_urls(data_dir)
    server = subprocess.Popen(
        [sys.executable, str(MANAGE), "serve", f"127.0.0.1:{port}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                opener.open(f"http://127.0.0.1:{port}/pool/", timeout=5)
            except urllib.error.HTTPError as error:
                page = error.read().decode()
                assert error.code == 403
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                assert time.monotonic() < deadline, "serve did not come up"
                time.sleep(0.5)
        assert 'href="/admin/login/?next=%2Fpool%2F"' in page
        assert (data_dir / ".pgdata" / "postmaster.pid").exists()
    finally:
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=60)[0]
    assert "Staff user 'admin' (password 'admin') created" in output
    assert not (data_dir / ".pgdata" / "postmaster.pid").exists(), output[-2000:]
