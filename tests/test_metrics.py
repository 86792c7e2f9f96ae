"""Prometheus metrics: scraped after known traffic, the figures match."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import prometheus_client
import pytest
from django.db import OperationalError, connections
from django.test import override_settings
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from djpoolapp import metrics
from djpoolapp.pool import CHECKOUT_BUCKETS
from tests.conftest import ALIASES
from tests.test_logging import kill, session_id

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def scrape():
    """``scrape(alias)``: {sample name (+ le): value} of *alias* from a
    registry holding only djpoolapp's collector."""
    registry = CollectorRegistry()
    metrics.register(registry)

    def read(alias: str) -> dict[str, float]:
        text = generate_latest(registry).decode()
        return {
            sample.name
            + (
                f"[{sample.labels['le']}]" if "le" in sample.labels else ""
            ): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.labels.get("alias") == alias
        }

    yield read
    metrics.unregister(registry)


def delta(before: dict[str, float], after: dict[str, float], name: str) -> float:
    return after[name] - before.get(name, 0.0)


def hold(alias: str, count: int) -> tuple[threading.Event, list[threading.Thread]]:
    """Check out *count* connections of *alias* in threads until released."""
    release = threading.Event()
    barrier = threading.Barrier(count + 1)

    def holder() -> None:
        try:
            connections[alias].ensure_connection()
            barrier.wait(10)
            release.wait(10)
        finally:
            connections[alias].close()

    threads = [threading.Thread(target=holder) for _ in range(count)]
    for thread in threads:
        thread.start()
    barrier.wait(10)
    return release, threads


@pytest.mark.parametrize("alias", ALIASES)
def test_metrics__match_known_traffic(alias, scrape, request_cycle):
    options = {"pool_size": 1, "max_overflow": 1, "timeout": 0.2}
    with override_settings(DJPOOL_OPTIONS={"aliases": {alias: options}}):
        connections[alias].close()
        before = scrape(alias)
        for _ in range(10):
            assert request_cycle(f"/session/{alias}/")[0] == 200
        steady = scrape(alias)
        assert delta(before, steady, "djpool_checkout_seconds_count") == 10
        assert delta(before, steady, "djpool_connections_opened_total") == 1
        assert steady["djpool_pool_size"] == 1
        assert steady["djpool_max_overflow"] == 1
        assert steady["djpool_connections_idle"] == 1
        assert steady["djpool_connections_checked_out"] == 0

        kill(alias, session_id(alias))
        connections[alias].close()
        assert request_cycle(f"/session/{alias}/")[0] == 200
        after_kill = scrape(alias)
        assert delta(steady, after_kill, "djpool_connections_invalidated_total") == 1
        assert delta(steady, after_kill, "djpool_connections_opened_total") == 1

        release, threads = hold(alias, 2)  # pool_size + max_overflow
        busy = scrape(alias)
        assert busy["djpool_connections_checked_out"] == 2
        assert busy["djpool_connections_overflow"] == 1
        with pytest.raises(OperationalError):
            connections[alias].ensure_connection()
        release.set()
        for thread in threads:
            thread.join()
        assert delta(busy, scrape(alias), "djpool_checkout_timeouts_total") == 1

    with override_settings(DJPOOL_OPTIONS={"aliases": {alias: {"recycle": 0.05}}}):
        connections[alias].close()
        request_cycle(f"/session/{alias}/")
        time.sleep(0.1)
        fresh = scrape(alias)
        request_cycle(f"/session/{alias}/")
        assert delta(fresh, scrape(alias), "djpool_connections_recycled_total") == 1


@pytest.mark.postgres
@pytest.mark.mysql
@pytest.mark.parametrize("mode", ["request", "transaction"])
def test_metrics__pool_mode_is_an_info_label(mode):
    other = {"request": "transaction", "transaction": "request"}[mode]
    options = {"pool_mode": mode, "aliases": {"mysql": {"pool_mode": other}}}
    registry = CollectorRegistry()
    metrics.register(registry)
    try:
        with override_settings(DJPOOL_OPTIONS=options):
            for alias in ("default", "mysql"):
                connections[alias].ensure_connection()
                connections[alias].close()
            text = generate_latest(registry).decode()
    finally:
        metrics.unregister(registry)
    (family,) = [
        family
        for family in text_string_to_metric_families(text)
        if family.name == "djpool_pool_info"
    ]
    modes = {
        sample.labels["alias"]: sample.labels["pool_mode"] for sample in family.samples
    }
    assert {alias: modes[alias] for alias in ("default", "mysql")} == {
        "default": mode,
        "mysql": other,
    }
    assert {sample.value for sample in family.samples} == {1.0}


@pytest.mark.postgres
def test_metrics__checkout_histogram_is_consistent(scrape, request_cycle):
    # The histogram is cumulative over the process (earlier tests' checkouts
    # are in it): the checks are on what these 5 requests added.
    before = scrape("default")
    for _ in range(5):
        request_cycle("/session/default/")
    after = scrape("default")
    bounds = [f"djpool_checkout_seconds_bucket[{b}]" for b in CHECKOUT_BUCKETS]
    names = [*bounds, "djpool_checkout_seconds_bucket[+Inf]"]
    cumulative = [after[name] for name in names]
    assert cumulative == sorted(cumulative)  # cumulative buckets
    assert cumulative[-1] == after["djpool_checkout_seconds_count"]
    added = [delta(before, after, name) for name in names]
    assert added == sorted(added)
    assert added[-1] == delta(before, after, "djpool_checkout_seconds_count") >= 5
    assert 0 < delta(before, after, "djpool_checkout_seconds_sum") < 60
    # reuse is fast
    assert delta(before, after, "djpool_checkout_seconds_bucket[0.01]") >= 4


@pytest.mark.postgres
def test_metrics__registered_with_the_default_registry_at_startup():
    text = generate_latest(prometheus_client.REGISTRY).decode()
    assert 'djpool_pool_size{alias="default"} 5.0' in text
    assert "# TYPE djpool_checkout_seconds histogram" in text


def test_metrics__register_is_idempotent_and_undone():
    registry = CollectorRegistry()
    assert metrics.register(registry) is metrics.register(registry)
    assert b"djpool_connections_idle" in generate_latest(registry)
    metrics.unregister(registry)
    metrics.unregister(registry)  # no-op
    assert b"djpool_" not in generate_latest(registry)


def test_metrics__nothing_imported_without_prometheus_client():
    script = textwrap.dedent(
        """
        import sys
        sys.modules["prometheus_client"] = None  # as if not installed
        import django
        django.setup()
        from django.core.checks import run_checks
        assert not run_checks(tags=["djpoolapp"])
        loaded = sorted(m for m in sys.modules if m.startswith(("prometheus", "djpoolapp.metrics")))
        print("loaded:", loaded)
        """
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "PYTHONPATH": str(ROOT),
    }
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # Only the None stub the script planted: nothing imported prometheus_client
    # for real, and djpoolapp.metrics was never loaded.
    assert result.stdout.strip() == "loaded: ['prometheus_client']"
