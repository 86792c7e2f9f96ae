"""Fork safety (CONTRACT section 2): after ``fork()`` the child opens its own
connections and never sends a byte on the ones it inherited; the parent's
sessions live on untouched.  Scenario 6 of issue 3.

At fork time the parent has three kinds of pooled connections: idle in the
pool, held by Django's connection in the forking thread (with a temporary
table, i.e. session state), and held by another wrapper inside an open
transaction (as another thread's would be).  The child serves requests, then
closes everything it can reach, collects garbage and exits.  "Not a byte"
is checked three ways: the inherited sockets point at /dev/null in the
child, the server's last-activity mark of every parent session is unchanged
(PostgreSQL ``state_change``; MariaDB ``TIME_MS`` kept growing), and the
parent's sessions still work with their state intact.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import threading
import time
import traceback
from typing import Any

import pytest
from django.db import Error as DjangoDatabaseError
from django.db import connections

import djpoolapp
from djpoolapp import pool as pool_module
from tests.conftest import ALIASES, run_request

from .conftest import pool_options
from .servers import SESSION_ID_SQL, park_idle, session_id

pytestmark = [
    pytest.mark.faults,
    pytest.mark.django_db(transaction=True, databases="__all__"),
]

CHILD_TIMEOUT = 30.0


def fd_target(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except FileNotFoundError:
        return "closed"


def child_work(alias: str, fds: list[int], others: list[Any]) -> dict[str, Any]:
    """Runs in the child: what it saw and did."""
    result: dict[str, Any] = {"fds": {fd: fd_target(fd) for fd in fds}, "sessions": []}
    for _ in range(3):
        status, body = run_request(f"/session/{alias}/")
        assert status == 200, body[:300]
        result["sessions"].append(json.loads(body)["session"])
    status = djpoolapp.pool_status(alias)[alias]
    result["opened"], result["checked_out"] = status.opened, status.checked_out
    # Everything a careless child might do to inherited connections:
    for wrapper in others:
        wrapper.close()
    connections.close_all()
    djpoolapp.dispose()
    gc.collect()
    return result


def server_marks(admin, sessions: list[int]) -> dict[int, Any]:
    """The server's last-activity mark of each session."""
    if admin.vendor == "postgresql":
        rows = admin.rows(
            "SELECT pid, state_change, state FROM pg_stat_activity WHERE pid = ANY(%s)",
            [sessions],
        )
        return {pid: (changed, state) for pid, changed, state in rows}
    ids = ",".join(str(int(session)) for session in sessions)
    rows = admin.rows(
        "SELECT ID, TIME_MS, COMMAND FROM information_schema.PROCESSLIST "
        f"WHERE ID IN ({ids})"
    )
    return {int(i): (float(ms), command) for i, ms, command in rows}


def run_os_fork(alias: str, fds: list[int], others: list[Any]) -> dict[str, Any]:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 0
        try:
            os.close(read_end)
            try:
                payload = {"ok": child_work(alias, fds, others)}
            except BaseException:
                payload = {"error": traceback.format_exc()}
            os.write(write_end, json.dumps(payload, default=str).encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    deadline = time.monotonic() + CHILD_TIMEOUT
    try:
        while True:
            waited, _ = os.waitpid(pid, os.WNOHANG)
            if waited:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                raise AssertionError("the forked child hangs")
            time.sleep(0.02)
        while chunk := os.read(read_end, 65536):
            chunks.append(chunk)
    finally:
        os.close(read_end)
    return json.loads(b"".join(chunks) or b'{"error": "no output"}')


def _mp_child(pipe: Any, alias: str, fds: list[int], others: list[Any]) -> None:
    try:
        payload = {"ok": child_work(alias, fds, others)}
    except BaseException:
        payload = {"error": traceback.format_exc()}
    pipe.send(json.dumps(payload, default=str))


def run_multiprocessing(
    alias: str, fds: list[int], others: list[Any]
) -> dict[str, Any]:
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_mp_child, args=(sender, alias, fds, others))
    process.start()
    sender.close()
    try:
        if not receiver.poll(CHILD_TIMEOUT):
            raise AssertionError("the multiprocessing child hangs")
        payload = json.loads(receiver.recv())
    finally:
        process.join(CHILD_TIMEOUT)
        if process.is_alive():
            process.kill()
            process.join(5)
    assert process.exitcode == 0
    return payload


def threads_of_the_suite() -> list[threading.Thread]:
    """Threads other than this one that the test suite started and that are
    still alive.  ``threading`` also lists a "dummy" entry for a thread it
    did not start once code there asked for ``current_thread()`` -- e.g.
    logging from a weak-reference callback that garbage collection ran in
    pytest-xdist's own I/O thread: that thread exists in every xdist
    worker, listed or not, so it is not counted."""
    return [
        thread
        for thread in threading.enumerate()
        if thread is not threading.current_thread()
        and not isinstance(thread, threading._DummyThread)
    ]


