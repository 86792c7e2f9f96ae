"""``manage.py serve [ADDRPORT]``: the example, ready to browse.

Migrates both databases, adds the demo rows, makes sure a staff user
``admin`` exists (password ``admin``: a local example, never a deployment),
prints where to look, then runs the development server without the
auto-reloader (default ``127.0.0.1:8000``).  ``nox -s example -- serve``
runs it in the environment nox built.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser
from django.db import connections

from .demo import ALIASES
from .demo import Command as Demo

USERNAME = PASSWORD = "admin"


class Command(BaseCommand):
    help = (
        "Migrate, create the staff user admin/admin if missing, and run the "
        "development server (the shop at /, the admin at /admin/, the pool "
        "status page at /pool/)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "addrport", nargs="?", default="127.0.0.1:8000",
            help="address:port to listen on (default 127.0.0.1:8000)",
        )  # fmt: skip
        parser.add_argument(
            "--no-server", action="store_true",
            help="prepare (migrate, user) and exit without serving",
        )  # fmt: skip

    def handle(
        self, *args: Any, addrport: str, no_server: bool, **options: Any
    ) -> None:
        for alias in ALIASES:
            call_command("migrate", database=alias, verbosity=0, interactive=False)
        Demo().seed()
        created = self.staff_user()
        for alias in ALIASES:
            connections[alias].close()
        base = f"http://{addrport if ':' in addrport else '127.0.0.1:' + addrport}"
        self.stdout.write(
            f"Staff user {USERNAME!r} (password {PASSWORD!r}) "
            f"{'created' if created else 'exists'}: log in at {base}/admin/\n"
            f"  the shop:         {base}/\n"
            f"  the pool status:  {base}/pool/\n"
            f"  JSON of it:       {base}/pool/status.json"
        )
        if not no_server:
            call_command("runserver", addrport, use_reloader=False)

    def staff_user(self) -> bool:
        """Create ``admin``/``admin`` (superuser) unless a user of that name exists."""
        User = get_user_model()
        if User.objects.filter(username=USERNAME).exists():
            return False
        User.objects.create_superuser(USERNAME, "admin@example.invalid", PASSWORD)
        return True
