"""System checks (``djpoolapp.E…`` / ``W…``), run by ``manage.py check``.

They answer "is the pool set up to work?" before the first request does:

========== ============================================================
E001       ``DJPOOL_OPTIONS`` is invalid (every problem, one error each)
W001       ``CONN_MAX_AGE`` is not 0 on a pooled alias
W002       an alias uses Django's own pool, so djpoolapp leaves it alone
W003       ``aliases`` names a database djpoolapp cannot pool
W004       ``pool_size + max_overflow`` exceeds the server's
           ``max_connections`` (a database check: ``check --database``)
W005       an alias's ENGINE is a third-party pool (django-db-connection-pool,
           django-postgrespool2, django-db-geventpool): left alone
W006       a ``DATABASES`` entry still has django-db-connection-pool's
           ``POOL_OPTIONS``, which djpoolapp ignores
W007       djorm-ext-pool's ``DJORM_POOL_OPTIONS`` are still set (apps.py)
W008       a pooled alias's ``DATABASES[alias]["OPTIONS"]`` holds pool options
           (``pool_size``, ...), which go to the driver, not to the pool
========== ============================================================

Only E001 reads the options raw: the other checks assume valid options and
stay silent when they are not, so one mistake is reported once.

E001 and W001 never show in a ``manage.py check`` run: ``AppConfig.ready()``
raises ``ImproperlyConfigured`` for invalid options (``conf.get_config()``)
and for ``CONN_MAX_AGE`` != 0 on a pooled alias
(``pool.refuse_persistent_connections()``) before any check runs.  They
report settings changed after start-up (a test's ``override_settings``, then
``run_checks()``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured

from . import conf

logger = logging.getLogger("djpoolapp")

TAG = "djpoolapp"
OPTIONS_HINT = "See the options table in djpoolapp's README."


def _pooled_aliases() -> dict[str, type] | None:
    """Alias -> backend class of the pooled aliases; None if options are bad."""
    from .pool import pooled_backends

    try:
        return pooled_backends()
    except ImproperlyConfigured:
        return None  # E001 reports it


def _raw_options() -> tuple[Any, str] | None:
    """The user's setting and its name (djorm-ext-pool's when only it is set)."""
    raw = getattr(settings, conf.SETTING, None)
    if raw is not None:
        return raw, conf.SETTING
    legacy = getattr(settings, conf.LEGACY_SETTING, None)
    if legacy is not None:
        if isinstance(legacy, Mapping):  # keys that are dropped with a warning
            legacy = {k: v for k, v in legacy.items() if k not in conf.LEGACY_IGNORED}
        return legacy, conf.LEGACY_SETTING
    return None


@register(TAG)
def check_options(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E001: every problem in ``DJPOOL_OPTIONS`` at once, one error each.

    Start-up stops at the same problems first (``ImproperlyConfigured``, all
    of them in one message), so this check reports only options changed
    after start-up.
    """
    found = _raw_options()
    if found is None:
        return []
    raw, setting = found
    return [
        Error(problem, hint=OPTIONS_HINT, id="djpoolapp.E001")
        for problem in conf.problems(raw, list(settings.DATABASES), setting)
    ]


