"""DJPOOL_OPTIONS validation and merging: no database needed."""

from __future__ import annotations

import math
import threading
import typing

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from djpoolapp import conf

ALIASES = ["default", "mysql", "lite"]

MAX_SECONDS = f"<= {int(threading.TIMEOUT_MAX)} (threading.TIMEOUT_MAX)"
SIZE = "an integer >= 1 and <= 262143"
OVERFLOW = (
    "an integer >= 0 and <= 262143 (SQLAlchemy's -1, unlimited overflow, is not "
    "accepted: a pool must bound its connections)"
)


@pytest.fixture(autouse=True)
def _clear_config_cache():
    conf.get_config.cache_clear()
    yield
    conf.get_config.cache_clear()


def test_options_table__matches_the_typed_dict():
    assert set(typing.get_type_hints(conf.PoolOptions)) == set(conf.OPTIONS)
    assert set(typing.get_type_hints(conf.DjpoolOptions)) == {*conf.OPTIONS, "aliases"}


def test_defaults__are_the_contracts():
    assert conf.DEFAULTS == {
        "pool_size": 5,
        "max_overflow": 10,
        "timeout": 30.0,
        "recycle": 3600,
        "pre_ping": True,
        "ping_after_idle": 1.0,
        "ping_timeout": 5.0,
        "reset_on_return": "rollback",
        "reset_session": "auto",
        "pool_mode": "request",
        "use_lifo": False,
        "park": True,
    }


def test_problems__none_for_a_full_valid_setting():
    raw = {
        **conf.DEFAULTS,
        "reset_on_return": None,
        "recycle": -1,
        "aliases": {"default": {"pool_size": 20}, "mysql": False, "lite": True},
    }
    assert conf.problems(raw, ALIASES) == []


def test_problems__unknown_key_suggests_the_right_one():
    assert conf.problems({"aliases": {"default": {"pool_sise": 3}}}, ALIASES) == [
        "unknown option 'pool_sise' in DJPOOL_OPTIONS['aliases']['default']; "
        "did you mean 'pool_size'?"
    ]


def test_problems__unknown_alias_lists_the_real_ones():
    (problem,) = conf.problems({"aliases": {"defualt": {}}}, ALIASES)
    assert problem.startswith("unknown database alias 'defualt' in DJPOOL_OPTIONS")
    assert "did you mean 'default'?" in problem


@pytest.mark.parametrize(
    "key, value, why",
    [
        ("pool_size", 0, f"must be {SIZE}"),
        ("pool_size", -1, f"must be {SIZE}"),
        ("pool_size", "5", f"must be {SIZE}, not str"),
        ("pool_size", True, f"must be {SIZE}, not a boolean"),
        ("max_overflow", -1, f"must be {OVERFLOW}"),
        ("timeout", 0, f"must be a number of seconds > 0 and {MAX_SECONDS}"),
        (
            "recycle",
            0,
            f"must be a number of seconds > 0 and {MAX_SECONDS}, or -1 for never",
        ),
        (
            "recycle",
            -2,
            f"must be a number of seconds > 0 and {MAX_SECONDS}, or -1 for never",
        ),
        ("pre_ping", 1, "must be True or False, not int"),
        (
            "ping_after_idle",
            -0.5,
            f"must be a number of seconds >= 0 and {MAX_SECONDS}",
        ),
        ("ping_timeout", 0, f"must be a number of seconds > 0 and {MAX_SECONDS}"),
        ("reset_on_return", "discard", "must be one of 'rollback' or None"),
        ("reset_on_return", "commit", conf.COMMIT_REFUSED),
        ("reset_session", "sometimes", "must be one of 'auto', 'always' or False"),
        ("use_lifo", "yes", "must be True or False, not str"),
    ],
)
def test_problems__impossible_values_name_key_and_alias(key, value, why):
    assert conf.problems({"aliases": {"mysql": {key: value}}}, ALIASES) == [
        f"DJPOOL_OPTIONS['aliases']['mysql']['{key}'] {why}; got {value!r}"
    ]
    assert conf.problems({key: value}, ALIASES) == [
        f"DJPOOL_OPTIONS['{key}'] {why}; got {value!r}"
    ]


