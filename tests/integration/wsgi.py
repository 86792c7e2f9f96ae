"""WSGI entry point of the integration tests' project (gunicorn).

With ``DJPOOL_IT_MASTER_FILE`` set, importing this module queries both
databases and writes the process id and server session ids to that file.
Under ``gunicorn --preload`` the import happens in the master, before the
workers are forked: the master then holds a PostgreSQL connection (checked
out, as a project that queries at start-up and never closes would) and has a
MariaDB connection idle in its pool.  Under stock Django (``DJPOOL_DISABLE``)
the master closes its connections, as stock Django needs before a fork.
"""

import json
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.integration.server_settings")

application = get_wsgi_application()


def _touch_before_fork(path: str) -> None:
    from django.conf import settings
    from django.db import connections

    from djpoolapp.conf import env_disabled

    from .views import session_id

    found = {"pid": os.getpid()}
    for alias in ("default", "mysql"):
        if alias in settings.DATABASES:
            found[alias] = session_id(alias)
    if "mysql" in settings.DATABASES:
        connections["mysql"].close()  # back to the master's pool, idle
    if env_disabled():
        connections.close_all()
    with open(path, "w") as file:
        json.dump(found, file)


if os.environ.get("DJPOOL_IT_MASTER_FILE"):
    _touch_before_fork(os.environ["DJPOOL_IT_MASTER_FILE"])
