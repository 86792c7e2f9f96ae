"""Parking: how a Django connection keeps its set-up driver connection
between requests, and takes it back (the fast path's Django side).

With ``park`` (the default, docs/how_it_works.rst), the checkin at the end
of a Django connection's use of a driver connection (Django's close at the
end of the request, patch.py's ``_close()``; ``pool_mode="transaction"``'s
release, ``txmode.release_if_idle``) may *park* it with that Django
connection instead of returning it to the idle pool:

- :func:`want_park`, called right before that checkin, asks it to park
  (``Lease.park_wanted``) when Django's per-connect set-up has no project
  code (:func:`_parkable`) and the Django connection is in its settings'
  autocommit mode; right after it, the caller (patch.py's ``_close()``,
  ``txmode.release_if_idle()``) remembers on the Django connection the
  lease it parked, when it is still that connection's (``PARKED``, same
  holder; after a hand-over it is another thread's);
- the Django connection's next ``connect()`` (patch.py's ``_wrap_connect``)
  takes it back, or takes a connection another Django connection set up for
  equal settings (:func:`set_up_mark` records them after Django's set-up),
  and :func:`_take` leaves the Django connection as Django's ``connect()``
  would, without running Django's set-up.

What the fast path skips must not matter: :func:`_parkable` is False for a
backend that overrides a method of ``CONNECT_PATH`` outside Django's own
backends (:func:`_defined_by_django`, also read by checks.py) or has a
``connection_created`` receiver other than type registration; a connection
parked before a ``setting_changed`` signal is never taken back after it
(``_settings_generation``).

The pool's side of parking (``PARKED``, taking back, stealing by another
thread) is in lease.py and queue.py.  This module imports neither pool.py,
patch.py nor txmode.py: both of the latter import it at the top.  patch.py's
per-request code calls ``_parkable``, ``_take`` and ``_settings_generation``
as globals of its own (imported by name: one look-up, as before they moved
here); ``_settings_generation`` is a list mutated in place, never rebound.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.signals import setting_changed
from django.db.backends.signals import connection_created

#: Bumped by every ``setting_changed`` signal (tests' ``override_settings``):
#: a connection parked before a change is never taken back after it, since
#: settings outside ``DATABASES`` (``TIME_ZONE``, ``USE_TZ``) shape what
#: Django's ``connect()`` sets up (``init_connection_state()``).
_settings_generation = [0]


def _on_setting_changed(**kwargs: Any) -> None:
    _settings_generation[0] += 1


setting_changed.connect(_on_setting_changed, dispatch_uid="djpoolapp.park")

#: ``connection_created`` receivers that only set up the driver connection
#: itself (type adapters), which a parked connection keeps.
_IDEMPOTENT_RECEIVERS = frozenset(
    {("django.contrib.postgres.signals", "register_type_handlers")}
)


#: _parkable's answers: {backend class: (connection_created's receivers
#: when answered, answer)}; an answer holds while the receivers are equal.
_parkable_answers: dict[type, tuple[list[Any], bool]] = {}


def _parkable(klass: type) -> bool:
    """Whether connections of backend *klass* may park: only when Django's
    per-connect set-up has no project code in it, because a taken-back
    connection skips ``connect()``.  A backend (or a base below Django's
    own) that overrides ``init_connection_state()`` and a
    ``connection_created`` receiver other than type registration may set
    per-request state there (a tenant id, ``SET ROLE``), which stock Django
    with ``CONN_MAX_AGE=0`` redoes at every request.  Answered again
    whenever the signal's receivers change (about 0.3 µs when they did not,
    3 µs to answer)."""
    receivers = connection_created.receivers
    answer = _parkable_answers.get(klass)
    if answer is not None and answer[0] == receivers:
        return answer[1]
    parkable = _parkable_now(klass)
    _parkable_answers[klass] = (list(receivers), parkable)
    return parkable


#: The ``DatabaseWrapper`` methods of Django's ``connect()`` that the fast
#: path skips, and ``_close()``, which the parking checkin replaces: a
#: backend that overrides one of them outside Django's own backends (a
#: connection counter, IAM tokens, a tenant's ``SET``) does not park, so the
#: override runs at every request as without the app.
CONNECT_PATH = (
    "connect",
    "check_settings",
    "get_connection_params",
    "get_new_connection",
    "set_autocommit",
    "_set_autocommit",
    "init_connection_state",
    "_close",
)
_DJANGO_BACKENDS = ("django.db.backends.", "django.contrib.gis.db.backends.")


def from_django(function: Any) -> bool:
    """Whether *function* is defined in one of Django's database backends."""
    return str(getattr(function, "__module__", "")).startswith(_DJANGO_BACKENDS)


