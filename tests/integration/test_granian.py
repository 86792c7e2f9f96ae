"""granian (Rust HTTP server, PyPI ``granian``) in WSGI mode: 2 worker
processes with 4 blocking threads each, under the same bounded load as the
gunicorn cases, pooled and stock.

granian runs a WSGI app's requests on its "blocking threads": at most
workers x (pool_size + max_overflow) server sessions per database, no failed
request, a clean log.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.integration import BOTH_DATABASES, MAX_OVERFLOW, MODES, POOL_SIZE
from tests.integration.conftest import require_module, require_tool
from tests.integration.servers import (
    assert_served,
    mode_env,
    record_served,
    serve_under_load,
)

pytestmark = BOTH_DATABASES

WORKERS = 2
THREADS = 4


def granian(port: int) -> list[str]:
    require_tool("wrk")
    require_module("granian")
    return [
        sys.executable, "-m", "granian", "--interface", "wsgi",
        "--host", "127.0.0.1", "--port", str(port),
        "--workers", str(WORKERS), "--blocking-threads", str(THREADS),
        "--no-ws", "--log-level", "warning",
        "tests.integration.wsgi:application",
    ]  # fmt: skip


@pytest.mark.parametrize("mode", MODES)
def test_granian__wsgi_threads_under_load_within_pool_bounds(
    mode, seeded, tmp_path: Path, port
):
    served = serve_under_load(
        granian(port), port, tmp_path / "granian.log", mode_env(mode), seeded
    )
    record_served("granian", f"wsgi-{THREADS}thr", mode, served)
    pooled = mode == "djpoolapp"
    assert_served(
        served, seeded, WORKERS * (POOL_SIZE + MAX_OVERFLOW) if pooled else None
    )
