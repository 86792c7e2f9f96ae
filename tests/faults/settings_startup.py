"""Settings for the start-up workers of test_startup.py (fresh interpreters).

``tests.settings`` with two changes read from the environment:
``DJPOOL_FAULTS_OPTIONS`` (JSON) becomes ``DJPOOL_OPTIONS``, and
``DJPOOL_FAULTS_ALIAS`` / ``_PORT`` / ``_NAME`` point that alias at another
port of 127.0.0.1 and at an existing database.
"""

import json
import os

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES

if "DJPOOL_FAULTS_OPTIONS" in os.environ:
    DJPOOL_OPTIONS = json.loads(os.environ["DJPOOL_FAULTS_OPTIONS"])

if "DJPOOL_FAULTS_ALIAS" in os.environ:
    _alias = os.environ["DJPOOL_FAULTS_ALIAS"]
    DATABASES[_alias] = {
        **DATABASES[_alias],
        "HOST": "127.0.0.1",
        "PORT": os.environ["DJPOOL_FAULTS_PORT"],
        "NAME": os.environ["DJPOOL_FAULTS_NAME"],
    }