def _defined_by_django(klass: type, name: str) -> bool:
    """Whether *klass*'s method *name* is Django's own (djpoolapp's wrappers
    looked through)."""
    for k in klass.__mro__:
        function = k.__dict__.get(name)
        if function is None:
            continue
        while getattr(function, "_djpool_patched", False):
            function = getattr(function, "__wrapped__", None)
        if function is None:
            continue  # a wrapper of ours around an inherited method
        return from_django(function)
    return False


def _parkable_now(klass: type) -> bool:
    if not all(_defined_by_django(klass, name) for name in CONNECT_PATH):
        return False
    try:
        live: Any = connection_created._live_receivers(klass)
    except Exception:  # a Django whose private API differs: do not park
        return False
    if isinstance(live, tuple):  # Django 5.0+: (sync, async) receivers
        live = [*live[0], *live[1]]
    for receiver in live:
        name = getattr(receiver, "__qualname__", getattr(receiver, "__name__", ""))
        module = getattr(receiver, "__module__", "")
        if (module, name) not in _IDEMPOTENT_RECEIVERS:
            return False
    return True


def want_park(wrapper: Any, lease: Any) -> bool:
    """Ask the checkin about to run (Django's close at request end, or
    ``pool_mode="transaction"``'s release) to park *lease*'s connection with
    Django's *wrapper* (``Lease.park_wanted``, returned): when the pool
    parks, the wrapper is in its settings' autocommit mode and Django's
    per-connect set-up and close have no project code (``_parkable``)."""
    pool = lease.pool
    if (
        wrapper.autocommit == wrapper.settings_dict["AUTOCOMMIT"]
        and pool.parking
        and pool.settings_seen is not None  # (else never taken back)
        and _parkable(type(wrapper))
    ):
        lease.park_wanted = True
        return True
    return False


def _take(
    wrapper: Any, lease: Any, monotonic: Callable[[], float], own: bool = False
) -> None:
    """Give Django's *wrapper* the driver connection of *lease*, already set
    up by Django for these settings, as Django's ``connect()`` would leave
    the wrapper: what ``connect()`` resets on it, in the autocommit mode the
    connection parked or was handed over in; Django's set-up itself
    (``get_new_connection()``, ``set_autocommit()``,
    ``init_connection_state()``, ``connection_created``) is skipped.  *own*:
    *wrapper* set that connection up itself (it takes back what it parked),
    so what the set-up put on the wrapper (``CONNECT_ATTRIBUTES``) is there
    already."""
    wrapper.in_atomic_block = False
    wrapper.savepoint_ids = []
    wrapper.atomic_blocks = []
    wrapper.needs_rollback = False
    settings_dict = wrapper.settings_dict
    wrapper.health_check_enabled = settings_dict["CONN_HEALTH_CHECKS"]
    max_age = settings_dict["CONN_MAX_AGE"]
    wrapper.close_at = None if max_age is None else monotonic() + max_age
    wrapper.closed_in_transaction = False
    wrapper.errors_occurred = False
    wrapper.health_check_done = True
    wrapper.autocommit = settings_dict["AUTOCOMMIT"]  # (True: a condition to park)
    if not own:
        lease.fresh = False
        for name, value in lease.set_up_attributes.items():
            setattr(wrapper, name, value)
    # (Past pool_mode="transaction"'s property, whose setter does this.)
    wrapper.__dict__["connection"] = lease.conn
    wrapper.run_on_commit = []


def set_up_mark(lease: Any, wrapper: Any) -> None:
    """Record, after Django's set-up of *lease*'s connection for *wrapper*,
    for which settings it was set up (``Lease.set_up_for``): another Django
    connection with the same settings may take it without its own set-up."""
    pool = lease.pool
    seen = pool.settings_seen
    lease.set_up_for = (
        (seen, _settings_generation[0])
        if seen is not None and wrapper.settings_dict == seen
        else None
    )
    found = wrapper.__dict__
    lease.set_up_attributes = {
        name: found[name] for name in CONNECT_ATTRIBUTES if name in found
    }


#: What Django's ``connect()`` path sets on the wrapper itself (PostgreSQL's
#: ``get_new_connection()``, MySQL's ``get_connection_params()``): given to a
#: wrapper that takes a connection another wrapper set up (``_take``).
CONNECT_ATTRIBUTES = ("isolation_level",)
