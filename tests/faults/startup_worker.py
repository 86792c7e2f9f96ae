"""Runs in a fresh interpreter for test_startup.py: start Django with the
database unreachable, then serve requests when told to.

Usage: python -m tests.faults.startup_worker ALIAS
Protocol: prints "ready" once django.setup() and ``manage.py check`` are
done; then for each line "request" on stdin serves one request of
/session/ALIAS/ and prints a JSON line {status, error, session}.
"""

import io
import json
import os
import sys


def main(alias: str) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.faults.settings_startup")
    import django

    django.setup()
    from django.core.management import call_command
    from django.core.signals import got_request_exception

    from tests.conftest import run_request

    output = io.StringIO()
    # databases=[]: Django 6.1's plain ``check`` passes every alias to the
    # model checks, and on MySQL those read the server's version (stock
    # Django connects there, with or without the app).  What this worker
    # proves is that djpoolapp's ready() and its own checks never connect.
    call_command("check", databases=[], stdout=output, stderr=output)
    errors: list[BaseException] = []
    got_request_exception.connect(
        lambda sender, **kwargs: errors.append(sys.exc_info()[1]), weak=False
    )
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "request":
            break
        errors.clear()
        status, body = run_request(f"/session/{alias}/")
        error = errors[-1] if errors else None
        print(
            json.dumps(
                {
                    "status": status,
                    "error": f"{type(error).__module__}.{type(error).__name__}"
                    if error
                    else None,
                    "session": json.loads(body)["session"] if status == 200 else None,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1])
