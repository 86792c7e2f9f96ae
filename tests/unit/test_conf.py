"""DJPOOL_OPTIONS validation and merging: no database needed."""

from __future__ import annotations

import typing

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from djpoolapp import conf

ALIASES = ["default", "mysql", "lite"]


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
        "reset_on_return": "rollback",
        "use_lifo": False,
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
        ("pool_size", 0, "must be an integer >= 1"),
        ("pool_size", -1, "must be an integer >= 1"),
        ("pool_size", "5", "must be an integer >= 1, not str"),
        ("pool_size", True, "must be an integer >= 1, not a boolean"),
        ("max_overflow", -1, "must be an integer >= 0"),
        ("timeout", 0, "must be a number of seconds > 0"),
        ("recycle", 0, "must be a number of seconds > 0, or -1 for never"),
        ("recycle", -2, "must be a number of seconds > 0, or -1 for never"),
        ("pre_ping", 1, "must be True or False, not int"),
        ("ping_after_idle", -0.5, "must be a number of seconds >= 0"),
        ("reset_on_return", "discard", "must be one of 'rollback', 'commit' or None"),
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
