"""Credentials, isolation and secrets (CONTRACT sections 2 and 3).

Two aliases with different users never receive each other's connections;
changing an alias's PASSWORD, NAME or USER at run time never hands out a
connection made with the old values; the password never shows in
``pool_status()``, reprs, log records, exception messages or ``manage.py
djpool`` output.  Scenarios 9 and 10 of issue 3.

A second server user (and a second database) is created per test run and
dropped afterwards.  PostgreSQL on this machine trusts 127.0.0.1, so a wrong
password still connects there: the PostgreSQL tests prove "never reused" by
server session ids, MariaDB's additionally by the login failing.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import uuid
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from io import StringIO
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import Error as DjangoDatabaseError
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.test import override_settings

import djpoolapp
from djpoolapp.pool import registry
from tests.conftest import ALIASES

from .conftest import pool_options

pytestmark = [
    pytest.mark.faults,
    pytest.mark.django_db(transaction=True, databases="__all__"),
]


@contextmanager
def allowed_in_this_test(aliases: Iterable[str]) -> Iterator[None]:
    """Let the running test case use aliases that did not exist when it was
    set up (Django refuses "threaded connections" to aliases outside
    ``TestCase.databases``, through a patched ``ensure_connection``)."""
    cells = BaseDatabaseWrapper.ensure_connection.__closure__ or ()
    cases = [
        cell.cell_contents
        for cell in cells
        if isinstance(cell.cell_contents, type)
        and hasattr(cell.cell_contents, "databases")
    ]
    saved = [(case, case.databases) for case in cases]
    for case in cases:
        case.databases = frozenset(case.databases) | set(aliases)
    try:
        yield
    finally:
        for case, databases in saved:
            case.databases = databases


@contextmanager
def database_aliases(**aliases: dict[str, Any]) -> Iterator[None]:
    """``override_settings(DATABASES=...)`` adding or changing *aliases*, with
    Django's connection handler made to see them (it caches DATABASES)."""
    new = {**settings.DATABASES, **aliases}
    with warnings.catch_warnings():
        # "Overriding setting DATABASES can lead to unexpected behavior": yes,
        # hence the handler refresh below.
        warnings.filterwarnings("ignore", "Overriding setting DATABASES", UserWarning)
        override = override_settings(DATABASES=new)
        override.enable()
    outer = connections.settings

    def forget_wrappers() -> None:
        for alias in aliases:
            wrapper = getattr(connections._connections, alias, None)
            if wrapper is not None:
                wrapper.close()
                delattr(connections._connections, alias)

    try:
        forget_wrappers()
        connections.__dict__["settings"] = connections.configure_settings(new)
        with allowed_in_this_test(aliases):
            yield
    finally:
        forget_wrappers()
        connections.__dict__["settings"] = outer
        override.disable()


def alias_settings(base: str, **changes: Any) -> dict[str, Any]:
    """A copy of alias *base*'s settings (its test database) with *changes*."""
    result = copy.deepcopy(connections[base].settings_dict)
    result.update(changes)
    return result


@pytest.fixture(params=ALIASES)
def server(request, admin) -> Iterator[dict[str, Any]]:
    """A second user and a second database on the server of the param alias,
    created for this test and dropped afterwards."""
    alias = request.param
    run = settings.RUN_ID
    user = f"djpool_other_{run}"
    password = f"djpool-s3cret-{uuid.uuid4().hex}"
    admin_ = admin(alias)
    database = admin_.database
    alt_database = f"{database}_alt"
    if admin_.vendor == "postgresql":
        setup = [
            f'DROP DATABASE IF EXISTS "{alt_database}" WITH (FORCE)',
            f'DROP ROLE IF EXISTS "{user}"',
            f"CREATE ROLE \"{user}\" LOGIN PASSWORD '{password}'",
            f'CREATE DATABASE "{alt_database}"',
        ]
        teardown = [
            f'DROP DATABASE IF EXISTS "{alt_database}" WITH (FORCE)',
            f"SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
            f"WHERE usename = '{user}'",
            f'DROP ROLE IF EXISTS "{user}"',
        ]
    else:
        setup = [
            f"DROP USER IF EXISTS '{user}'@'%'",
            f"DROP DATABASE IF EXISTS `{alt_database}`",
            f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'",
            f"CREATE DATABASE `{alt_database}`",
            f"GRANT ALL PRIVILEGES ON `{database}`.* TO '{user}'@'%'",
            f"GRANT ALL PRIVILEGES ON `{alt_database}`.* TO '{user}'@'%'",
        ]
        teardown = [
            f"DROP DATABASE IF EXISTS `{alt_database}`",
            f"DROP USER IF EXISTS '{user}'@'%'",
        ]
    for sql in setup:
        admin_.execute(sql)
    try:
        yield {
            "alias": alias, "vendor": admin_.vendor, "user": user,
            "password": password, "database": database,
            "alt_database": alt_database, "admin": admin_,
        }  # fmt: skip
    finally:
        for connection in connections.all(initialized_only=True):
            connection.close()
        registry.dispose()
        for sql in teardown:
            admin_.execute(sql)


