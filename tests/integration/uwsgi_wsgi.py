"""WSGI entry point for test_uwsgi.py: tests.integration.wsgi with a
Content-Length on every response.

uWSGI's ``--http11-socket`` keeps a connection alive only for responses
that state their length (it neither chunks nor closes otherwise), and the
test project's responses have none (no middleware).  Django's response is
closed here, as any WSGI server does: that sends ``request_finished``.
A ``uwsgidecorators.postfork`` hook of the "project" is registered after
Django's set-up: djpoolapp's fork reset must survive it.
"""

from collections.abc import Callable, Iterable
from typing import Any

from tests.integration.wsgi import application as django_application

try:  # a project's own @postfork hook, registered after Django's set-up
    from uwsgidecorators import postfork
except ImportError:  # not under uWSGI
    pass
else:

    @postfork
    def _project_hook() -> None:
        print("project postfork hook ran", flush=True)


def application(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
    started: list[tuple[Any, ...]] = []

    def capture(status: str, headers: list, exc_info: Any = None) -> None:
        started.append((status, headers, exc_info))

    response = django_application(environ, capture)
    try:
        body = b"".join(response)
    finally:
        getattr(response, "close", lambda: None)()
    status, headers, exc_info = started[-1]
    headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
    start_response(status, [*headers, ("Content-Length", str(len(body)))], exc_info)
    return [body]