@pytest.mark.parametrize("alias", ALIASES)
@pytest.mark.parametrize("start", ["os.fork", "multiprocessing"])
def test_fork__child_never_touches_inherited_connections(alias, start, admin):
    """The child's queries succeed on new server sessions of its own; the
    inherited sockets are /dev/null in the child; the parent's idle, held
    and in-transaction sessions saw no activity while the child ran and
    exited, and still work afterwards with their state."""
    assert threads_of_the_suite() == [], "fork() with threads alive"
    in_transaction = connections.create_connection(alias)
    try:
        with pool_options(alias, pool_size=4, max_overflow=0, ping_after_idle=0):
            check_fork(alias, start, admin(alias), in_transaction)
    finally:
        in_transaction.close()  # rolls back: a lock left behind blocks the flush


def check_fork(alias: str, start: str, admin: Any, in_transaction: Any) -> None:
    held = session_id(alias)
    with connections[alias].cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE djpool_fork_probe (x int)")
    in_transaction.set_autocommit(False)
    with in_transaction.cursor() as cursor:
        cursor.execute(
            "INSERT INTO testapp_item (name, value, created) "
            "VALUES ('fork-uncommitted', 0, CURRENT_TIMESTAMP)"
        )
        cursor.execute(SESSION_ID_SQL[in_transaction.vendor])
        (open_session,) = cursor.fetchone()
    idle = park_idle(alias, 2)  # two more, while the others are held
    parent_sessions = sorted({*idle, held, int(open_session)})
    assert len(parent_sessions) == 4
    (current,) = pool_module.registry.pools(alias)
    fds = [
        conn.fileno()
        for conn in list(pool_module._live_connections)
        if conn._djpool_pool is current  # (earlier tests' dead ones linger)
    ]
    assert len(fds) == 4
    before = server_marks(admin, parent_sessions)
    started = time.monotonic()

    run = run_os_fork if start == "os.fork" else run_multiprocessing
    payload = run(alias, fds, [in_transaction])
    assert "ok" in payload, payload.get("error")
    child = payload["ok"]

    elapsed_ms = (time.monotonic() - started) * 1000
    after = server_marks(admin, parent_sessions)

    # The child: its own sessions, the inherited sockets neutralised (closed
    # after pointing them at /dev/null, or left pointing there when another
    # wrapper still held the connection).
    assert set(child["fds"].values()) <= {"/dev/null", "closed"}, child["fds"]
    assert "/dev/null" in child["fds"].values()  # the in-transaction one
    assert not set(child["sessions"]) & set(parent_sessions)
    assert child["checked_out"] == 0 and child["opened"] >= 1

    # The server: every parent session alive, none saw a packet.
    assert sorted(after) == parent_sessions
    for session in parent_sessions:
        if admin.vendor == "postgresql":
            assert after[session] == before[session], session
        else:
            assert after[session][1] == before[session][1] == "Sleep"
            assert after[session][0] >= before[session][0] + elapsed_ms - 100

    # The parent: same sessions, state intact, all usable.
    assert session_id(alias) == held
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM djpool_fork_probe")
        cursor.execute("DROP TABLE djpool_fork_probe")
    with in_transaction.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM testapp_item WHERE name = 'fork-uncommitted'"
        )
        assert cursor.fetchone()[0] == 1
    in_transaction.rollback()
    in_transaction.set_autocommit(True)
    in_transaction.close()
    invalidated = djpoolapp.pool_status(alias)[alias].invalidated
    connections[alias].close()
    parked = park_idle(alias, 4)
    if admin.vendor == "mysql":
        # The session that made a temporary table is closed at checkin, not
        # reused (docs/behaviour_sql.rst); the other three are.
        assert sorted(set(parked) & set(parent_sessions)) == sorted(
            set(parent_sessions) - {held}
        )
        invalidated += 1
    else:
        assert sorted(parked) == parent_sessions
    assert djpoolapp.pool_status(alias)[alias].invalidated == invalidated


@pytest.mark.mysql
def test_fork__lost_connection_fd_reused_is_left_alone(admin):
    """A MySQL connection lost mid-use (server KILL, then a failed query)
    whose socket mysqlclient already closed still reports its old fd number;
    once the process reuses that number for a file, a fork must not point
    the file at /dev/null in the child."""
    assert threads_of_the_suite() == [], "fork() with threads alive"
    alias = "mysql"
    connection = connections[alias]
    lost_session = session_id(alias)
    lost_fd = connection.connection.fileno()
    admin(alias).kill([lost_session])
    with pytest.raises(DjangoDatabaseError):
        session_id(alias)  # the driver notices the loss and drops the socket
    assert fd_target(lost_fd) == "closed"
    assert connection.connection.fileno() == lost_fd  # a stale number
    read_end, write_end = os.pipe()  # the lowest free numbers: the stale one
    try:
        assert lost_fd in (read_end, write_end)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = 0 if fd_target(lost_fd).startswith("pipe:") else 3
            finally:
                os._exit(code)
        deadline = time.monotonic() + CHILD_TIMEOUT
        while not (waited := os.waitpid(pid, os.WNOHANG))[0]:
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                raise AssertionError("the forked child hangs")
            time.sleep(0.01)
        assert os.waitstatus_to_exitcode(waited[1]) == 0, "fd clobbered in the child"
    finally:
        os.close(read_end)
        os.close(write_end)
        connection.close()
