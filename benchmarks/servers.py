"""Which database servers a benchmark runs against.

By default (``--servers auto``) the benchmark starts its own private
PostgreSQL and MariaDB servers with the test harness
(:func:`tests.harness.private_servers`: a fresh cluster in a temporary
directory, a free port of 127.0.0.1, run as ``nobody`` when root, removed at
the end), so it never shares, slows down or reconfigures the machine's own
servers, and other work on them does not add noise to its figures.

- ``auto``: a private server for each database whose
  ``DJPOOL_BENCH_POSTGRES_URL`` / ``DJPOOL_BENCH_MYSQL_URL`` is unset; the
  URL given otherwise (an *external* server).
- ``private``: private servers for both, whatever the variables say.
- ``machine``: no private server: the URLs given, else the machine's own
  servers (``MACHINE_URL``, 127.0.0.1:5432 and :3306, user ``root``).

The chosen URLs are put into those same variables, which the workers
(``benchmarks/settings.py``) and the monitor (``monitor.py``) read: the
parent and every worker talk to the same servers.  Only an owned (private)
server may be reconfigured (``tls.py``).

This module is imported by the workers' settings: it imports nothing heavy
at module level (the harness only inside :func:`chosen_servers`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

#: Environment: the URL (dj-database-url syntax) of each server name.
ENV_URL = {
    "postgres": "DJPOOL_BENCH_POSTGRES_URL",
    "mysql": "DJPOOL_BENCH_MYSQL_URL",
}
#: The machine's own servers, used with ``--servers machine`` and no URL.
MACHINE_URL = {
    "postgres": "postgres://root@127.0.0.1:5432/postgres",
    "mysql": "mysql://root@127.0.0.1:3306/test",
}
#: The choices of ``--servers``.
MODES = ("auto", "private", "machine")


class ServersUnavailable(RuntimeError):
    """A private server could not be provided: the test harness cannot be
    imported (no pytest) or a server failed to start; the message says why."""


def server_name(database: str) -> str:
    """The server a benchmark database runs on: ``"postgres"`` for
    ``postgres`` and ``postgres-tls``, ``"mysql"`` for ``mysql``."""
    return "postgres" if database.startswith("postgres") else "mysql"


def url(name: str) -> str:
    """The URL of server *name* for this process: ``ENV_URL``'s variable,
    read at each call (the parent sets it after start-up), else the
    machine's own server."""
    return os.environ.get(ENV_URL[name]) or MACHINE_URL[name]


@dataclass
class Choice:
    """The servers of one benchmark invocation.

    ``private``: ``{name: data directory}`` of the servers this invocation
    started and owns (the only ones it may reconfigure); ``external``: the
    names it uses but did not start; ``missing``: ``{name: why}`` for a
    private server that could not be provided (its binaries are not
    installed).
    """

    private: dict[str, Path] = field(default_factory=dict)
    external: list[str] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)

    def owns(self, name: str) -> bool:
        """Whether this invocation started server *name*."""
        return name in self.private

    def label(self, name: str) -> str:
        """``"private"`` or ``"external"``, for the report's headers."""
        return "private" if self.owns(name) else "external"

    def describe(self) -> list[str]:
        """One line per server: which, where (credentials left out)."""
        lines = []
        for name in sorted({*self.private, *self.external}):
            where = _redact(url(name))
            if self.owns(name):
                lines.append(f"{name}: private server {where} in {self.private[name]}")
            else:
                lines.append(f"{name}: external server {where}")
        lines += [
            f"{name}: no private server: {why}" for name, why in self.missing.items()
        ]
        return lines


def wanted_private(mode: str, names: list[str]) -> list[str]:
    """The names among *names* that get a private server under *mode*."""
    if mode == "machine":
        return []
    if mode == "private":
        return list(names)
    return [name for name in names if not os.environ.get(ENV_URL[name])]


@contextlib.contextmanager
def chosen_servers(mode: str, names: list[str]) -> Iterator[Choice]:
    """Provide servers *names* ("postgres", "mysql") under *mode* (``MODES``).

    Starts the private ones (``tests.harness.private_servers``), sets
    ``ENV_URL`` in ``os.environ`` for each of them for the block's duration
    (the workers inherit it), yields the :class:`Choice`, and on exit stops
    and removes the private servers and restores the environment.  A name
    whose binaries are not installed ends up in ``Choice.missing``.  Raises
    ServersUnavailable when the harness cannot be imported or an installed
    server cannot start.
    """
    if mode not in MODES:
        raise ValueError(f"unknown servers mode {mode!r}; choose from {MODES}")
    private = wanted_private(mode, names)
    choice = Choice(external=[name for name in names if name not in private])
    if not private:
        yield choice
        return
    try:
        from tests.harness import HarnessError, private_servers
    except ImportError as error:
        raise ServersUnavailable(
            f"private servers need the test harness (tests/harness.py, pytest: "
            f"pip install -e '.[test]'); or name servers with "
            f"{' / '.join(ENV_URL.values())} ({error})"
        ) from None
    saved = {name: os.environ.get(ENV_URL[name]) for name in private}
    with contextlib.ExitStack() as stack:
        try:
            started, missing = stack.enter_context(
                private_servers(private, key="bench")
            )
        except HarnessError as error:
            raise ServersUnavailable(
                f"a private server could not start: {error}"
            ) from None
        choice.missing = missing
        for name, server in started.items():
            os.environ[ENV_URL[name]] = server.url
            choice.private[name] = server.datadir
        try:
            yield choice
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(ENV_URL[name], None)
                else:
                    os.environ[ENV_URL[name]] = value


def add_argument(parser: argparse.ArgumentParser) -> None:
    """``--servers {auto,private,machine}`` (default auto) on *parser*."""
    parser.add_argument(
        "--servers", choices=MODES, default="auto",
        help="auto (default): private servers started for this run, except "
        "where DJPOOL_BENCH_POSTGRES_URL / DJPOOL_BENCH_MYSQL_URL name one; "
        "private: always private ones; machine: those URLs, else the "
        "machine's own servers on 127.0.0.1:5432 and :3306.",
    )  # fmt: skip


def run_on_servers(
    mode: str,
    databases: list[str],
    measure: Callable[[Choice], int],
    skip_missing: bool = False,
) -> int:
    """Call *measure* (the benchmark; returns its exit status) with the
    :class:`Choice` of servers for *databases* ("postgres", "postgres-tls",
    "mysql") under *mode* (:func:`chosen_servers`), after printing which
    servers they are.  Returns *measure*'s status, or 2 with the reason on
    stderr when a private server cannot be provided; a missing one (binaries
    not installed) too, unless *skip_missing* (then *measure* skips its
    databases)."""
    names = sorted({server_name(database) for database in databases})
    try:
        with chosen_servers(mode, names) as choice:
            for line in choice.describe():
                print(line, flush=True)
            if choice.missing and not skip_missing:
                reasons = "; ".join(choice.missing.values())
                print(f"benchmark: {reasons}", file=sys.stderr)
                return 2
            return measure(choice)
    except ServersUnavailable as error:
        print(f"benchmark: {error}", file=sys.stderr)
        return 2


def _redact(text: str) -> str:
    """*text* (a URL) without its password."""
    head, sep, tail = text.rpartition("@")
    if not sep:
        return text
    scheme, _, credentials = head.partition("://")
    return f"{scheme}://{credentials.split(':')[0]}@{tail}"
