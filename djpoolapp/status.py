"""``pool_status()`` and ``dispose()``: the public view of the pools."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .drivers import driver_for
from .pool import AliasPool, pooled_backends, registry


@dataclass(frozen=True)
class PoolStatus:
    """A snapshot of one alias's pool.  Never contains a password."""

    alias: str
    vendor: str
    #: ``user@host:port/database`` of the current pool ("" before first use).
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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _status(alias: str, vendor: str, pool: AliasPool | None) -> PoolStatus:
    counters = registry.stats(alias).snapshot()
    if pool is None:
        from .conf import get_config

        options = get_config().for_alias(alias) or {}
        return PoolStatus(
            alias=alias,
            vendor=vendor,
            database="",
            pool_size=options.get("pool_size", 0),
            max_overflow=options.get("max_overflow", 0),
            checked_out=0,
            idle=0,
            overflow=0,
            **counters,
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
        **counters,
    )


def pool_status(alias: str | None = None) -> dict[str, PoolStatus]:
    """Snapshot of every pooled alias (or only *alias*), keyed by alias.

    Aliases that are pooled but have not connected yet are included with zero
    figures.  Raises ``ValueError`` for an alias djpoolapp does not pool.
    """
    backends = pooled_backends()
    live = {pool.alias: pool for pool in registry.pools()}
    names = [*backends, *(name for name in live if name not in backends)]
    if alias is not None:
        if alias not in names:
            raise ValueError(
                f"database alias '{alias}' is not pooled by djpoolapp (pooled: "
                f"{', '.join(map(repr, names)) or 'none'})"
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
