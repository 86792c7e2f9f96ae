"""djpoolapp.W007: djorm-ext-pool's settings show up in ``manage.py check``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from django.core import checks
from django.test import override_settings

from djpoolapp.apps import check_deprecated_settings

ROOT = Path(__file__).resolve().parents[2]


def test_deprecation_check__silent_without_legacy_settings():
    assert check_deprecated_settings() == []


@override_settings(
    DJORM_POOL_OPTIONS={"pool_size": 3, "echo": True}, DJORM_POOL_PESSIMISTIC=True
)
def test_deprecation_check__says_what_to_rename():
    assert check_deprecated_settings() == [
        checks.Warning(
            "DJORM_POOL_OPTIONS and DJORM_POOL_PESSIMISTIC (djorm-ext-pool) are "
            "deprecated; djpoolapp still reads them.",
            hint="Rename DJORM_POOL_OPTIONS to DJPOOL_OPTIONS; replace "
            "DJORM_POOL_PESSIMISTIC = True with DJPOOL_OPTIONS['pre_ping'] = True; "
            "remove 'echo' (no equivalent in djpoolapp).",
            id="djpoolapp.W007",
        )
    ]


@override_settings(DJORM_POOL_OPTIONS={"pool_size": 3}, DJPOOL_OPTIONS={})
def test_deprecation_check__ignored_when_djpool_options_is_set():
    assert check_deprecated_settings() == [
        checks.Warning(
            "DJORM_POOL_OPTIONS (djorm-ext-pool) are ignored: DJPOOL_OPTIONS is set.",
            hint="Remove DJORM_POOL_OPTIONS from the settings.",
            id="djpoolapp.W007",
        )
    ]


def test_deprecation_check__shown_by_manage_py_check_without_W_flags(tmp_path):
    """Plain ``manage.py check``, no ``-W always``: the warning is visible."""
    (tmp_path / "legacy_settings.py").write_text(
        "from tests.settings import *  # noqa: F403\n"
        "DJORM_POOL_OPTIONS = {'pool_size': 3}\n"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "legacy_settings",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
    }
    env.pop("PYTHONWARNINGS", None)
    result = subprocess.run(
        [sys.executable, "-m", "django", "check"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "(djpoolapp.W007) DJORM_POOL_OPTIONS (djorm-ext-pool) are deprecated" in (
        result.stderr
    )
    assert "HINT: Rename DJORM_POOL_OPTIONS to DJPOOL_OPTIONS." in result.stderr
