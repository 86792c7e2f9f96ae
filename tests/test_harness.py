"""tests/harness.py: the private servers live exactly as long as the run.

Each test here runs a child pytest that starts its own servers (the parent's
are hidden from it), stops it the way a user or CI would, and checks that no
server process and no temporary directory of the child is left.  One more
child runs against "external" servers (this run's own, by URL) and shows that
the tests which restart a server skip there.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

from tests import harness

ROOT = Path(__file__).resolve().parent.parent
CHILD_TEST = """\
import os, pathlib, time

def test_waits_until_stopped():
    pathlib.Path(os.environ["DJPOOL_HARNESS_READY"]).write_text("ready")
    time.sleep(300)
"""

pytestmark = [
    pytest.mark.slow,
    # The harness does not depend on the PostgreSQL driver: once per run of
    # the default nox sessions is enough (each child run costs ~15 s).
    pytest.mark.skipif(
        settings.DRIVER == "psycopg2",
        reason="driver-independent; runs in the psycopg 3 session",
    ),
]


def owned_by(pid: int) -> list[Path]:
    """The harness directories whose owner is process *pid*."""
    found = []
    for owner in harness.base_dir().glob(f"{harness.DIR_PREFIX}*/owner.json"):
        try:
            if json.loads(owner.read_text())["pid"] == pid:
                found.append(owner.parent)
        except (OSError, ValueError, KeyError):
            continue
    return found


def _default_sigint() -> None:
    """The child handles Ctrl-C even when this run was started with SIGINT
    ignored (a shell's background job): Python then installs no handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.parametrize(
    ("signum", "xdist"),
    [
        pytest.param(signal.SIGINT, False, id="ctrl-c"),
        pytest.param(signal.SIGINT, True, id="ctrl-c-xdist"),
        pytest.param(signal.SIGTERM, False, id="sigterm"),
    ],
)
def test_harness__interrupted_run_leaves_no_server_and_no_directory(
    tmp_path, signum, xdist
):
    (tmp_path / "test_child.py").write_text(CHILD_TEST)
    ready = tmp_path / "ready"
    with harness.environment_without_servers() as env:
        env["DJPOOL_HARNESS_READY"] = str(ready)
        env.pop("CI", None)
        command = [
            sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"),
            "--rootdir", str(ROOT), "-p", "no:randomly", "-p", "no:cacheprovider",
            *(["-n", "2"] if xdist else ["-p", "no:xdist"]),
            str(tmp_path / "test_child.py"),
        ]  # fmt: skip
        child = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_default_sigint,
        )  # fmt: skip
    try:
        wait_for(lambda: ready.exists() or child.poll() is not None, 120, "child")
        assert child.poll() is None, child.stdout.read().decode()
        (directory,) = owned_by(child.pid)
        servers = harness.processes_in(directory)
        # PostgreSQL (postmaster + its helpers) and MariaDB, per process.
        assert len(servers) >= 2 * (3 if xdist else 1)
        if signum == signal.SIGINT:
            os.killpg(child.pid, signum)  # what a terminal's Ctrl-C does
        else:
            os.kill(child.pid, signum)
        output, _ = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    text = output.decode(errors="replace")
    if signum == signal.SIGINT:
        assert "KeyboardInterrupt" in text, text
    else:
        assert child.returncode == -signal.SIGTERM, text
    assert not directory.exists(), text
    assert all(not harness._alive(pid) for pid in servers), text
    assert harness.processes_in(directory) == []


def test_harness__restart_tests_skip_on_external_servers(tmp_path):
    """With DJPOOL_TEST_*_URL set, no private server is started for them and
    the tests that restart a server skip, saying why."""
    if not all(settings.SERVERS.values()):
        pytest.skip("needs both servers")
    with harness.environment_without_servers() as env:
        env["DJPOOL_TEST_POSTGRES_URL"] = settings.POSTGRES_URL
        env["DJPOOL_TEST_MYSQL_URL"] = settings.MYSQL_URL
        env.pop("CI", None)
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:randomly",
             "-p", "no:cacheprovider", "-p", "no:xdist", "-rs", "-m", "restart",
             "tests/faults/test_dead_connections.py"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "private servers" not in out
    # Every selected restart test skips (one per server, per pool mode).
    selected = re.search(r"(\d+) selected", out)
    skipped = re.search(r"(\d+) skipped", out)
    assert selected and skipped, out
    assert int(skipped[1]) == int(selected[1]) >= 2, out
    assert "restarts the postgres server: the suite only restarts servers" in out
    assert "restarts the mysql server: the suite only restarts servers" in out
