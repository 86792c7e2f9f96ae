"""gunicorn configuration of the integration tests (``-c python:...``).

Under the gevent worker, psycopg2 needs psycogreen's wait callback to yield
to the hub; psycopg 3 (3.1.14+) detects gevent's monkeypatching by itself
when it is imported after it (so: no ``--preload`` with gevent), and
mysqlclient cannot cooperate at all (its queries block the worker's hub).
"""

from typing import Any


def post_fork(server: Any, worker: Any) -> None:
    if worker.__class__.__module__ != "gunicorn.workers.ggevent":
        return
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()


# gunicorn 25.1+ opens a control socket in a per-user default location that
# every gunicorn of the user shares; the tests' servers need none.
control_socket_disable = True
