"""eventlet's own WSGI server for test_eventlet.py (gunicorn 27 has no
eventlet worker): ``python -m tests.integration.eventlet_wsgi PORT``.

Monkeypatches first, as eventlet requires, then makes psycopg2 yield to the
hub through psycogreen.  psycopg 3 detects only gevent's monkeypatching: under
eventlet it keeps its C wait function, which blocks the hub, unless
``PSYCOPG_WAIT_FUNC=wait_select`` (eventlet patches ``select``) is set.
mysqlclient is blocking C and cannot cooperate at all.
"""

import warnings

with warnings.catch_warnings():
    # eventlet 0.36+ announces its own deprecation on import.
    warnings.simplefilter("ignore", DeprecationWarning)
    import eventlet

    eventlet.monkey_patch()

import os  # noqa: E402
import sys  # noqa: E402

if os.environ.get("DJPOOL_TEST_DRIVER") == "psycopg2":
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from psycogreen.eventlet import patch_psycopg

    patch_psycopg()

from eventlet import wsgi  # noqa: E402

from tests.integration.wsgi import application  # noqa: E402

if __name__ == "__main__":
    port = int(sys.argv[1])
    print(f"eventlet {eventlet.__version__} serving on 127.0.0.1:{port}", flush=True)
    wsgi.server(
        eventlet.listen(("127.0.0.1", port), backlog=256),
        application,
        max_size=1000,
        log_output=False,
    )
