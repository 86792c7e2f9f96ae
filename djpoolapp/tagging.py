"""Tag each pooled connection for the server: which host, process and alias.

Pools are per process, so one process's ``pool_status()`` never shows the
other workers.  The database server sees all of them: djpoolapp names every
connection it opens so that the server's session list says where each one
comes from, and :func:`djpoolapp.status.server_sessions` reads it back.

PostgreSQL
    ``application_name`` becomes ``djpool/<host>/<pid>/<alias>``, appended
    after a space to the alias's own ``application_name`` when ``OPTIONS``
    sets one (``myapp djpool/web1/4242/default``); the server keeps 63 bytes,
    so long host names and long own names are shortened, never the pid or
    the alias.
    ``pg_stat_activity.application_name`` shows it.
MySQL / MariaDB
    mysqlclient has no API for connection attributes (``program_name``), so
    the connect arguments are left alone; the server-side view groups those
    sessions by client host and marks the ones of the current process by
    their connection ids.

Only the arguments passed to the driver's ``connect()`` are tagged; the
pool's own record of its connect arguments (which decides whether a pool
may be reused) is left unchanged.
"""

from __future__ import annotations

import os
import re
import socket
from typing import Any

#: ``djpool/<host>/<pid>/<alias>`` at the end of an application_name.
TAG_RE = re.compile(r"(?:^|\s)djpool/(?P<host>[^/\s]*)/(?P<pid>\d+)/(?P<alias>\S+)$")
#: PostgreSQL truncates application_name to NAMEDATALEN - 1 bytes.
MAX_APPLICATION_NAME = 63


def host_name() -> str:
    """The first label of this machine's host name (``web1`` of
    ``web1.example.com``), without ``/`` or spaces."""
    name = socket.gethostname().split(".", 1)[0] or "localhost"
    return re.sub(r"[/\s]", "-", name)


def application_name(alias: str, own: str | None = None, pid: int | None = None) -> str:
    """The tagged ``application_name`` for *alias* in this process.

    *own* is the alias's own ``application_name`` (kept in front).  The result
    fits PostgreSQL's 63 bytes: the host name is cut to 16 characters, then
    *own* is shortened (or dropped), then the host name further; the pid and
    the alias are never cut.
    """
    pid = os.getpid() if pid is None else pid
    host = host_name()

    def tag(host_part: str) -> str:
        return f"djpool/{host_part}/{pid}/{alias}"

    def fits(name: str) -> bool:
        return len(name.encode()) <= MAX_APPLICATION_NAME

    name = f"{own} {tag(host)}" if own else tag(host)
    if fits(name):
        return name
    host = host[:16]
    if own:
        budget = MAX_APPLICATION_NAME - len(tag(host).encode()) - 1
        kept = own.encode()[: max(0, budget)].decode(errors="ignore").rstrip()
        name = f"{kept} {tag(host)}" if kept else tag(host)
        if fits(name):
            return name
    while host and not fits(tag(host)):
        host = host[:-1]
    return tag(host)


def parse(name: str | None) -> dict[str, Any] | None:
    """``{"host", "pid", "alias"}`` from a tagged application_name, else None."""
    found = TAG_RE.search(name or "")
    if found is None:
        return None
    return {
        "host": found["host"],
        "pid": int(found["pid"]),
        "alias": found["alias"],
    }


def tag_connect_kwargs(
    alias: str, vendor: str, kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The connect arguments for the driver, tagged for *vendor*'s server.

    Returns a new dict (*kwargs* is not changed).  PostgreSQL (psycopg 3 and
    psycopg2 take the same ``application_name`` keyword): tagged as described
    above.  Other vendors: unchanged.
    """
    if vendor != "postgresql":
        return kwargs
    tagged = dict(kwargs)
    tagged["application_name"] = application_name(alias, kwargs.get("application_name"))
    return tagged
