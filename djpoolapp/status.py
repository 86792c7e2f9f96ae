"""``pool_status()``, ``dispose()`` and ``server_sessions()``: what the pools
hold, in this process and as the database server sees every process.

- :func:`pool_status`: this process's pools (per process: behind several
  workers each one has its own).
- :func:`server_sessions`: the sessions the server has open for djpoolapp's
  pools of *every* process and host, read from ``pg_stat_activity`` /
  ``information_schema.PROCESSLIST`` (connections are tagged by
  :mod:`djpoolapp.tagging`).
- :func:`nothing_pooled_reason`: why no alias is pooled, when none is.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from .drivers import driver_for
from .pool import AliasPool, describe, pooled_backends, registry


@dataclass(frozen=True)
class PoolStatus:
    """A snapshot of one alias's pool.  Never contains a password."""

    alias: str
    vendor: str
    #: ``user@host:port/database`` of the current pool, or, before this
    #: process created one, as the settings say ("" if they cannot say).
    database: str
    pool_size: int
    max_overflow: int
    #: Connections Django holds now.
    checked_out: int
    #: Open connections waiting in the pool.
    idle: int
    #: Connections open beyond ``pool_size`` (closed again when returned).
    overflow: int
    #: Counters since the process started (or forked).
    opened: int
    recycled: int
    invalidated: int
    timeouts: int
    #: Threads waiting for a connection now (the pool is exhausted).
    waiting: int = 0
    #: False until this process opens its first connection for the alias:
    #: pools are created lazily, so a fresh process (``manage.py djpool
    #: status``) has none and its figures are those of the settings.
    pool_created: bool = False
    #: Connections pinned to a Django connection until it closed
    #: (``pool_mode="transaction"``: session state, raw access, server-side
    #: cursors; the DEBUG log names each reason).
    pins: int = 0
    #: ``pool_mode`` of the alias: ``"request"`` or ``"transaction"``; that
    #: of the live pool once created, else what the settings say.
    pool_mode: str = "request"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def settings_description(alias: str) -> str:
    """``user@host:port/database`` of *alias* as its settings say, without
    connecting; "" when the backend cannot build its connect arguments."""
    from django.db import connections

    try:
        return describe(connections[alias].get_connection_params())
    except Exception:  # e.g. ImproperlyConfigured for an empty NAME
        return ""


def waiting_threads(pool: AliasPool) -> int:
    """Threads blocked in a checkout of *pool* now.

    The pool's own count when it keeps one (``waiting``), else its queue's
    (a queue with a ``waiting()`` method), else the waiters of SQLAlchemy's
    queue condition; 0 when none can be read.
    """
    queue = getattr(pool.pool, "_pool", None)
    for source in (pool, queue):
        count = getattr(source, "waiting", None)
        if callable(count):
            count = count()
        if isinstance(count, int):
            return count
    condition = getattr(queue, "not_empty", None)
    return len(getattr(condition, "_waiters", ()) or ())


def _status(alias: str, vendor: str, pool: AliasPool | None) -> PoolStatus:
    counters = registry.stats(alias).snapshot()
    if pool is None:
        from .conf import get_config

        options = get_config().for_alias(alias) or {}
        return PoolStatus(
            alias=alias,
            vendor=vendor,
            database=settings_description(alias),
            pool_size=options.get("pool_size", 0),
            max_overflow=options.get("max_overflow", 0),
            checked_out=0,
            idle=0,
            overflow=0,
            opened=counters["opened"],
            recycled=counters["recycled"],
            invalidated=counters["invalidated"],
            timeouts=counters["timeouts"],
            pins=counters["pins"],
            pool_mode=options.get("pool_mode", "request"),
        )
    queue_pool = pool.pool
    checked_out = queue_pool.checkedout()
    return PoolStatus(
        alias=alias,
        vendor=vendor,
        database=pool.description,
        pool_size=queue_pool.size(),
        max_overflow=pool.options["max_overflow"],
        checked_out=checked_out,
        idle=max(0, pool.open_connections - checked_out),
        overflow=max(0, queue_pool.overflow()),
        opened=counters["opened"],
        recycled=counters["recycled"],
        invalidated=counters["invalidated"],
        timeouts=counters["timeouts"],
        pins=counters["pins"],
        waiting=waiting_threads(pool),
        pool_created=True,
        pool_mode="transaction" if pool.transaction_mode else "request",
    )