#: Every numeric option and the values it must refuse, by kind of bad input.
NUMERIC = ["pool_size", "max_overflow", "timeout", "recycle", "ping_after_idle",
           "ping_timeout"]  # fmt: skip
BAD_NUMBERS = {
    "nan": float("nan"),
    "inf": float("inf"),
    "-inf": float("-inf"),
    "negative": -5,
    "negative-float": -0.5,
    "huge-float": 1e10,
    "huge-int": 10**400,  # float() of it would overflow
    "bool": True,
    "string": "5",
    "none": None,
}


def test_numeric_options__all_covered():
    """Every option whose default is a number is in NUMERIC (a new numeric
    option must be added there and get its bounds)."""
    numbers = {
        name
        for name, option in conf.OPTIONS.items()
        if isinstance(option.default, (int, float))
        and not isinstance(option.default, bool)
    }
    assert numbers == set(NUMERIC)
    for name in NUMERIC:
        assert conf.OPTIONS[name].maximum is not None, name


@pytest.mark.parametrize("kind", BAD_NUMBERS)
@pytest.mark.parametrize("key", NUMERIC)
def test_problems__every_bad_number_refused_naming_key_alias_and_range(key, kind):
    value = BAD_NUMBERS[kind]
    if key in ("pool_size", "max_overflow") and kind == "huge-float":
        value = 1e6  # a float: refused as a type; an int is tested below
    (problem,) = conf.problems({"aliases": {"mysql": {key: value}}}, ALIASES)
    assert problem.startswith(f"DJPOOL_OPTIONS['aliases']['mysql']['{key}'] must be ")
    assert problem.endswith(f"; got {value!r}")
    rule = conf.OPTIONS[key].rule
    assert rule in problem  # the allowed range
    assert (
        "<= 262143" if key in ("pool_size", "max_overflow") else MAX_SECONDS
    ) in rule


@pytest.mark.parametrize("key", ["pool_size", "max_overflow"])
def test_problems__sizes_above_what_any_server_accepts_refused(key):
    assert conf.problems({key: 262143}, ALIASES) == []
    assert conf.problems({key: 262144}, ALIASES) == [
        f"DJPOOL_OPTIONS['{key}'] must be {conf.OPTIONS[key].rule}; got 262144"
    ]


@pytest.mark.parametrize(
    "key", ["timeout", "recycle", "ping_after_idle", "ping_timeout"]
)
def test_problems__seconds_up_to_timeout_max_accepted(key):
    for value in (threading.TIMEOUT_MAX, 0.001, 1, 2.5):
        assert conf.problems({key: value}, ALIASES) == [], value
    assert conf.problems(
        {key: math.nextafter(threading.TIMEOUT_MAX, math.inf)}, ALIASES
    )


def test_problems__minus_one_means_never_only_for_recycle():
    assert conf.problems({"recycle": -1}, ALIASES) == []
    assert conf.problems({"recycle": -1.0}, ALIASES) == []
    for key in (
        "timeout",
        "ping_after_idle",
        "ping_timeout",
        "pool_size",
        "max_overflow",
    ):
        assert conf.problems({key: -1}, ALIASES), key


def test_timeout_max__is_a_wait_python_accepts():
    """The upper bound is real: a lock wait of exactly TIMEOUT_MAX is
    accepted, one beyond it overflows (what timeout=1e10 did at the first
    exhausted checkout)."""
    lock = threading.Lock()
    lock.acquire()
    assert lock.acquire(timeout=0.01) is False
    threading.Timer(0.05, lock.release).start()
    assert lock.acquire(timeout=threading.TIMEOUT_MAX) is True
    with pytest.raises(OverflowError):
        lock.acquire(timeout=1e10)


