"""``manage.py djpool status | check | bench`` against the real servers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from io import StringIO
from pathlib import Path

import dj_database_url
import pytest
from django.conf import settings as django_settings
from django.core.management import CommandError, ManagementUtility, call_command
from django.db import connections
from django.test import override_settings

import djpoolapp
from djpoolapp import bench, patch
from djpoolapp.pool import registry
from djpoolapp.tagging import host_name
from tests.conftest import ALIASES
from tests.testapp.models import Item

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def djpool(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("djpool", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def use(alias: str) -> None:
    """One query through the pool of *alias*, connection returned."""
    connections[alias].close()  # a connection left open by test set-up
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1")
    connections[alias].close()


def server_value(alias: str, sql: str) -> str:
    with connections[alias].cursor() as cursor:
        cursor.execute(sql)
        return str(cursor.fetchone()[0])


def server_tls(alias: str) -> bool:
    """Whether the server sees TLS on a pooled session of *alias*."""
    if connections[alias].vendor == "postgresql":
        sql = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        return server_value(alias, sql) == "True"
    with connections[alias].cursor() as cursor:
        cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        return bool(cursor.fetchone()[1])


# -- status ------------------------------------------------------------------
@pytest.mark.postgres
@pytest.mark.mysql
def test_status__table_of_every_pooled_alias():
    use("default")
    use("mysql")
    out, _ = djpool("status")
    lines = out.splitlines()
    assert lines[0].split() == [
        "alias", "vendor", "database", "pool_mode", "size", "max_overflow",
        "checked_out", "idle", "overflow", "opened", "recycled", "invalidated",
        "timeouts",
    ]  # fmt: skip
    rows = {line.split()[0]: line.split() for line in lines[1:3]}
    for alias, vendor in (("default", "postgresql"), ("mysql", "mysql")):
        name = connections[alias].settings_dict["NAME"]
        user = connections[alias].settings_dict["USER"]
        assert rows[alias][1:4] == [
            vendor,
            f"{user}@127.0.0.1:{connections[alias].settings_dict['PORT']}/{name}",
            "request",
        ]
        size, max_overflow, checked_out, idle, overflow, opened = map(
            int, rows[alias][4:10]
        )
        assert (size, max_overflow, checked_out, idle, overflow) == (5, 10, 0, 1, 0)
        assert opened >= 1
    assert "This process's pools" in lines[-1]


@pytest.mark.postgres
@pytest.mark.mysql
def test_status__json_is_pool_status():
    use("default")
    out, _ = djpool("status", "--json")
    expected = {alias: s.as_dict() for alias, s in djpoolapp.pool_status().items()}
    assert json.loads(out) == expected
    assert expected["default"]["idle"] == 1


@pytest.mark.postgres
def test_status__one_alias_and_unknown_alias():
    out, _ = djpool("status", "--json", "--database", "default")
    assert list(json.loads(out)) == ["default"]
    with pytest.raises(CommandError, match="database alias 'lite' is not pooled"):
        djpool("status", "--database", "lite")


def status_row(out: str, alias: str) -> dict[str, str]:
    """The row of *alias* in ``djpool status``'s table, by column title."""
    lines = out.splitlines()
    row = next(line.split() for line in lines[1:] if line.split()[:1] == [alias])
    return dict(zip(lines[0].split(), row, strict=True))


@pytest.mark.postgres
@pytest.mark.mysql
@pytest.mark.parametrize("mode", ["request", "transaction"])
def test_status__pool_mode_of_each_alias_before_and_after_its_pool_opens(mode):
    other = {"request": "transaction", "transaction": "request"}[mode]
    options = {"pool_mode": mode, "aliases": {"mysql": {"pool_mode": other}}}
    expected = {"default": mode, "mysql": other}
    with override_settings(DJPOOL_OPTIONS=options):  # disposes the pools
        for opened in (False, True):
            if opened:
                use("default")
                use("mysql")
            statuses = djpoolapp.pool_status()
            assert {a: statuses[a].pool_created for a in expected} == {
                "default": opened,
                "mysql": opened,
            }
            assert {a: statuses[a].pool_mode for a in expected} == expected
            out, _ = djpool("status")
            assert {a: status_row(out, a)["pool_mode"] for a in expected} == expected
            data = json.loads(djpool("status", "--json")[0])
            assert {a: data[a]["pool_mode"] for a in expected} == expected