def pool_status(alias: str | None = None) -> dict[str, PoolStatus]:
    """Snapshot of every pooled alias (or only *alias*), keyed by alias.

    Aliases that are pooled but have not connected yet in this process are
    included with zero figures and ``pool_created=False``.  Empty when
    djpoolapp is not in ``INSTALLED_APPS`` (nothing is pooled then, whatever
    ``DJPOOL_OPTIONS`` says).  Raises ``ValueError`` for an alias djpoolapp
    does not pool.
    """
    from django.apps import apps

    backends = pooled_backends() if apps.is_installed("djpoolapp") else {}
    live = {pool.alias: pool for pool in registry.pools()}
    names = [*backends, *(name for name in live if name not in backends)]
    if alias is not None:
        if alias not in names:
            raise ValueError(
                f"database alias '{alias}' is not pooled by djpoolapp (pooled: "
                f"{', '.join(map(repr, names)) or 'none: ' + nothing_pooled_reason()})"
            )
        names = [alias]
    result = {}
    for name in names:
        pool = live.get(name)
        if pool is not None:
            vendor = pool.driver.vendor
        else:
            driver = driver_for(getattr(backends[name], "Database", None))
            vendor = driver.vendor if driver else ""
        result[name] = _status(name, vendor, pool)
    return result


def dispose(alias: str | None = None) -> None:
    """Close the idle connections of one alias's pool, or of all pools.

    Connections Django holds at that moment are closed when returned; the
    next checkout opens new connections.  Use it after a failover, a
    credential rotation or before dropping a database.
    """
    registry.dispose(alias)


def nothing_pooled_reason() -> str:
    """Why no database alias is pooled in this process, in one sentence."""
    from django.apps import apps
    from django.db import connections

    from .conf import DISABLE_ENV, env_disabled

    if not apps.is_installed("djpoolapp"):
        return (
            "djpoolapp is not in INSTALLED_APPS, so no connection is pooled "
            "(DJPOOL_OPTIONS has no effect)"
        )
    if env_disabled():
        return (
            f"pooling is switched off: the environment variable {DISABLE_ENV}="
            f"{os.environ.get(DISABLE_ENV, '')} is set in this process (unset it "
            "to pool)"
        )
    aliases = list(connections.settings)
    return (
        f"none of the aliases in DATABASES ({', '.join(aliases) or 'none'}) is "
        "pooled: djpoolapp pools PostgreSQL and MySQL/MariaDB aliases unless "
        "DJPOOL_OPTIONS['aliases'] opts them out or they use Django's own pool, "
        "and SQLite only when named in DJPOOL_OPTIONS['aliases']"
    )


@dataclass
class ProcessSessions:
    """The server sessions of one process's pool of one alias, as the server
    sees them.  For MySQL/MariaDB sessions of other processes, ``pid`` is
    None and ``alias`` is "" (mysqlclient cannot tag them): one row per
    client host."""

    host: str
    pid: int | None
    alias: str
    sessions: int = 0
    active: int = 0
    idle: int = 0
    idle_in_transaction: int = 0
    #: Sessions whose state the server does not show this user.
    unknown: int = 0
    #: Age in seconds of the oldest open transaction, None without one.
    oldest_transaction: float | None = None
    #: The process answering (the one whose ``pool_status()`` is shown).
    this_process: bool = False

    def add(self, state: str, transaction_age: float | None) -> None:
        self.sessions += 1
        if state == "active":
            self.active += 1
        elif state == "idle":
            self.idle += 1
        elif state == "idle in transaction":
            self.idle_in_transaction += 1
        else:
            self.unknown += 1
        if transaction_age is not None:
            age = max(0.0, float(transaction_age))
            if self.oldest_transaction is None or age > self.oldest_transaction:
                self.oldest_transaction = age


