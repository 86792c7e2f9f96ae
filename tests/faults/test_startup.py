"""Start-up (CONTRACT section 1): malformed options stop Django at start-up
with a message naming the key, before anything is patched; ``ready()`` never
touches a database, so Django starts with the server down, and the first
request after the server comes up succeeds.  Scenarios 11 and 12 of issue 3.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.test import override_settings

from djpoolapp import hooks, patch
from tests.conftest import ALIASES
from tests.modes import only

pytestmark = [
    pytest.mark.faults,
    # Option validation and start-up with the server unreachable: ready()
    # creates no pool and opens no connection, whatever the pool_mode.
    only("request", why="start-up: no pool exists yet in either mode"),
]

ROOT = Path(__file__).resolve().parents[2]

#: (DJPOOL_OPTIONS, what the message must name)
BAD_OPTIONS = [
    ({"pool_size": "5"}, ["pool_size", "str"]),
    ({"pool_size": -1}, ["pool_size"]),
    ({"pool_size": 0}, ["pool_size"]),
    ({"pool_size": 2.5}, ["pool_size", "float"]),
    ({"pool_size": True}, ["pool_size", "boolean"]),
    ({"max_overflow": -1}, ["max_overflow"]),
    ({"max_overflow": "10"}, ["max_overflow"]),
    ({"timeout": 0}, ["timeout"]),
    ({"timeout": "30"}, ["timeout"]),
    ({"timeout": None}, ["timeout"]),
    ({"recycle": -2}, ["recycle"]),
    ({"recycle": 0}, ["recycle"]),
    ({"ping_after_idle": -0.5}, ["ping_after_idle"]),
    ({"pre_ping": "yes"}, ["pre_ping"]),
    ({"use_lifo": 1}, ["use_lifo"]),
    ({"reset_on_return": "truncate"}, ["reset_on_return", "truncate"]),
    ({"reset_on_return": False}, ["reset_on_return"]),
    ({"pool_sise": 5}, ["pool_sise", "did you mean 'pool_size'"]),
    ({"aliases": {"nope": {"pool_size": 2}}}, ["nope"]),
    ({"aliases": {"default": {"pool_size": -1}}}, ["default", "pool_size"]),
    ({"aliases": {"mysql": {"bogus": 1}}}, ["mysql", "bogus"]),
    ({"aliases": {"default": {"aliases": {}}}}, ["default", "aliases"]),
    ({"aliases": {"default": 5}}, ["default"]),
    ({"aliases": ["default"]}, ["aliases", "list"]),
    ({"aliases": "default"}, ["aliases", "str"]),
    ("pool_size=5", ["DJPOOL_OPTIONS", "str"]),
    ([("pool_size", 5)], ["DJPOOL_OPTIONS", "list"]),
    (
        {"pool_size": 5, "aliases": {"default": {"max_overflow": -3}}},
        ["default", "max_overflow"],
    ),
]


@pytest.mark.parametrize(
    ("options", "named"), BAD_OPTIONS, ids=[json.dumps(o) for o, _ in BAD_OPTIONS]
)
def test_bad_options__refused_at_startup_naming_the_key(options, named, unpatched):
    """The app's ready() raises ImproperlyConfigured whose message names the
    offending key (and alias), and leaves every backend unpatched."""
    raw_modules = {
        alias: type(connections[alias]).Database for alias in connections.settings
    }
    with override_settings(DJPOOL_OPTIONS=options):
        with pytest.raises(ImproperlyConfigured) as caught:
            apps.get_app_config("djpoolapp").ready()
        assert not patch.is_installed()
        assert hooks._applied == []
        for alias, module in raw_modules.items():
            assert type(connections[alias]).Database is module
            assert not hasattr(module, "djpool_driver_module")
    message = str(caught.value)
    for part in named:
        assert part in message, (part, message)


def run_django_setup(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", "import django; django.setup(); print('started')"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def worker_env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.faults.settings_startup",
        "DJPOOL_TEST_RUN_ID": settings.RUN_ID,
        "DJPOOL_TEST_DRIVER": settings.DRIVER,
        **extra,
    }


def test_bad_options__stop_django_setup():
    """In a real start-up (django.setup()), a bad option stops the process
    with ImproperlyConfigured naming the key; the same settings with a good
    value start."""
    bad = run_django_setup(worker_env(DJPOOL_FAULTS_OPTIONS='{"max_overflow": -1}'))
    assert bad.returncode != 0
    assert "ImproperlyConfigured" in bad.stderr
    assert "DJPOOL_OPTIONS['max_overflow']" in bad.stderr
    good = run_django_setup(worker_env(DJPOOL_FAULTS_OPTIONS='{"max_overflow": 1}'))
    assert good.returncode == 0, good.stderr[-2000:]
    assert good.stdout.strip() == "started"


class Listener:
    """A TCP listener on 127.0.0.1: forwards each connection to *upstream*,
    or (upstream None) accepts and holds it, only counting."""

    def __init__(self, port: int = 0, upstream: tuple[str, int] | None = None) -> None:
        self.upstream = upstream
        self.accepted = 0
        self.sockets: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", port))
        self.server.listen(16)
        self.server.settimeout(0.05)
        self.port = self.server.getsockname()[1]
        self.stopped = threading.Event()
        self._spawn(self._accept)

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self.threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self.sockets.append(client)
            if self.upstream is None:
                continue
            backend = socket.create_connection(self.upstream, timeout=5)
            backend.settimeout(None)
            client.settimeout(None)
            self.sockets.append(backend)
            self._spawn(self._pump, client, backend)
            self._spawn(self._pump, backend, client)

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for each in (source, target):
                try:
                    each.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.stopped.set()
        self.server.close()
        for each in self.sockets:
            try:
                each.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            each.close()
        for thread in self.threads:
            thread.join(5)
        assert not any(thread.is_alive() for thread in self.threads)


class Worker:
    """tests/faults/startup_worker.py in a subprocess, line by line."""

    def __init__(self, alias: str, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-W", "error", "-m", "tests.faults.startup_worker", alias],
            cwd=ROOT, env=env, text=True, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        self.errors = ""
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.strip())
        self.lines.put("<eof>")

    def line(self, timeout: float = 60) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("the start-up worker hangs") from None

    def request(self) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write("request\n")
        self.process.stdin.flush()
        line = self.line()
        assert line != "<eof>", self.stderr()
        return json.loads(line)

    def stderr(self) -> str:
        self.stop()
        return self.errors[-3000:]

    def stop(self) -> None:
        """End the worker (stdin closed: it exits) and close its pipes."""
        if self.process.returncode is not None:
            return
        assert self.process.stdin and self.process.stdout and self.process.stderr
        self.process.stdin.close()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.reader.join(5)
        self.process.stdout.close()
        self.errors = self.process.stderr.read()
        self.process.stderr.close()


@pytest.mark.django_db(transaction=True, databases="__all__")
@pytest.mark.parametrize("alias", ALIASES)
def test_startup__never_connects_and_serves_once_the_server_is_up(alias):
    """Django starts (django.setup(), manage.py check) without a single
    connection attempt to the database; a request while the server is down
    fails with Django's OperationalError; the first request after the server
    comes up succeeds, and the next reuses its pooled session."""
    real = connections[alias].settings_dict
    tripwire = Listener()  # accepts and counts, never answers
    port = tripwire.port
    worker = Worker(
        alias,
        worker_env(
            DJPOOL_FAULTS_ALIAS=alias, DJPOOL_FAULTS_PORT=str(port),
            DJPOOL_FAULTS_NAME=real["NAME"],
        ),
    )  # fmt: skip
    proxy = None
    try:
        first = worker.line()
        assert first == "ready", worker.stderr()
        assert tripwire.accepted == 0  # ready() and checks never connected
        tripwire.close()  # the server is down: nothing listens

        down = worker.request()
        assert down["status"] == 500
        assert down["error"] == "django.db.utils.OperationalError"

        proxy = Listener(port, upstream=(real["HOST"], int(real["PORT"])))
        up = worker.request()
        assert up["status"] == 200, up
        again = worker.request()
        assert again["status"] == 200 and again["session"] == up["session"]
        assert proxy.accepted == 1
    finally:
        worker.stop()
        if proxy is not None:
            proxy.close()
        if not tripwire.stopped.is_set():
            tripwire.close()
    assert worker.process.returncode == 0, worker.stderr()