@pytest.mark.django_db(transaction=False, databases=[])
def test_status__pool_mode_is_the_last_field_with_a_default():
    """Positional construction of PoolStatus (its 12 fields without a default,
    as before pool_mode) still works."""
    fields = list(djpoolapp.PoolStatus.__dataclass_fields__)
    assert fields[-1] == "pool_mode"
    status = djpoolapp.PoolStatus("a", "postgresql", "", 5, 10, 0, 0, 0, 0, 0, 0, 0)
    assert status.pool_mode == "request"
    assert status.as_dict()["pool_mode"] == "request"


# -- check -------------------------------------------------------------------
@pytest.mark.parametrize("alias", ALIASES)
def test_check__server_tls_and_timings(alias):
    vendor = connections[alias].vendor
    out, _ = djpool("check", "--database", alias)
    version_sql = {"postgresql": "SHOW server_version", "mysql": "SELECT VERSION()"}
    version = server_value(alias, version_sql[vendor])
    assert f"  server          {connections[alias].display_name} {version}\n" in out
    expected_tls = "yes (" if server_tls(alias) else "no\n"
    assert f"  TLS             {expected_tls}" in out
    times = {
        label: float(value)
        for label, value in re.findall(r"^  ([a-z ]+?) +([0-9.]+) ms", out, re.M)
    }
    assert set(times) == {"new connection", "checkout", "checkin", "round trip"}
    assert all(value > 0 for value in times.values())
    assert times["checkout"] < times["new connection"]  # what the pool is for
    limit = server_value(
        alias,
        "SHOW max_connections"
        if vendor == "postgresql"
        else "SELECT @@max_connections",
    )
    assert (
        f"pool_size 5 + max_overflow 10 = 15 per process; server max_connections {limit}"
        in out
    )
    assert out.rstrip().endswith(
        "OK: 1 alias(es) reachable through the pool, sized within the server's "
        "max_connections."
    )


@pytest.mark.parametrize("mode", ["request", "transaction"])
@pytest.mark.parametrize("alias", ALIASES)
def test_check__shows_the_pool_mode(alias, mode):
    with override_settings(DJPOOL_OPTIONS={"aliases": {alias: {"pool_mode": mode}}}):
        out, _ = djpool("check", "--database", alias)
    (line,) = [line for line in out.splitlines() if line.startswith("  pool_mode ")]
    assert line.split()[1] == mode
    meaning = {"request": "per request", "transaction": "only while"}
    assert meaning[mode] in line


@pytest.mark.parametrize("alias", ALIASES)
def test_check__report_figures(alias):
    connections[alias].close()
    opened = djpoolapp.pool_status(alias)[alias].opened
    report = bench.check_alias(alias, samples=5)
    status = djpoolapp.pool_status(alias)[alias]
    assert status.checked_out == 0  # all returned
    assert status.opened - opened <= 1  # timed on one pooled connection
    assert (report.alias, report.vendor) == (alias, connections[alias].vendor)
    assert report.tls_in_use is server_tls(alias)
    assert report.database.endswith("/" + connections[alias].settings_dict["NAME"])
    assert 0 < report.checkout_ms < report.connect_ms
    assert 0 < report.round_trip_ms < 1000


@pytest.fixture
def unreachable(monkeypatch):
    """Point an alias at a port nobody listens on (restored afterwards)."""

    def point(alias: str) -> None:
        connections[alias].close()
        monkeypatch.setitem(connections[alias].settings_dict, "PORT", "1")

    yield point
    for connection in connections.all(initialized_only=True):
        connection.close()


@pytest.mark.parametrize("alias", ALIASES)
def test_check__unreachable_alias_is_a_clear_command_error(alias, unreachable):
    unreachable(alias)
    with pytest.raises(CommandError) as raised:
        djpool("check", "--database", alias)
    message = str(raised.value)
    name = connections[alias].settings_dict["NAME"]
    assert message.startswith(
        f"djpool check failed: database alias '{alias}' (root@127.0.0.1:1/{name}) "
        "is unreachable: "
    )
    assert re.search(r"refused|Can't connect", message)
    assert raised.value.returncode == 1


@pytest.mark.postgres
@pytest.mark.mysql
def test_check__reports_the_reachable_aliases_then_fails(unreachable):
    unreachable("mysql")
    out, err = StringIO(), StringIO()
    with pytest.raises(CommandError, match="database alias 'mysql'"):
        call_command("djpool", "check", stdout=out, stderr=err)
    assert out.getvalue().startswith("default (postgresql, ")
    assert err.getvalue().startswith("mysql: FAILED: database alias 'mysql'")