@dataclass
class ServerView:
    """What the server of one alias sees of djpoolapp's pools."""

    alias: str
    vendor: str
    #: One row per process (PostgreSQL) or client host (MySQL), this process first.
    processes: list[ProcessSessions] = field(default_factory=list)
    #: Sessions on the same database that no djpoolapp pool opened.
    other_sessions: int = 0
    #: Why the server could not be asked, if it could not.
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_PG_SESSIONS = """
SELECT application_name, state, EXTRACT(EPOCH FROM (now() - xact_start))
FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend'
"""

_MYSQL_SESSIONS = """
SELECT p.ID, p.HOST, p.COMMAND, TIMESTAMPDIFF(SECOND, t.trx_started, NOW())
FROM information_schema.PROCESSLIST p
LEFT JOIN information_schema.INNODB_TRX t ON t.trx_mysql_thread_id = p.ID
WHERE p.DB = DATABASE()
"""


def _own_mysql_ids(alias: str) -> set[int]:
    """Server connection ids of this process's pooled connections of *alias*."""
    from . import pool as pool_module

    ids = set()
    for conn in list(getattr(pool_module, "_live_connections", ())):
        owner = getattr(conn, "_djpool_pool", None)
        if owner is None or owner.alias != alias:
            continue
        try:
            ids.add(int(conn.thread_id()))
        except Exception:  # closed meanwhile
            continue
    return ids


def server_sessions(alias: str) -> ServerView:
    """The sessions the server of *alias* has open on its database, grouped
    by the process (PostgreSQL: host, pid, alias from the tag djpoolapp puts
    in ``application_name``) or client host (MySQL/MariaDB) that opened them.

    Runs one query on the alias's connection of this thread (checked out of
    this process's pool and, if it was not open before, returned at once).  PostgreSQL shows the state of other users' sessions
    only to superusers and members of ``pg_read_all_stats``; the rest count
    as ``unknown``.  Database errors are returned in ``error``, not raised.
    """
    from django.db import DatabaseError, connections

    from .tagging import host_name, parse

    connection = connections[alias]
    was_open = connection.connection is not None
    view = ServerView(alias=alias, vendor=connection.vendor)
    me = (host_name(), os.getpid())
    groups: dict[tuple[str, int | None, str], ProcessSessions] = {}

    def group(host: str, pid: int | None, name: str) -> ProcessSessions:
        key = (host, pid, name)
        if key not in groups:
            groups[key] = ProcessSessions(
                host=host, pid=pid, alias=name, this_process=(host, pid) == me
            )
        return groups[key]

    try:
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(_PG_SESSIONS)
                rows = cursor.fetchall()
            for application_name, state, age in rows:
                tag = parse(application_name)
                if tag is None:
                    view.other_sessions += 1
                    continue
                group(tag["host"], tag["pid"], tag["alias"]).add(state or "", age)
        elif connection.vendor == "mysql":
            with connection.cursor() as cursor:
                cursor.execute(_MYSQL_SESSIONS)
                rows = cursor.fetchall()
            own = _own_mysql_ids(alias)
            for session_id, client, command, age in rows:
                if command == "Sleep":
                    state = "idle" if age is None else "idle in transaction"
                else:
                    state = "active"
                if int(session_id) in own:
                    row = group(me[0], me[1], alias)
                else:
                    row = group(str(client or "").rsplit(":", 1)[0], None, "")
                row.add(state, age)
        else:
            view.error = f"not applicable: {connection.display_name} has no server"
    except DatabaseError as error:
        view.error = str(error).strip() or type(error).__name__
    finally:
        if not was_open and not connection.in_atomic_block:
            connection.close()  # opened for this query only: back to the pool
    view.processes = sorted(
        groups.values(),
        key=lambda row: (not row.this_process, row.host, row.pid or 0, row.alias),
    )
    return view
