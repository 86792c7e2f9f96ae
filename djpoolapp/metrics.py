"""Prometheus metrics of the pools (optional: the ``prometheus`` extra).

Importing this module needs ``prometheus_client``; djpoolapp imports it only
when that package is installed, and then registers :class:`PoolCollector`
with ``prometheus_client.REGISTRY`` at startup, the registry that
django-prometheus's ``/metrics`` view and ``prometheus_client``'s own
exporters serve.

The collector reads :func:`djpoolapp.pool_status` and the per-alias counters
at scrape time, so nothing is added to the checkout path beyond the timing
the pool keeps anyway.  Figures are per process, labelled by ``alias``:

====================================== ========= ==========================
``djpool_pool_size``                   gauge     configured ``pool_size``
``djpool_max_overflow``                gauge     configured ``max_overflow``
``djpool_connections_checked_out``     gauge     held by Django now
``djpool_connections_idle``            gauge     open, waiting in the pool
``djpool_connections_overflow``        gauge     open beyond ``pool_size``
``djpool_connections_opened_total``    counter   new server connections
``djpool_connections_recycled_total``  counter   replaced for age
``djpool_connections_invalidated_total`` counter closed after an error
``djpool_checkout_timeouts_total``     counter   ``PoolTimeout`` raised
``djpool_connections_pinned_total``    counter   pinned (``pool_mode``)
``djpool_checkout_seconds``            histogram time to hand out a connection
``djpool_pool_info``                   info      ``pool_mode`` as a label
====================================== ========= ==========================
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client.core import (
    REGISTRY,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from .pool import CHECKOUT_BUCKETS, registry
from .status import PoolStatus, pool_status

GAUGES = (
    ("pool_size", "djpool_pool_size", "Configured pool_size of the alias's pool."),
    ("max_overflow", "djpool_max_overflow", "Configured max_overflow of the pool."),
    ("checked_out", "djpool_connections_checked_out",
     "Pooled connections Django holds now."),
    ("idle", "djpool_connections_idle", "Open connections waiting in the pool."),
    ("overflow", "djpool_connections_overflow",
     "Open connections beyond pool_size (closed again when returned)."),
)  # fmt: skip
COUNTERS = (
    ("opened", "djpool_connections_opened",
     "Server connections opened by the pool."),
    ("recycled", "djpool_connections_recycled",
     "Connections replaced at checkout for being older than recycle."),
    ("invalidated", "djpool_connections_invalidated",
     "Connections closed because they errored or died."),
    ("timeouts", "djpool_checkout_timeouts",
     "Checkouts that waited timeout seconds and raised PoolTimeout."),
    ("pins", "djpool_connections_pinned",
     "Connections pinned to a Django connection until it closed "
     "(pool_mode='transaction')."),
)  # fmt: skip
HISTOGRAM = (
    "djpool_checkout_seconds",
    "Seconds to hand Django a connection: waiting for a free one, the "
    "liveness check and, for a new one, connecting.",
)

#: The options that are not numbers, as labels of one info metric (always 1).
INFO = (
    "djpool_pool",
    "The alias's pool options that are not numbers: pool_mode ('request' or "
    "'transaction').",
    ("pool_mode",),
)


class PoolCollector(Collector):
    """Per-alias pool figures, read at scrape time."""

    def describe(self) -> Iterator[Metric]:
        """The metric names, without touching settings or pools (registration)."""
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        yield from self._families(pool_status())

    def _families(
        self, statuses: dict[str, PoolStatus] | None = None
    ) -> Iterator[Metric]:
        statuses = statuses or {}
        for field, name, documentation in GAUGES:
            gauge = GaugeMetricFamily(name, documentation, labels=["alias"])
            for alias, status in statuses.items():
                gauge.add_metric([alias], getattr(status, field))
            yield gauge
        for field, name, documentation in COUNTERS:
            counter = CounterMetricFamily(name, documentation, labels=["alias"])
            for alias, status in statuses.items():
                counter.add_metric([alias], getattr(status, field))
            yield counter
        histogram = HistogramMetricFamily(*HISTOGRAM, labels=["alias"])
        for alias in statuses:
            counts, total = registry.stats(alias).checkout_histogram()
            cumulative, buckets = 0, []
            for bound, count in zip(
                (*map(floatToGoString, CHECKOUT_BUCKETS), "+Inf"), counts, strict=True
            ):
                cumulative += count
                buckets.append((bound, cumulative))
            histogram.add_metric([alias], buckets, sum_value=total)
        yield histogram
        name, documentation, fields = INFO
        info = InfoMetricFamily(name, documentation, labels=["alias"])
        for alias, status in statuses.items():
            info.add_metric(
                [alias], {field: str(getattr(status, field)) for field in fields}
            )
        yield info


_lock = threading.Lock()
_registered: dict[int, PoolCollector] = {}


def register(to: CollectorRegistry = REGISTRY) -> PoolCollector:
    """Register the collector with *to* once (idempotent); return it.

    djpoolapp calls this for the default registry at startup.  Call it for a
    registry of your own (e.g. one you serve with ``make_wsgi_app``).
    """
    with _lock:
        collector = _registered.get(id(to))
        if collector is None:
            collector = _registered[id(to)] = PoolCollector()
            to.register(collector)
        return collector


def unregister(to: CollectorRegistry = REGISTRY) -> None:
    """Stop exporting the pool metrics from *to* (no-op if not registered)."""
    with _lock:
        collector = _registered.pop(id(to), None)
        if collector is not None:
            to.unregister(collector)