def whoami(serve, alias: str) -> dict[str, Any]:
    response = serve(f"/faults/whoami/{alias}/")
    assert response.status == 200, response.error
    return json.loads(response.body)


def test_two_users__never_receive_each_others_connections(server, serve):
    """Aliases as_root and as_other on the same server and database, used in
    turn by 4 threads: every request runs as its alias's user, and no server
    session ever serves both aliases."""
    base = server["alias"]
    root_user = connections[base].settings_dict["USER"]
    aliases = {
        "as_root": alias_settings(base),
        "as_other": alias_settings(
            base, USER=server["user"], PASSWORD=server["password"]
        ),
    }
    expected = {"as_root": root_user, "as_other": server["user"]}
    sessions: dict[str, set[int]] = {"as_root": set(), "as_other": set()}
    problems: list[str] = []
    lock = threading.Lock()

    def client(offset: int) -> None:
        try:
            for number in range(60):
                alias = ("as_root", "as_other")[(number + offset) % 2]
                seen = whoami(serve, alias)
                with lock:
                    sessions[alias].add(seen["session"])
                    if seen["user"] != expected[alias]:
                        problems.append(f"{alias} ran as {seen['user']}")
        except BaseException as error:  # reported below
            problems.append(repr(error))
        finally:
            connections.close_all()

    with database_aliases(**aliases):
        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in threads)
        status = djpoolapp.pool_status()
    assert not problems, problems[:5]
    assert sessions["as_root"] and sessions["as_other"]
    assert not sessions["as_root"] & sessions["as_other"]
    assert status["as_other"].database.startswith(f"{server['user']}@")
    assert status["as_root"].database.startswith(f"{root_user}@")


def change_alias(how: str, alias: str, base_settings: dict[str, Any], **changes: Any):
    """Change settings of *alias* at run time: by override_settings(DATABASES)
    or by editing the settings dict the alias's wrappers share (how a
    credential-rotation hook would)."""
    if how == "override_settings":
        return database_aliases(**{alias: {**base_settings, **changes}})

    @contextmanager
    def mutate() -> Iterator[None]:
        shared = connections[alias].settings_dict
        old = {key: shared[key] for key in changes}
        shared.update(changes)
        try:
            yield
        finally:
            shared.update(old)

    return mutate()


