"""Django's test runner and pytest-django create, use and drop test
databases with djpoolapp installed; idle pooled connections never block
DROP DATABASE or CREATE DATABASE ... TEMPLATE."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.db import connections

from tests.conftest import monitor_connection

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.postgres, pytest.mark.mysql, pytest.mark.slow]


def leftover_databases(run_id: str) -> list[str]:
    """Test databases of *run_id* still on either server."""
    found = []
    for alias in ("default", "mysql"):
        conn = monitor_connection(alias)
        cursor = conn.cursor()
        if connections[alias].vendor == "postgresql":
            cursor.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s",
                [f"test_djpool_{run_id}%"],
            )
        else:
            cursor.execute("SHOW DATABASES LIKE %s", [f"test_djpool_{run_id}%"])
        found += [row[0] for row in cursor.fetchall()]
        conn.close()
    return found


def run(args: list[str], run_id: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DJPOOL_TEST_RUN_ID": run_id,
        "DJANGO_SETTINGS_MODULE": "tests.runner_settings",
        "PYTHONWARNINGS": "error::ResourceWarning",
    }
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("parallel", ["1", "2"])
def test_django_runner__creates_uses_and_drops_test_databases(parallel):
    run_id = f"r{uuid.uuid4().hex[:8]}"
    result = run(
        [
            "-m",
            "django",
            "test",
            "tests.runner_app",
            "--parallel",
            parallel,
            "--noinput",
            "-v",
            "2",
        ],
        run_id,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Ran 3 tests" in output
    assert "being accessed by other users" not in output
    if parallel == "2":
        assert "Cloning test database" in output
    assert leftover_databases(run_id) == []


def test_pytest_django__drops_its_test_databases():
    run_id = f"p{uuid.uuid4().hex[:8]}"
    result = run(
        [
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            "-W",
            "error",
            "tests/runner_app/tests.py",
            "--ds",
            "tests.runner_settings",
        ],
        run_id,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "3 passed" in output
    assert "warning" not in output.lower()
    assert leftover_databases(run_id) == []
