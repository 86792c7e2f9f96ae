"""tests.settings plus the small app whose suite Django's runner runs."""

from tests.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "tests.runner_app"]  # noqa: F405