@pytest.mark.parametrize("how", ["override_settings", "settings_dict"])
def test_runtime_change__never_reuses_a_connection_made_with_old_values(
    server, serve, how
):
    """PASSWORD, NAME and USER of an alias change at run time: each change
    gets connections made with the new values (new server sessions, the new
    user and database), never one pooled with the old ones; a wrong
    password fails to log in on MariaDB instead of reusing a session."""
    base = server["alias"]
    admin = server["admin"]
    other = alias_settings(base, USER=server["user"], PASSWORD=server["password"])
    root_user = connections[base].settings_dict["USER"]
    wrong = f"djpool-wrong-{uuid.uuid4().hex}"
    with database_aliases(rotating=other), pool_options("rotating", pool_size=2):
        first = whoami(serve, "rotating")
        assert (first["user"], first["database"]) == (
            server["user"],
            server["database"],
        )
        seen = {first["session"]}

        with change_alias(how, "rotating", other, PASSWORD=wrong):
            response = serve("/faults/whoami/rotating/")
            if server["vendor"] == "mysql":
                assert response.status == 500
                assert isinstance(response.error, DjangoDatabaseError)
                assert "Access denied" in str(response.error)
            else:  # trust authentication: it logs in, on a new session
                assert response.status == 200, response.error
                session = json.loads(response.body)["session"]
                assert session not in seen
                seen.add(session)
            admin.wait_gone([first["session"]])  # closed, not kept

        again = whoami(serve, "rotating")
        assert again["session"] not in seen
        seen.add(again["session"])

        with change_alias(how, "rotating", other, NAME=server["alt_database"]):
            moved = whoami(serve, "rotating")
            assert moved["database"] == server["alt_database"]
            assert moved["session"] not in seen
            seen.add(moved["session"])

        with change_alias(
            how, "rotating", other, USER=root_user,
            PASSWORD=connections[base].settings_dict["PASSWORD"],
        ):  # fmt: skip
            as_root = whoami(serve, "rotating")
            assert as_root["user"] == root_user
            assert as_root["session"] not in seen
            seen.add(as_root["session"])

        back = whoami(serve, "rotating")
        assert (back["user"], back["database"]) == (server["user"], server["database"])
        assert back["session"] not in seen


def test_password__never_shown(server, serve, caplog):
    """The password of a pooled alias appears nowhere djpoolapp writes:
    pool_status() (fields, repr, JSON), reprs of pools and connections, the
    djpoolapp logger's records at DEBUG (pool creation, checkouts,
    invalidation, exhaustion, disposal, failed logins), exception messages
    and ``manage.py djpool status|check`` output."""
    base = server["alias"]
    password = server["password"]
    wrong = f"djpool-wrong-{uuid.uuid4().hex}"
    other = alias_settings(base, USER=server["user"], PASSWORD=password)
    texts: list[str] = []
    caplog.set_level(logging.DEBUG, logger="djpoolapp")

    with (
        database_aliases(secret=other),
        pool_options("secret", pool_size=1, max_overflow=0, timeout=0.2),
    ):
        first = whoami(serve, "secret")
        holder = connections.create_connection("secret")
        holder.ensure_connection()
        texts.append(repr(holder.connection))
        texts.extend(repr(pool) for pool in registry.pools("secret"))
        texts.extend(repr(pool.pool) for pool in registry.pools("secret"))
        exhausted = serve("/faults/whoami/secret/")  # pool_size=1, held above
        assert exhausted.status == 500
        assert isinstance(exhausted.error, djpoolapp.PoolTimeout)
        texts.append(str(exhausted.error))
        holder.close()
        server["admin"].kill([first["session"]])  # an invalidation, logged
        whoami(serve, "secret")
        status = djpoolapp.pool_status()
        texts += [repr(status), json.dumps({k: v.as_dict() for k, v in status.items()})]
        for args in (
            ["status"],
            ["status", "--json"],
            ["check", "--database", "secret"],
        ):
            out, err = StringIO(), StringIO()
            call_command("djpool", *args, stdout=out, stderr=err)
            texts += [out.getvalue(), err.getvalue()]
        assert "secret" in texts[-2]  # the check did run for the alias
        if server["vendor"] == "mysql":
            with change_alias("settings_dict", "secret", other, PASSWORD=wrong):
                failed = serve("/faults/whoami/secret/")
                assert failed.status == 500
                texts.append(str(failed.error))
                texts.append(repr(failed.error.__cause__))
        djpoolapp.dispose("secret")

    formatter = logging.Formatter("%(message)s %(args)s")
    records = [r for r in caplog.records if r.name.startswith("djpoolapp")]
    assert any("Invalidated" in r.getMessage() for r in records)
    assert any("no connection available" in r.getMessage() for r in records)
    texts += [formatter.format(record) for record in records]
    texts += [record.exc_text or "" for record in records]
    assert any(f"{server['user']}@" in text for text in texts)  # details do show
    for secret in (password, wrong):
        leaks = [text for text in texts if secret in text]
        assert not leaks, leaks[:3]
    assert other["PASSWORD"] == password  # the alias really logged in with it
