#!/usr/bin/env python
"""manage.py of djpoolapp's example project; run it from anywhere::

    python example_project/manage.py demo          # migrate + the pooling demo
    python example_project/manage.py runserver     # then open /, /pool/, /admin/

Databases come from DATABASE_URL and LEGACY_DATABASE_URL (see
config/databases.py); with neither set it uses an embedded PostgreSQL
(pgserver) and an SQLite file.
"""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    # The project's packages, then this checkout's djpoolapp (so the example
    # runs against the code next to it, installed or not).
    for path in (str(HERE.parent), str(HERE)):
        if path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
