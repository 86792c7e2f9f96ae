"""Fixtures of the fault suite (see issue 3 and CONTRACT.md section 2).

Every test here talks to the real servers and may kill sessions of this run's
own test database; the ``restart`` tests restart whole servers.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from django.core.signals import got_request_exception
from django.db import connections
from django.test import override_settings

from djpoolapp.pool import registry
from tests.conftest import run_request
from tests.modes import pool_mode  # noqa: F401  (every fault test, both modes)

from . import views
from .servers import Admin


@pytest.fixture(autouse=True)
def _clean_start() -> Iterator[None]:
    """Start with no connection held and empty pools (pytest-django's set-up
    leaves this thread's connections open), and serve the test app's URLs
    plus the misbehaving views of tests/faults/views.py."""
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close()
    registry.dispose()
    # The 500s here are on purpose: Django's traceback per failed request
    # would only slow the suite down (the tests check each exception).
    request_logger = logging.getLogger("django.request")
    request_logger.disabled = True
    try:
        with override_settings(ROOT_URLCONF="tests.faults.urls"):
            yield
    finally:
        request_logger.disabled = False
        views.ABANDONED.clear()


@pytest.fixture
def admin() -> Iterator[Callable[[str], Admin]]:
    """``admin(alias)``: an unpooled admin connection to that alias's server."""
    opened: dict[str, Admin] = {}

    def get(alias: str) -> Admin:
        if alias not in opened:
            opened[alias] = Admin(alias)
        return opened[alias]

    yield get
    for each in opened.values():
        each.close()


@dataclass
class Response:
    status: int
    body: bytes
    #: The exception the view raised (Django turned it into a 500), or None.
    error: BaseException | None


_errors = threading.local()


def _record_exception(sender: Any, **kwargs: Any) -> None:
    _errors.last = sys.exc_info()[1]


@pytest.fixture
def serve() -> Iterator[Callable[[str], Response]]:
    """``serve(path)``: one request through Django's WSGI handler, with the
    exception behind a 500 (Django's ``got_request_exception``), per thread."""

    def one(path: str) -> Response:
        _errors.last = None
        status, body = run_request(path)
        error, _errors.last = _errors.last, None
        return Response(status, body, error)

    got_request_exception.connect(_record_exception, dispatch_uid="djpool-faults")
    try:
        yield one
    finally:
        got_request_exception.disconnect(dispatch_uid="djpool-faults")


@contextmanager
def pool_options(alias: str, **options: Any) -> Iterator[None]:
    """Pool *alias* with these options (new pools) for the block."""
    with override_settings(DJPOOL_OPTIONS={"aliases": {alias: options}}):
        yield
