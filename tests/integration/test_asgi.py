"""uvicorn serving Django's ASGI application, async views, bounded load.

The views use the async ORM (``acount``, ``afirst``, ``aget``, ``async
for``) and ``sync_to_async``.  Django runs that sync database work in a
thread per request (asgiref's thread-sensitive context), so concurrent
requests check out concurrent connections: the pool must bound them.
"""

from __future__ import annotations

import json
import sys

import pytest

from tests.integration import BOTH_DATABASES, MAX_OVERFLOW, POOL_SIZE
from tests.integration.conftest import (
    SessionSampler,
    get,
    http_ready,
    record,
    require_module,
    require_tool,
    run_wrk,
    serve,
    server_env,
)

pytestmark = BOTH_DATABASES

VIEWS = {"default": "postgres", "mysql": "mariadb"}


def uvicorn(port: int) -> list[str]:
    require_tool("wrk")
    require_module("uvicorn")
    return [
        sys.executable, "-m", "uvicorn", "tests.integration.asgi:application",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--lifespan", "off", "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip


@pytest.mark.parametrize("mode", ["djpoolapp", "stock"])
def test_uvicorn__async_views_under_load_within_pool_bounds(
    mode, seeded, tmp_path, port
):
    base = f"http://127.0.0.1:{port}"
    env = server_env(**({"DJPOOL_DISABLE": "1"} if mode == "stock" else {}))
    sampler = SessionSampler(seeded)
    with serve(
        uvicorn(port), tmp_path / "uvicorn.log", env=env,
        ready=http_ready(f"{base}/ping/"),
    ) as server:  # fmt: skip
        status, body = get(f"{base}/async/orm/default/")
        assert status == 200, body
        answer = json.loads(body)
        assert (answer["count"], answer["first"]) == (20, "item-0"), answer
        loads = {}
        with sampler.running():
            for alias in seeded:
                loads[alias] = run_wrk(f"{base}/async/orm/{alias}/")
        alarms = server.alarms()
        log = server.log
    for alias, load in loads.items():
        record("uvicorn", "asgi", VIEWS[alias], mode, load, sampler.peak[alias])
        assert load.requests > 0, load.output
        assert load.failed == 0, load.output
    assert alarms == [], log
    if mode == "djpoolapp":
        for alias in seeded:
            assert 1 <= sampler.peak[alias] <= POOL_SIZE + MAX_OVERFLOW, sampler.peak
