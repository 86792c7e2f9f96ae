"""Settings: the option table, its validation and the per-alias merge.

``OPTIONS`` is the single source of truth for option names, types and
defaults: validation, the ``PoolOptions`` TypedDict test and the README table
are all checked against it.
"""

from __future__ import annotations

import difflib
import functools
import math
import os
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypedDict, cast

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

SETTING = "DJPOOL_OPTIONS"
LEGACY_SETTING = "DJORM_POOL_OPTIONS"
LEGACY_PESSIMISTIC = "DJORM_POOL_PESSIMISTIC"
DISABLE_ENV = "DJPOOL_DISABLE"

#: The engines whose drivers djpoolapp knows how to pool (by driver module).
POOLED_DRIVERS = ("psycopg", "psycopg2", "MySQLdb", "sqlite3")

#: The longest wait Python's locks accept (``threading.TIMEOUT_MAX``, about
#: 292 years on 64-bit Linux): the bound of every option in seconds.  Longer
#: waits raise ``OverflowError`` where the pool waits (an exhausted checkout).
MAX_SECONDS = threading.TIMEOUT_MAX
#: The most connections one pool may ask for: PostgreSQL refuses
#: ``max_connections`` above 262143 (MAX_BACKENDS), MariaDB above 100000.
MAX_CONNECTIONS = 262143

_SECONDS = f"<= {int(MAX_SECONDS)} (threading.TIMEOUT_MAX)"


@dataclass(frozen=True)
class Option:
    """One pool option: accepted types, default, and the rule it must obey."""

    types: tuple[type, ...]
    default: Any
    rule: str  # human text used in errors and docs
    allow_none: bool = False
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    exclusive_minimum: bool = False
    #: Inclusive upper bound of a numeric option.
    maximum: float | None = None
    allow_minus_one: bool = False
    help: str = ""

    def problem(self, value: Any) -> str | None:
        """Return why *value* is not acceptable, or None.

        Numbers are checked for type (``bool`` is not a number here), then
        finiteness (``nan`` compares false with everything, so it would slip
        through a range check; ``inf`` overflows the waits), then range.
        """
        if value is None and self.allow_none:
            return None
        if self.choices is not None:
            return None if value in self.choices else f"must be one of {self.rule}"
        if isinstance(value, bool) and bool not in self.types:
            return f"must be {self.rule}, not a boolean"
        if not isinstance(value, self.types):
            return f"must be {self.rule}, not {type(value).__name__}"
        if self.allow_minus_one and value == -1:
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be {self.rule}"
        # Compared as they are: float() of a huge int would overflow.
        number = cast(float, value)
        if self.minimum is not None and (
            number <= self.minimum if self.exclusive_minimum else number < self.minimum
        ):
            return f"must be {self.rule}"
        if self.maximum is not None and number > self.maximum:
            return f"must be {self.rule}"
        return None