@pytest.mark.postgres
def test_check__command_line_exit_code_without_then_with_traceback(unreachable, capsys):
    unreachable("default")
    argv = ["manage.py", "djpool", "check", "--database", "default"]
    with pytest.raises(SystemExit) as exited:
        ManagementUtility(argv).execute()
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "CommandError: djpool check failed: database alias 'default'" in err
    assert "Traceback" not in err
    with pytest.raises(CommandError, match="database alias 'default'"):
        ManagementUtility([*argv, "--traceback"]).execute()


# -- bench -------------------------------------------------------------------
def bench_table(out: str) -> dict[str, list[str]]:
    return {
        label: line.split()[-4:]
        for line in out.splitlines()
        for label in ("without pool", "with pool")
        if line.startswith(f"  {label}  ")
    }


@pytest.mark.parametrize("alias", ALIASES)
def test_bench__without_and_with_pool(alias):
    items = Item.objects.using(alias).count()
    tables = connections[alias].introspection.table_names()
    out, _ = djpool("bench", "--database", alias, "--requests", "40")
    table = bench_table(out)
    assert set(table) == {"without pool", "with pool"}
    assert table["without pool"][3] == "40"  # a new server session per request
    assert table["with pool"][3] == "1"  # one thread: one pooled session
    for p50, p95, rate, _ in table.values():
        assert 0 < float(p50) <= float(p95)
        assert float(rate) > 0
    assert re.search(r"with the pool: [0-9.]+x faster at p50", out)
    # Read-only, and everything put back.
    assert Item.objects.using(alias).count() == items
    assert connections[alias].introspection.table_names() == tables
    assert patch.is_installed()
    assert connections[alias].settings_dict["CONN_MAX_AGE"] == 0
    assert djpoolapp.pool_status(alias)[alias].checked_out == 0


@pytest.mark.postgres
def test_bench__pool_beats_a_connection_per_request_on_postgres():
    result = bench.run_bench("default", requests=60, threads=2)
    assert result.unpooled.sessions == 60
    assert 1 <= result.pooled.sessions <= 2
    assert result.pooled.p50 < result.unpooled.p50
    assert result.pooled.requests_per_second > result.unpooled.requests_per_second
    assert result.speedup_p50 > 1


@pytest.mark.mysql
def test_bench__threads_share_the_pool(server_sessions):
    result = bench.run_bench("mysql", requests=80, threads=4)
    assert result.unpooled.sessions == 80
    assert 1 <= result.pooled.sessions <= 4
    assert len(result.pooled.latencies) == 80
    assert server_sessions("mysql") <= 4  # what the pool keeps open afterwards


@pytest.mark.postgres
def test_bench__restores_the_aliases_conn_max_age(monkeypatch):
    monkeypatch.setitem(connections["default"].settings_dict, "CONN_MAX_AGE", 30)
    result = bench.run_bench("default", requests=5)
    assert result.unpooled.sessions == 5  # forced to 0 during the run
    assert connections["default"].settings_dict["CONN_MAX_AGE"] == 30


@pytest.mark.postgres
def test_bench__progress_lines_on_long_runs(monkeypatch):
    calls: list[tuple[str, int, int]] = []
    monkeypatch.setattr(bench, "PROGRESS_EVERY", 0.0)
    bench.run_bench("default", requests=60, progress=lambda *call: calls.append(call))
    labels = {label for label, _, _ in calls}
    assert "without pool" in labels
    assert all(0 <= done <= total == 60 for _, done, total in calls)


