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

from tests.integration import BOTH_DATABASES, MAX_OVERFLOW, MODES, POOL_SIZE
from tests.integration.conftest import get, require_module, require_tool
from tests.integration.servers import (
    assert_served,
    mode_env,
    record_served,
    serve_under_load,
)

pytestmark = BOTH_DATABASES


def uvicorn(port: int) -> list[str]:
    require_tool("wrk")
    require_module("uvicorn")
    return [
        sys.executable, "-m", "uvicorn", "tests.integration.asgi:application",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--lifespan", "off", "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip


@pytest.mark.parametrize("mode", MODES)
def test_uvicorn__async_views_under_load_within_pool_bounds(
    mode, seeded, tmp_path, port
):
    served = serve_under_load(
        uvicorn(port), port, tmp_path / "uvicorn.log", mode_env(mode), seeded,
        path="async/orm", before=_first_item_is_served,
    )  # fmt: skip
    record_served("uvicorn", "asgi", mode, served)
    pooled = mode == "djpoolapp"
    assert_served(served, seeded, POOL_SIZE + MAX_OVERFLOW if pooled else None)


def _first_item_is_served(base: str) -> None:
    """The async ORM view answers with the seeded rows, before the load."""
    status, body = get(f"{base}/async/orm/default/")
    assert status == 200, body
    answer = json.loads(body)
    assert (answer["count"], answer["first"]) == (20, "item-0"), answer