@register(TAG)
def check_conn_max_age(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """W001: persistent connections defeat the pool.

    Start-up refuses them first (``ImproperlyConfigured`` from
    ``pool.refuse_persistent_connections()``), so this check reports only a
    ``CONN_MAX_AGE`` changed after start-up.

    With ``CONN_MAX_AGE`` > 0 (or None) Django keeps each thread's connection
    checked out between requests: the pool can no longer share connections
    between threads, and ``pool_size`` stops bounding anything.
    """
    pooled = _pooled_aliases() or {}
    messages: list[CheckMessage] = []
    for alias in pooled:
        age = settings.DATABASES[alias].get("CONN_MAX_AGE", 0)
        if age == 0:
            continue
        messages.append(
            Warning(
                f"Database alias '{alias}' is pooled by djpoolapp but sets "
                f"CONN_MAX_AGE={age!r}: Django keeps each thread's connection "
                "checked out between requests, so the pool cannot share it "
                "with other threads and every thread holds one connection.",
                hint=f"Set DATABASES['{alias}']['CONN_MAX_AGE'] = 0 (the pool "
                "keeps connections open for you), or opt the alias out with "
                f"DJPOOL_OPTIONS['aliases']['{alias}'] = False.",
                id="djpoolapp.W001",
            )
        )
    return messages


@register(TAG)
def check_native_pool(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """W002: an alias on Django's own pool (5.1+) is left alone."""
    try:
        config = conf.get_config()
    except ImproperlyConfigured:
        return []
    return [
        Warning(
            f"Database alias '{alias}' uses Django's own connection pool "
            "(OPTIONS['pool']); djpoolapp leaves it alone.",
            hint="Remove OPTIONS['pool'] to pool it with djpoolapp, or opt the "
            f"alias out with DJPOOL_OPTIONS['aliases']['{alias}'] = False.",
            id="djpoolapp.W002",
        )
        for alias, db in settings.DATABASES.items()
        if (db.get("OPTIONS") or {}).get("pool") and config.for_alias(alias) is not None
    ]


def _unpoolable_reason(database: Mapping[str, Any]) -> str | None:
    """Why djpoolapp cannot pool *alias*, or None if it can."""
    from django.db.utils import load_backend

    from .drivers import SQLiteDriver, driver_for

    engine = database.get("ENGINE", "")
    try:
        backend = load_backend(engine)
    except (ImproperlyConfigured, ImportError):
        return None  # Django reports a backend it cannot load
    driver = driver_for(getattr(backend.DatabaseWrapper, "Database", None))
    if driver is None:
        return (
            f"its engine '{engine}' uses a driver djpoolapp does not support "
            f"(supported: {', '.join(conf.POOLED_DRIVERS)})"
        )
    if isinstance(driver, SQLiteDriver) and not driver.can_pool(
        {"database": database.get("NAME", "")}
    ):
        return (
            "it is an in-memory SQLite database, which is never pooled (every "
            "connection to it is a separate database)"
        )
    return None


@register(TAG)
def check_unpoolable_aliases(
    app_configs: Any = None, **kwargs: Any
) -> list[CheckMessage]:
    """W003: options for an alias djpoolapp cannot pool have no effect."""
    try:
        config = conf.get_config()
    except ImproperlyConfigured:
        return []
    messages: list[CheckMessage] = []
    for alias, entry in config.aliases.items():
        database = settings.DATABASES.get(alias)
        if entry is False or database is None:
            continue
        reason = _unpoolable_reason(database)
        if reason is None:
            continue
        messages.append(
            Warning(
                f"{config.setting}['aliases']['{alias}'] configures database "
                f"alias '{alias}', but djpoolapp cannot pool it: {reason}. "
                "The alias is used unpooled.",
                hint=f"Remove the entry, or set {config.setting}['aliases']"
                f"['{alias}'] = False to record the opt-out.",
                id="djpoolapp.W003",
            )
        )
    return messages


def _max_connections(alias: str) -> int | None:
    """The server's max_connections, read through the alias's own connection."""
    from django.db import DatabaseError, connections

    from .server import max_connections

    connection = connections[alias]
    was_open = connection.connection is not None
    try:
        return max_connections(connection)
    except DatabaseError as error:
        # Django's own checks and the first query report an unreachable
        # server; this one only says it could not compare.
        logger.debug("Could not read max_connections of %r: %s", alias, error)
        return None
    finally:
        if not was_open and not connection.in_atomic_block:
            connection.close()


@register(TAG, Tags.database)
def check_max_connections(
    app_configs: Any = None, databases: Iterable[str] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """W004: one process could open more connections than the server accepts.

    A database check: Django runs it only when asked for database checks
    (``manage.py check --database ALIAS``, ``migrate``, the test runner),
    and only for the aliases it names.
    """
    if databases is None:
        return []
    pooled = _pooled_aliases() or {}
    config = conf.get_config() if pooled else None
    messages: list[CheckMessage] = []
    for alias in databases:
        if alias not in pooled or config is None:
            continue
        options = config.for_alias(alias) or {}
        total = options["pool_size"] + options["max_overflow"]
        limit = _max_connections(alias)
        if limit is None or total <= limit:
            continue
        messages.append(
            Warning(
                f"Database alias '{alias}' may open pool_size + max_overflow = "
                f"{options['pool_size']} + {options['max_overflow']} = {total} "
                "connections in each process, more than the server's "
                f"max_connections = {limit}.",
                hint="Lower pool_size/max_overflow in DJPOOL_OPTIONS or raise "
                "the server's max_connections; with several worker processes "
                "keep workers x (pool_size + max_overflow) <= max_connections, "
                "or put PgBouncer/ProxySQL in front.",
                id="djpoolapp.W004",
            )
        )
    return messages


def _stock_engine(engine: str) -> str | None:
    """The engine of the Django backend a third-party pooling backend extends
    (``django.db.backends.postgresql``), or None if it cannot be loaded."""
    from django.db.utils import load_backend

    try:
        wrapper_class = load_backend(engine).DatabaseWrapper
    except (ImproperlyConfigured, ImportError):
        return None
    for klass in wrapper_class.__mro__:
        module = str(klass.__module__)
        if module.startswith("django.") and module.endswith(".base"):
            if module != "django.db.backends.base.base":
                return module.removesuffix(".base")
    return None


@register(TAG)
def check_stacked_pools(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """W005: an alias on a third-party pooling backend is left alone.

    Two pools stacked would each hold the other's connections: the inner one
    keeps every connection the outer one ever opened checked out for good.
    """
    from .pool import stacked_pool

    try:
        config = conf.get_config()
    except ImproperlyConfigured:
        return []
    messages: list[CheckMessage] = []
    for alias, database in settings.DATABASES.items():
        package = stacked_pool(database)
        if package is None or config.for_alias(alias) is None:
            continue
        engine = database.get("ENGINE", "")
        stock = _stock_engine(engine) or "the Django engine it extends"
        stock_text = f"'{stock}'" if stock.startswith("django.") else stock
        moved = (
            f", move DATABASES['{alias}']['POOL_OPTIONS'] to "
            f"{config.setting}['aliases']['{alias}']"
            if "POOL_OPTIONS" in database
            else ""
        )
        messages.append(
            Warning(
                f"Database alias '{alias}' uses ENGINE '{engine}', a connection "
                f"pool of its own ({package}); djpoolapp leaves it alone rather "
                "than stack a second pool on it.",
                hint=f"To pool it with djpoolapp, set DATABASES['{alias}']"
                f"['ENGINE'] = {stock_text}{moved} and uninstall {package}; to "
                "keep it, record the opt-out with "
                f"{config.setting}['aliases']['{alias}'] = False.",
                id="djpoolapp.W005",
            )
        )
    return messages


#: django-db-connection-pool's POOL_OPTIONS keys -> djpoolapp's options.
POOL_OPTIONS_NAMES = {
    "POOL_SIZE": "pool_size",
    "MAX_OVERFLOW": "max_overflow",
    "RECYCLE": "recycle",
    "TIMEOUT": "timeout",
    "PRE_PING": "pre_ping",
    "USE_LIFO": "use_lifo",
    "RESET_ON_RETURN": "reset_on_return",
}


@register(TAG)
def check_leftover_pool_options(
    app_configs: Any = None, **kwargs: Any
) -> list[CheckMessage]:
    """W006: ``DATABASES[alias]['POOL_OPTIONS']`` left from
    django-db-connection-pool, on an alias that is no longer its engine."""
    from .pool import stacked_pool

    try:
        config = conf.get_config()
    except ImproperlyConfigured:
        config = None
    setting = config.setting if config is not None else conf.SETTING
    messages: list[CheckMessage] = []
    for alias, database in settings.DATABASES.items():
        leftover = database.get("POOL_OPTIONS")
        if leftover is None or stacked_pool(database) is not None:
            continue
        translated = (
            {
                POOL_OPTIONS_NAMES.get(str(key), str(key).lower()): value
                for key, value in leftover.items()
            }
            if isinstance(leftover, Mapping)
            else {}
        )
        messages.append(
            Warning(
                f"DATABASES['{alias}']['POOL_OPTIONS'] is django-db-connection-"
                "pool's setting; djpoolapp ignores it.",
                hint=f"Move it to {setting}['aliases']['{alias}'] = "
                f"{translated!r} (djpoolapp's option names are lower-case) and "
                f"remove DATABASES['{alias}']['POOL_OPTIONS'].",
                id="djpoolapp.W006",
            )
        )
    return messages


#: Keys of ``OPTIONS`` that share a pool option's name but are the driver's
#: own, by vendor: ``sqlite3.connect(timeout=...)`` is SQLite's busy timeout.
DRIVER_OWN_KEYS = {"sqlite": frozenset({"timeout"})}


@register(TAG)
def check_pool_options_in_database_options(
    app_configs: Any = None, **kwargs: Any
) -> list[CheckMessage]:
    """W008: pool options put in ``DATABASES[alias]['OPTIONS']``.

    Django passes ``OPTIONS`` to the driver's ``connect()``, which refuses an
    argument it does not know (psycopg: "invalid connection option",
    mysqlclient and sqlite3: ``TypeError``), so the alias cannot connect, and
    djpoolapp never reads them there.  Matched case-insensitively against
    djpoolapp's option names (``POOL_SIZE`` too); Django's and the drivers'
    own keys (``pool``, ``isolation_level``, SQLite's ``timeout`` ...),
    spelled as the driver takes them, are not reported.  Only aliases
    djpoolapp pools, on a backend whose ``get_connection_params()`` is
    Django's (a project backend's own may take keys for itself): an alias on
    Django's own pool is W002's, one opted out or on a third-party pool is
    not djpoolapp's to advise.
    """
    from .parking import _defined_by_django

    pooled = _pooled_aliases() or {}
    if not pooled:
        return []
    setting = conf.get_config().setting
    messages: list[CheckMessage] = []
    for alias, backend in pooled.items():
        if not _defined_by_django(backend, "get_connection_params"):
            # A project backend's own get_connection_params() may take keys
            # of OPTIONS for itself (a "timeout" it turns into a setting).
            continue
        options = settings.DATABASES[alias].get("OPTIONS") or {}
        own = DRIVER_OWN_KEYS.get(getattr(backend, "vendor", ""), frozenset())
        misplaced = {
            key: value
            for key, value in options.items()
            if isinstance(key, str) and key.lower() in conf.OPTIONS and key not in own
        }
        if not misplaced:
            continue
        names = ", ".join(f"'{key}'" for key in misplaced)
        moved = {key.lower(): value for key, value in misplaced.items()}
        messages.append(
            Warning(
                f"DATABASES['{alias}']['OPTIONS'] has djpoolapp's pool "
                f"option(s) {names}: OPTIONS go to the database driver, which "
                "refuses arguments it does not know (connecting fails), and "
                "djpoolapp does not read them there.",
                hint=f"Move them into {setting}['aliases']['{alias}'] "
                f"({moved!r}, with any options it already has) and remove them "
                f"from DATABASES['{alias}']['OPTIONS'].",
                id="djpoolapp.W008",
            )
        )
    return messages


@register(TAG)
def check_reset_always_on_mysql(
    app_configs: Any = None, **kwargs: Any
) -> list[CheckMessage]:
    """W009: ``reset_session="always"`` on a pooled MySQL/MariaDB alias.

    MySQL has no reset that keeps what Django set up on the session
    (mysqlclient cannot send ``COM_RESET_CONNECTION``), so a session to reset
    is closed at checkin (``drivers.MySQLdbDriver.checkin_problem``): with
    ``"always"`` every checkin opens a new connection -- every request, and
    every statement group with ``pool_mode="transaction"`` -- and nothing is
    pooled (``docs/behaviour.rst``).  ``"auto"`` (the default) resets only
    what a request changed, closing those sessions alone."""
    pooled = _pooled_aliases()
    if not pooled:  # (None: bad options, E001's)
        return []
    config = conf.get_config()
    messages: list[CheckMessage] = []
    for alias, backend in pooled.items():
        if getattr(backend, "vendor", "") != "mysql":
            continue
        options = config.for_alias(alias) or {}
        if options.get("reset_session") != "always":
            continue
        per = (
            "statement group (pool_mode='transaction')"
            if options.get("pool_mode") == "transaction"
            else "request"
        )
        messages.append(
            Warning(
                f"reset_session='always' on the MySQL alias '{alias}': MySQL "
                "sessions cannot be reset in place, so each checkin closes the "
                f"connection and the next one opens a new one (every {per}): "
                "nothing is pooled.",
                hint=f"Use reset_session='auto' (the default) for '{alias}': it "
                "closes only the sessions a request changed (SET, temporary "
                "tables, user variables ...).",
                id="djpoolapp.W009",
            )
        )
    return messages