def test_get_config__one_problem_per_line():
    options = {
        "timeout": float("nan"),
        "aliases": {"lite": {"ping_timeout": float("inf"), "pool_size": True}},
    }
    with override_settings(DJPOOL_OPTIONS=options):
        with pytest.raises(ImproperlyConfigured) as raised:
            conf.get_config()
    lines = str(raised.value).splitlines()
    assert lines[0] == "3 problems with the pool options:"
    assert lines[1:] == [
        f"- DJPOOL_OPTIONS['timeout'] must be a number of seconds > 0 and "
        f"{MAX_SECONDS}; got nan",
        f"- DJPOOL_OPTIONS['aliases']['lite']['ping_timeout'] must be a number of "
        f"seconds > 0 and {MAX_SECONDS}; got inf",
        f"- DJPOOL_OPTIONS['aliases']['lite']['pool_size'] must be {SIZE}, not a "
        "boolean; got True",
    ]


def test_problems__all_reported_at_once():
    raw = {"pool_size": 0, "aliases": {"nope": {}, "default": {"x": 1}}}
    assert len(conf.problems(raw, ALIASES)) == 3


def test_problems__wrong_shapes():
    assert conf.problems([], ALIASES) == ["DJPOOL_OPTIONS must be a dict, not list"]
    assert conf.problems({"aliases": ["default"]}, ALIASES) == [
        "DJPOOL_OPTIONS['aliases'] must be a dict of alias -> options, not list"
    ]
    assert conf.problems({"aliases": {"default": 3}}, ALIASES) == [
        "DJPOOL_OPTIONS['aliases']['default'] must be a dict of options, or False "
        "to opt the alias out; got 3"
    ]


def test_get_config__raises_improperly_configured_with_every_problem():
    with override_settings(DJPOOL_OPTIONS={"pool_size": -3, "aliases": {"x": {}}}):
        with pytest.raises(ImproperlyConfigured) as raised:
            conf.get_config()
    message = str(raised.value)
    assert "DJPOOL_OPTIONS['pool_size'] must be an integer >= 1" in message
    assert "unknown database alias 'x'" in message


def test_get_config__merges_defaults_and_alias_overrides():
    options = {"pool_size": 3, "aliases": {"default": {"pool_size": 9}, "mysql": False}}
    with override_settings(DJPOOL_OPTIONS=options):
        config = conf.get_config()
        assert config.for_alias("default") == {**conf.DEFAULTS, "pool_size": 9}
        assert config.for_alias("lite") == {**conf.DEFAULTS, "pool_size": 3}
        assert config.for_alias("mysql") is None
        assert config.names_alias("default") and not config.names_alias("lite")


def test_get_config__cache_follows_override_settings():
    with override_settings(DJPOOL_OPTIONS={"pool_size": 2}):
        assert conf.get_config().defaults["pool_size"] == 2
    assert conf.get_config().defaults["pool_size"] == 5


def test_env_disable__turns_pooling_off(monkeypatch):
    monkeypatch.setenv("DJPOOL_DISABLE", "1")
    assert conf.get_config().disabled
    monkeypatch.setenv("DJPOOL_DISABLE", "0")
    conf.get_config.cache_clear()
    assert not conf.get_config().disabled


def test_legacy_djorm_settings__understood_with_a_rename_warning():
    legacy = {"pool_size": 7, "max_overflow": 0, "recycle": 600, "echo": True}
    with override_settings(DJORM_POOL_OPTIONS=legacy, DJORM_POOL_PESSIMISTIC=False):
        with pytest.warns(DeprecationWarning) as warned:
            config = conf.get_config()
    messages = [str(w.message) for w in warned]
    assert messages[0] == (
        "DJORM_POOL_OPTIONS (djorm-ext-pool) is deprecated: rename it to "
        "DJPOOL_OPTIONS and replace DJORM_POOL_PESSIMISTIC with "
        "DJPOOL_OPTIONS['pre_ping']."
    )
    assert "DJORM_POOL_OPTIONS['echo'] has no equivalent" in messages[1]
    assert config.for_alias("default") == {
        **conf.DEFAULTS,
        "pool_size": 7,
        "max_overflow": 0,
        "recycle": 600,
        "pre_ping": False,
    }


def test_legacy_djorm_settings__ignored_when_djpool_options_exist():
    with override_settings(DJORM_POOL_OPTIONS={"pool_size": 7}, DJPOOL_OPTIONS={}):
        assert conf.get_config().defaults["pool_size"] == 5