OPTIONS: dict[str, Option] = {
    "pool_size": Option(
        (int,),
        5,
        f"an integer >= 1 and <= {MAX_CONNECTIONS}",
        minimum=1,
        maximum=MAX_CONNECTIONS,
        help="Connections kept open per pool.",
    ),
    "max_overflow": Option(
        (int,),
        10,
        f"an integer >= 0 and <= {MAX_CONNECTIONS} (SQLAlchemy's -1, unlimited "
        "overflow, is not accepted: a pool must bound its connections)",
        minimum=0,
        maximum=MAX_CONNECTIONS,
        help="Extra connections allowed under load, closed when returned.",
    ),
    "timeout": Option(
        (int, float),
        30.0,
        f"a number of seconds > 0 and {_SECONDS}",
        minimum=0,
        exclusive_minimum=True,
        maximum=MAX_SECONDS,
        help="Seconds to wait for a free connection before raising "
        "djpoolapp.PoolTimeout (a django.db.OperationalError).",
    ),
    "recycle": Option(
        (int, float),
        3600,
        f"a number of seconds > 0 and {_SECONDS}, or -1 for never",
        minimum=0,
        exclusive_minimum=True,
        maximum=MAX_SECONDS,
        allow_minus_one=True,
        help="Connections older than this are replaced at checkout.",
    ),
    "pre_ping": Option(
        (bool,),
        True,
        "True or False",
        help="Check a connection before handing it out; replace it if dead.",
    ),
    "ping_after_idle": Option(
        (int, float),
        1.0,
        f"a number of seconds >= 0 and {_SECONDS}",
        minimum=0,
        maximum=MAX_SECONDS,
        help="Only ping connections idle at least this long (0: always). A "
        "connection the server closed is detected without a round trip anyway.",
    ),
    "ping_timeout": Option(
        (int, float),
        5.0,
        f"a number of seconds > 0 and {_SECONDS}",
        minimum=0,
        exclusive_minimum=True,
        maximum=MAX_SECONDS,
        help="Seconds any round trip the pool itself makes (pre-ping, rollback "
        "at checkin, session reset) may take; then its socket is shut down and "
        "the connection invalidated. Not applied to the application's queries "
        "(see docs/timeouts.rst).",
    ),
    "reset_on_return": Option(
        (str,),
        "rollback",
        "'rollback' or None",
        allow_none=True,
        choices=("rollback", None),
        help="Kept for compatibility: an open transaction is always rolled back "
        "when Django returns a connection (None no longer leaves it open; "
        "'commit' is refused).",
    ),
    "reset_session": Option(
        (str, bool),
        "auto",
        "'auto', 'always' or False",
        choices=("auto", "always", False),
        help="Hand each checkout the session state of a fresh connection: "
        "'auto' resets (PostgreSQL DISCARD ALL; MySQL closes the session) only "
        "after a request changed session state, 'always' after every "
        "request, False never on PostgreSQL (session state then survives, as "
        "with CONN_MAX_AGE; a changed MySQL session is still closed).",
    ),
    "pool_mode": Option(
        (str,),
        "request",
        "'request' or 'transaction'",
        choices=("request", "transaction"),
        help="When Django's connection holds its pooled connection: 'request' "
        "from its first query to the end of the request; 'transaction' only "
        "while a transaction, an open cursor or pinned session state needs it "
        "(see docs/pool_mode.rst).",
    ),
    "use_lifo": Option(
        (bool,),
        False,
        "True or False",
        help="Hand out the most recently returned connection first, letting "
        "surplus connections age out through recycle.",
    ),
    "park": Option(
        (bool,),
        True,
        "True or False",
        help="Fast path: between requests (transaction mode: between "
        "statements) a clean connection stays parked with its Django "
        "connection, which takes it back without Django's connect() set-up; another thread takes it when "
        "nothing else is idle, and a waiting checkout is handed one Django "
        "already set up. False: every request pays Django's connect() and "
        "SQLAlchemy's checkout. See docs/how_it_works.rst.",
    ),
}

DEFAULTS: dict[str, Any] = {name: option.default for name, option in OPTIONS.items()}


class PoolOptions(TypedDict, total=False):
    """The keys accepted at the top of ``DJPOOL_OPTIONS`` and per alias."""

    pool_size: int
    max_overflow: int
    timeout: float
    recycle: float
    pre_ping: bool
    ping_after_idle: float
    ping_timeout: float
    reset_on_return: Literal["rollback"] | None
    reset_session: Literal["auto", "always", False]
    pool_mode: Literal["request", "transaction"]
    use_lifo: bool
    park: bool


class DjpoolOptions(PoolOptions, total=False):
    """The whole ``DJPOOL_OPTIONS`` setting."""

    aliases: dict[str, PoolOptions | bool]


#: djorm-ext-pool passed its options to sqlalchemy.pool.manage(); these
#: SQLAlchemy arguments have no meaning here and are dropped with a warning.
LEGACY_IGNORED = ("echo", "use_threadlocal", "logging_name", "poolclass", "events")


#: Why reset_on_return="commit" is refused (transparency issue, item 1).
COMMIT_REFUSED = (
    "must be 'rollback' or None: 'commit' is not supported, because Django "
    "never commits on close (a connection Django closes with a transaction "
    "open holds work the application did not commit, e.g. a request that "
    "failed after set_autocommit(False)); commit explicitly in your code"
)