class Terminal(StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.mark.postgres
def test_bench__progress_on_a_terminal_is_erased_before_the_table(monkeypatch):
    monkeypatch.setattr(bench, "PROGRESS_EVERY", 0.0)
    out, err = StringIO(), Terminal()
    call_command("djpool", "bench", "--requests", "60", stdout=out, stderr=err)
    progress = err.getvalue()
    assert "\r  without pool: " in progress
    assert "\n" not in progress  # one line, rewritten in place
    assert progress.endswith("/60 requests\x1b[K\r\x1b[K")  # then erased
    assert "\x1b[31" not in progress  # not styled as an error
    assert bench_table(out.getvalue())["without pool"][3] == "60"


@pytest.mark.postgres
def test_bench__no_progress_when_stderr_is_not_a_terminal(monkeypatch):
    """Piped or redirected: a last "181/200 requests" line read after the
    table looked like lost requests."""
    monkeypatch.setattr(bench, "PROGRESS_EVERY", 0.0)
    out, err = djpool("bench", "--requests", "60")
    assert err == ""
    assert bench_table(out)["with pool"][3] == "1"


@pytest.mark.postgres
def test_bench__works_with_a_strict_project_setup():
    strict = {
        "ALLOWED_HOSTS": ["www.example.com"],
        "SECURE_SSL_REDIRECT": True,
        "MIDDLEWARE": [
            "django.middleware.security.SecurityMiddleware",
            "django.middleware.common.CommonMiddleware",
        ],
    }
    with override_settings(**strict):
        result = bench.run_bench("default", requests=5)
    assert result.pooled.sessions == 1


@pytest.mark.postgres
def test_bench__http_errors_are_reported():
    common = ["django.middleware.common.CommonMiddleware"]
    with override_settings(ALLOWED_HOSTS=[], DEBUG=False, MIDDLEWARE=common):
        with pytest.raises(
            CommandError, match="djpool bench: the benchmark request answered HTTP 400"
        ):
            djpool("bench", "--requests", "3")
    assert patch.is_installed()


def test_bench__unpooled_alias_is_a_command_error():
    with pytest.raises(
        CommandError, match="database alias 'lite' is not pooled by djpoolapp"
    ):
        djpool("bench", "--database", "lite")


@pytest.mark.postgres
def test_bench__unreachable_alias_is_a_command_error(unreachable):
    unreachable("default")
    with pytest.raises(
        CommandError, match=r"djpool bench: database alias 'default' .* is unreachable"
    ):
        djpool("bench", "--requests", "3")


# -- issue 15: what the tools say in a fresh process, when disabled, at limits -----
ROOT = Path(__file__).resolve().parent.parent


def fresh_process(*args: str, env: dict[str, str] | None = None) -> str:
    """``django-admin djpool ARGS`` in a new process (tests.settings)."""
    command = [sys.executable, "-m", "django", "djpool", *args]
    environ = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", **(env or {})}
    result = subprocess.run(
        command, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.postgres
def test_status__fresh_process_shows_settings_and_says_no_pool_yet():
    out = fresh_process("status")
    settings_dict = connections["default"].settings_dict
    row = next(line.split() for line in out.splitlines() if line.startswith("default "))
    # The database the settings name (the subprocess is not a test run: NAME).
    name = dj_database_url.parse(django_settings.POSTGRES_URL)["NAME"]
    assert row[2] == f"{settings_dict['USER']}@127.0.0.1:{settings_dict['PORT']}/{name}"
    assert "no pool created yet in this process" in out
    data = json.loads(fresh_process("status", "--json"))
    assert data["default"]["pool_created"] is False
    assert data["default"]["database"] == row[2]


@pytest.mark.postgres
def test_status__pool_created_once_connected():
    use("default")
    assert djpoolapp.pool_status("default")["default"].pool_created is True
    out, _ = djpool("status", "--database", "default")
    assert "no pool created yet" not in out


def test_status__disabled_says_why_nothing_is_pooled():
    out = fresh_process("status", env={"DJPOOL_DISABLE": "1"})
    assert out.startswith(
        "No database alias is pooled by djpoolapp: pooling is switched off: the "
        "environment variable DJPOOL_DISABLE=1 is set in this process"
    )


@pytest.mark.postgres
def test_status_all__server_view_of_every_process(server_sessions):
    """A second process (its own pool, its own pid) holds two idle pooled
    sessions: ``--all`` in this process shows them from the server's side."""
    script = textwrap.dedent(
        """
        import sys, django
        django.setup()
        from django.db import connections
        from djpoolapp import pool_status
        wrappers = [connections.create_connection("default") for _ in range(2)]
        for wrapper in wrappers:
            wrapper.ensure_connection()  # two checkouts: two server sessions
        for wrapper in wrappers:
            wrapper.close()  # both back to the pool, idle
        print(pool_status("default")["default"].idle, flush=True)
        sys.stdin.read()
        """
    )
    other = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout.readline().strip() == "2"
        # The other process uses the non-test database; look at that one.
        connections["default"].close()
        settings_dict = connections["default"].settings_dict
        test_name = settings_dict["NAME"]
        settings_dict["NAME"] = dj_database_url.parse(django_settings.POSTGRES_URL)[
            "NAME"
        ]
        registry.dispose("default")
        try:
            out, _ = djpool("status", "--all", "--database", "default")
            data = json.loads(djpool("status", "--all", "--json")[0])
        finally:
            connections["default"].close()
            registry.dispose("default")
            settings_dict["NAME"] = test_name
        rows = {
            int(line.split()[1]): line.split()
            for line in out.splitlines()
            if line.startswith(host_name() + " ")
        }
        assert rows[other.pid][2:6] == [
            "default",
            "2",
            "0",
            "2",
        ]  # sessions, active, idle
        assert rows[os.getpid()][-2:] == ["this", "process"]
        server = data["default"]["server"]
        theirs = next(p for p in server["processes"] if p["pid"] == other.pid)
        assert (theirs["sessions"], theirs["idle"], theirs["this_process"]) == (
            2,
            2,
            False,
        )
        assert theirs["host"] == host_name()
    finally:
        other.communicate("", timeout=30)


# -- check: limits, exhaustion and configuration errors are not "unreachable" --
@pytest.mark.parametrize("alias", ALIASES)
def test_check__capacity_above_max_connections_fails(alias):
    vendor = connections[alias].vendor
    limit = int(
        server_value(
            alias,
            "SHOW max_connections"
            if vendor == "postgresql"
            else "SELECT @@max_connections",
        )
    )
    options = {"aliases": {alias: {"pool_size": 100, "max_overflow": limit}}}
    connections[alias].close()
    with override_settings(DJPOOL_OPTIONS=options):
        out, err = StringIO(), StringIO()
        with pytest.raises(CommandError) as raised:
            call_command("djpool", "check", "--database", alias, stdout=out, stderr=err)
    total = 100 + limit
    assert f"= {total} per process; server max_connections {limit}  EXCEEDS" in (
        out.getvalue()
    )
    assert "OK" not in out.getvalue()
    assert f"= {total} connections per process exceed the server's max_connections" in (
        str(raised.value)
    )


@pytest.mark.parametrize("alias", ALIASES)
def test_check__exhausted_pool_is_not_unreachable(alias):
    options = {"aliases": {alias: {"pool_size": 1, "max_overflow": 0, "timeout": 0.2}}}
    connections[alias].close()
    with override_settings(DJPOOL_OPTIONS=options):
        connections[alias].ensure_connection()  # holds the only connection
        try:
            with pytest.raises(CommandError) as raised:
                djpool("check", "--database", alias)
        finally:
            connections[alias].close()
    message = str(raised.value)
    assert "the pool is exhausted" in message
    assert "unreachable" not in message


@pytest.mark.parametrize("alias", ALIASES)
def test_check__configuration_error_is_reported_as_such(
    alias, unreachable, monkeypatch
):
    """A pool option put in DATABASES OPTIONS reaches the driver, which
    refuses it: a configuration error, not an unreachable server."""
    unreachable(alias)  # port 1: "unreachable" if the driver even tried
    settings_dict = connections[alias].settings_dict
    monkeypatch.setitem(
        settings_dict, "OPTIONS", {**settings_dict["OPTIONS"], "pool_size": 5}
    )
    with pytest.raises(CommandError) as raised:
        djpool("check", "--database", alias)
    message = str(raised.value)
    assert f"database alias '{alias}'" in message
    assert "has a configuration error" in message
    assert "pool options belong in DJPOOL_OPTIONS" in message
    assert "unreachable" not in message


@pytest.mark.parametrize("alias", ALIASES)
def test_check__connect_steps_name_tls_only_when_used(alias):
    out, _ = djpool("check", "--database", alias)
    line = next(x for x in out.splitlines() if "new connection" in x)
    if server_tls(alias):
        assert line.endswith("(driver connect: TCP, TLS, authentication)")
    else:
        assert line.endswith("(driver connect: TCP, authentication)")


# -- bench: no ROOT_URLCONF needed ---------------------------------------------
@pytest.mark.postgres
def test_bench__works_with_settings_configure_and_no_root_urlconf():
    conf = connections["default"].settings_dict
    script = textwrap.dedent(
        f"""
        import django
        from django.conf import settings
        from django.core.management import call_command
        settings.configure(
            DATABASES={{"default": {{
                "ENGINE": "django.db.backends.postgresql", "NAME": "postgres",
                "USER": {conf["USER"]!r}, "PASSWORD": {conf["PASSWORD"]!r},
                "HOST": {conf["HOST"]!r}, "PORT": {str(conf["PORT"])!r},
            }}}},
            INSTALLED_APPS=["djpoolapp"],
        )
        django.setup()
        assert not hasattr(settings, "ROOT_URLCONF")
        call_command("djpool", "bench", "--requests", "5")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert bench_table(result.stdout)["without pool"][3] == "5"
    assert bench_table(result.stdout)["with pool"][3] == "1"