# -- at start-up: AppConfig.ready() and a real django.setup() -------------------
def test_ready__bad_number_raises_improperly_configured():
    """ready() validates first (CONTRACT section 1): a nan timeout stops the
    app there, naming the option and the range."""
    from django.apps import apps

    with override_settings(DJPOOL_OPTIONS={"timeout": float("nan")}):
        with pytest.raises(ImproperlyConfigured) as raised:
            apps.get_app_config("djpoolapp").ready()
    assert str(raised.value) == (
        f"DJPOOL_OPTIONS['timeout'] must be a number of seconds > 0 and "
        f"{MAX_SECONDS}; got nan"
    )


def test_django_setup__bad_numbers_stop_the_process_one_per_line():
    """A real start-up (a fresh interpreter running django.setup()) with
    nan, inf and 1e10 in DJPOOL_OPTIONS exits with ImproperlyConfigured
    listing each problem on its own line; the same settings with good
    values start."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from django.conf import settings

    def setup(options: dict) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.faults.settings_startup",
            "DJPOOL_TEST_RUN_ID": settings.RUN_ID,
            "DJPOOL_TEST_DRIVER": settings.DRIVER,
            "DJPOOL_FAULTS_OPTIONS": json.dumps(options),  # NaN, Infinity: Python json
        }
        return subprocess.run(
            [sys.executable, "-W", "error", "-c",
             "import django; django.setup(); print('started')"],
            cwd=Path(__file__).resolve().parents[2], env=env,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    bad = setup(
        {
            "timeout": float("nan"),
            "aliases": {"default": {"ping_timeout": float("inf"), "recycle": 1e10}},
        }
    )
    assert bad.returncode != 0
    assert "django.core.exceptions.ImproperlyConfigured: 3 problems" in bad.stderr
    lines = bad.stderr.splitlines()
    for expected in (
        "- DJPOOL_OPTIONS['timeout'] must be a number of seconds > 0 and "
        f"{MAX_SECONDS}; got nan",
        "- DJPOOL_OPTIONS['aliases']['default']['ping_timeout'] must be a number "
        f"of seconds > 0 and {MAX_SECONDS}; got inf",
        "- DJPOOL_OPTIONS['aliases']['default']['recycle'] must be a number of "
        f"seconds > 0 and {MAX_SECONDS}, or -1 for never; got 10000000000.0",
    ):
        assert expected in lines, (expected, bad.stderr[-2000:])
    good = setup({"timeout": 2.5, "aliases": {"default": {"ping_timeout": 0.5}}})
    assert good.returncode == 0, good.stderr[-2000:]
    assert good.stdout.strip() == "started"


class _Holder:
    """Stands for Django's connection wrapper: a lease keeps a weak
    reference to whoever checked the connection out."""

    connection = None


def test_timeout__the_largest_accepted_value_works_in_a_real_pool(tmp_path):
    """timeout=threading.TIMEOUT_MAX (the top of the accepted range): an
    exhausted checkout waits, and is served when a connection comes back,
    instead of raising OverflowError (what 1e10 did).  A pooled SQLite
    file, through djpoolapp's own AliasPool and queue."""
    import sqlite3

    from djpoolapp.drivers import driver_for
    from djpoolapp.pool import AliasPool, AliasStats

    options = {**conf.DEFAULTS, "pool_size": 1, "max_overflow": 0}
    options["timeout"] = threading.TIMEOUT_MAX
    assert conf.problems(options, ALIASES) == []
    pool = AliasPool(
        "lite",
        driver_for(sqlite3),
        {"database": str(tmp_path / "pool.sqlite3")},
        {},
        options,
        AliasStats(),
    )
    try:
        holders = [_Holder(), _Holder()]  # alive: the leases' owners
        held = pool.checkout(holders[0])
        served: list[object] = []

        def waiter() -> None:
            try:
                served.append(pool.checkout(holders[1]))
            except BaseException as error:  # reported below
                served.append(error)

        thread = threading.Thread(target=waiter)
        thread.start()
        thread.join(0.3)
        assert thread.is_alive() and served == []  # waiting, not failed
        held._djpool_lease.checkin()  # Django's close: the waiter gets it
        thread.join(5)
        assert len(served) == 1 and served[0] is held, served
        held._djpool_lease.checkin()
    finally:
        pool.retire()