def _did_you_mean(name: str, known: list[str]) -> str:
    if isinstance(name, str) and name.lower() in known:
        return f"; did you mean '{name.lower()}'?"  # POOL_SIZE -> pool_size
    close = difflib.get_close_matches(name, known, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _where(alias: str | None, setting: str = SETTING) -> str:
    return f"{setting}['aliases']['{alias}']" if alias else setting


def option_problems(
    values: Mapping[str, Any], alias: str | None = None, setting: str = SETTING
) -> list[str]:
    """Every problem with one level of options (top level or one alias)."""
    problems = []
    where = _where(alias, setting)
    for key, value in values.items():
        if alias is None and key == "aliases":
            continue
        option = OPTIONS.get(key)
        if option is None:
            known = list(OPTIONS) + ([] if alias else ["aliases"])
            problems.append(
                f"unknown option '{key}' in {where}{_did_you_mean(key, known)}"
            )
            continue
        why = option.problem(value)
        if key == "reset_on_return" and value == "commit":
            why = COMMIT_REFUSED
        if why:
            problems.append(f"{where}['{key}'] {why}; got {value!r}")
    return problems


def problems(
    raw: Any, database_aliases: list[str], setting: str = SETTING
) -> list[str]:
    """Every problem with a whole ``DJPOOL_OPTIONS`` value, for errors and checks."""
    if not isinstance(raw, Mapping):
        return [f"{setting} must be a dict, not {type(raw).__name__}"]
    found = option_problems(raw, None, setting)
    aliases = raw.get("aliases", {})
    if not isinstance(aliases, Mapping):
        return found + [
            f"{setting}['aliases'] must be a dict of alias -> options, "
            f"not {type(aliases).__name__}"
        ]
    for alias, value in aliases.items():
        if alias not in database_aliases:
            found.append(
                f"unknown database alias '{alias}' in {setting}['aliases'] (the "
                f"aliases in DATABASES are {', '.join(map(repr, database_aliases))})"
                f"{_did_you_mean(str(alias), database_aliases)}"
            )
            continue
        if isinstance(value, bool):
            continue
        if not isinstance(value, Mapping):
            found.append(
                f"{_where(alias, setting)} must be a dict of options, or False to "
                f"opt the alias out; got {value!r}"
            )
            continue
        found.extend(option_problems(value, alias, setting))
    return found


def problems_message(found: list[str]) -> str:
    """The ``ImproperlyConfigured`` message for *found*: one problem per line."""
    if len(found) == 1:
        return found[0]
    return f"{len(found)} problems with the pool options:\n" + "\n".join(
        f"- {problem}" for problem in found
    )


@dataclass(frozen=True)
class Config:
    """The validated setting: defaults for every alias plus per-alias entries."""

    disabled: bool
    defaults: dict[str, Any]
    aliases: dict[str, dict[str, Any] | bool]
    setting: str = SETTING

    def for_alias(self, alias: str) -> dict[str, Any] | None:
        """The merged options of *alias*, or None when the user opted it out."""
        entry = self.aliases.get(alias)
        if entry is False:
            return None
        if isinstance(entry, Mapping):
            return {**self.defaults, **entry}
        return dict(self.defaults)

    def names_alias(self, alias: str) -> bool:
        """True when ``aliases`` opts *alias* in explicitly (needed for SQLite)."""
        entry = self.aliases.get(alias)
        return entry is True or isinstance(entry, Mapping)


def _legacy_options() -> dict[str, Any] | None:
    """Read djorm-ext-pool's settings, warning what to rename."""
    raw = getattr(settings, LEGACY_SETTING, None)
    pessimistic = getattr(settings, LEGACY_PESSIMISTIC, None)
    if raw is None and pessimistic is None:
        return None
    raw = dict(raw or {})
    warnings.warn(
        f"{LEGACY_SETTING} (djorm-ext-pool) is deprecated: rename it to {SETTING}"
        + (
            f" and replace {LEGACY_PESSIMISTIC} with {SETTING}['pre_ping']"
            if pessimistic is not None
            else ""
        )
        + ".",
        DeprecationWarning,
        stacklevel=2,
    )
    for key in LEGACY_IGNORED:
        if key in raw:
            raw.pop(key)
            warnings.warn(
                f"{LEGACY_SETTING}['{key}'] has no equivalent in djpoolapp and is "
                "ignored; remove it.",
                DeprecationWarning,
                stacklevel=2,
            )
    if pessimistic is not None:
        raw.setdefault("pre_ping", bool(pessimistic))
    return raw


def env_disabled() -> bool:
    """``DJPOOL_DISABLE=1`` (or true/yes/on) turns every pool off."""
    return os.environ.get(DISABLE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


@functools.cache
def get_config() -> Config:
    """Validated configuration, cached until a relevant setting changes."""
    raw = getattr(settings, SETTING, None)
    setting = SETTING
    if raw is None:
        legacy = _legacy_options()
        if legacy is not None:
            raw, setting = legacy, LEGACY_SETTING
    if raw is None:
        raw = {}
    found = problems(raw, list(settings.DATABASES), setting)
    if found:
        raise ImproperlyConfigured(problems_message(found))
    defaults = {**DEFAULTS, **{k: v for k, v in raw.items() if k != "aliases"}}
    aliases = {alias: value for alias, value in raw.get("aliases", {}).items()}
    return Config(
        disabled=env_disabled(), defaults=defaults, aliases=aliases, setting=setting
    )


#: Settings whose change invalidates get_config() (see signals in apps.py).
WATCHED_SETTINGS = frozenset({SETTING, LEGACY_SETTING, LEGACY_PESSIMISTIC, "DATABASES"})
