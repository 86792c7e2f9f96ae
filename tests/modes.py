"""Run a test module in both ``pool_mode``\\ s (issue 13, "Safety").

Importing :func:`pool_mode` into a test module (or a ``conftest.py``) makes
it an autouse, parametrised fixture there: every test of that module runs
twice, ``[request]`` and ``[transaction]``::

    from tests.modes import pool_mode  # noqa: F401  (every test, both modes)

In the ``transaction`` copy the *default* of ``pool_mode`` is
``"transaction"`` for the whole test, so every pool the test creates -- from
``tests/settings.py``, from the test's own ``override_settings(DJPOOL_OPTIONS=
...)`` or from a subprocess started with this environment
(``DJPOOL_TEST_POOL_MODE``) -- runs in transaction mode, exactly as if the
user had written ``"pool_mode": "transaction"`` at the top of
``DJPOOL_OPTIONS``.  A test that sets ``pool_mode`` itself keeps what it set.

A test whose subject exists in one mode only runs once, saying why::

    @only("request", why="...")
    def test_...

(no skip: the other copy is simply not generated).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.db import connections
from django.test import override_settings

from djpoolapp import conf
from djpoolapp.pool import registry

MODES = ("request", "transaction")
#: Read by tests/settings.py in subprocesses (gunicorn, fork, gevent workers).
ENV = "DJPOOL_TEST_POOL_MODE"


def _close_connections() -> None:
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close()


@pytest.fixture(autouse=True, params=MODES)
def pool_mode(request: Any) -> Iterator[str]:
    """The ``pool_mode`` every pool of this test defaults to (see module doc)."""
    mode = request.param
    _close_connections()
    # A whole run under DJPOOL_TEST_POOL_MODE (tests/settings.py) sets the
    # mode at the top of DJPOOL_OPTIONS: this fixture decides it here.
    base = dict(getattr(settings, "DJPOOL_OPTIONS", None) or {})
    base.pop("pool_mode", None)
    with pytest.MonkeyPatch.context() as patch:  # (not the test's monkeypatch)
        patch.setitem(conf.DEFAULTS, "pool_mode", mode)
        if mode == "request":
            patch.delenv(ENV, raising=False)
        else:
            patch.setenv(ENV, mode)
        with override_settings(DJPOOL_OPTIONS=base or None):  # new pools
            assert conf.get_config().defaults["pool_mode"] == mode
            try:
                yield mode
            finally:
                _close_connections()
                registry.dispose()
    conf.get_config.cache_clear()


def only(mode: str, *, why: str) -> Any:
    """Run the decorated test (or, as ``pytestmark``, module) in *mode* only;
    *why* documents the reason in the source."""
    assert mode in MODES and why
    return pytest.mark.parametrize("pool_mode", [mode], indirect=True)


def current(alias: str) -> str:
    """The ``pool_mode`` of *alias*'s pool under the options in effect now."""
    return str((conf.get_config().for_alias(alias) or {}).get("pool_mode"))


def apply_environment() -> str | None:
    """In a subprocess of a test (tests/faults/gevent_worker.py), right after
    ``django.setup()``: make ``DJPOOL_TEST_POOL_MODE`` the default
    ``pool_mode``, as the fixture does in the test's process (the workers
    set ``DJPOOL_OPTIONS`` of their own).  Returns the mode, or None."""
    mode = os.environ.get(ENV) or None
    if mode:
        conf.DEFAULTS["pool_mode"] = mode
        conf.get_config.cache_clear()
        registry.dispose()
    return mode
