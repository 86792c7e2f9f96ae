"""Nox sessions for djpoolapp.

``python3 -m nox`` runs the default sessions (the test suite on the Python
that runs nox if it is 3.10-3.13, else the newest one on PATH, and an error
when there is none; the whole suite with psycopg 3, then with psycopg2 the
tests that touch PostgreSQL; it includes tests/integration, ~2.5 min of real
gunicorn/uvicorn/PgBouncer servers that need ``wrk`` and ``pgbouncer`` from
apt).  Other sessions:

* ``nox -s example``   -- run the example project's ``demo`` command
  (``-- serve`` runs its development server instead)
* ``nox -s docs``      -- build the documentation site, warnings as errors
* ``nox -s package``   -- build sdist and wheel, ``twine check`` them
* ``nox -s lint``      -- ruff format --check, ruff check, mypy
* ``nox -s matrix``    -- every supported Django x Python x driver cell
* ``nox -s corners``   -- the oldest and the newest cell of that matrix

Arguments after ``--`` go to pytest (or to the demo command), e.g.
``nox -s tests-psycopg3 -- -m 'not restart' -x``; ``-- -m 'not integration'``
leaves the real-server suite out (~2.5 min less per cell of the matrix).
"""

from __future__ import annotations

import os
import re
import runpy
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nox

nox.needs_version = ">=2024.4.15"

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests-psycopg3", "tests-psycopg2"]
if hasattr(nox.options, "download_python"):
    # Only registries are reachable here; never try to fetch an interpreter.
    nox.options.download_python = "never"
if not os.environ.get("CI"):
    # Locally a missing interpreter skips its matrix cells; in CI it fails.
    nox.options.error_on_missing_interpreters = False

ROOT = Path(__file__).resolve().parent
DEFAULT_PYTHON = "3.11"

# Driver name -> the setup.cfg extra that installs it.
DRIVER_EXTRAS = {"psycopg3": "psycopg", "psycopg2": "postgres"}
# Distributions that must be absent when testing with the *other* driver.
# Django's postgresql backend imports psycopg (3) whenever it can, so a
# psycopg2 run with psycopg 3 installed would silently test the wrong driver.
FOREIGN_DRIVER_DISTS = {
    "psycopg3": ["psycopg2", "psycopg2-binary"],
    "psycopg2": ["psycopg", "psycopg-binary", "psycopg-c", "psycopg-pool"],
}
FOREIGN_DRIVER_MODULE = {"psycopg3": "psycopg2", "psycopg2": "psycopg"}

# The supported versions come from one list, djpoolapp/_support.py (also
# checked against setup.cfg and the README by tests/unit/test_support.py);
# loaded by path: nox runs before any environment with Django exists.
SUPPORT = runpy.run_path(str(ROOT / "djpoolapp" / "_support.py"))
# Django feature release -> the Pythons it supports (within 3.10-3.13).
DJANGO_PYTHONS = {
    django: list(SUPPORT["pythons"](django)) for django in SUPPORT["DJANGO"]
}
MATRIX = SUPPORT["matrix"]()
CORNERS = SUPPORT["CORNERS"]

RUFF = "ruff==0.17.6"
LINT_PATHS = ["djpoolapp", "tests", "example_project", "noxfile.py"]


def _pyenv_root() -> Path | None:
    if os.environ.get("PYENV_ROOT"):
        return Path(os.environ["PYENV_ROOT"])
    pyenv = shutil.which("pyenv")
    if pyenv:
        try:
            out = subprocess.run(
                [pyenv, "root"], capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            out = ""
        if out:
            return Path(out)
    default = Path.home() / ".pyenv"
    return default if default.is_dir() else None


def _add_pyenv_interpreters_to_path() -> None:
    """Put the newest pyenv CPython of each minor version we test on PATH.

    pyenv's shims only expose the versions selected by ``pyenv global``, so
    ``python3.10`` etc. would otherwise not be found by nox.
    """
    root = _pyenv_root()
    if root is None or not (root / "versions").is_dir():
        return
    best: dict[str, tuple[tuple[int, ...], Path]] = {}
    for entry in (root / "versions").iterdir():
        m = re.fullmatch(r"3\.(\d+)\.(\d+)", entry.name)
        if not m:
            continue  # skip free-threaded, dev and virtualenv entries
        minor = f"3.{m.group(1)}"
        key = (int(m.group(1)), int(m.group(2)))
        if not (entry / "bin" / f"python{minor}").exists():
            continue
        if minor not in best or key > best[minor][0]:
            best[minor] = (key, entry / "bin")
    wanted = {py for pys in DJANGO_PYTHONS.values() for py in pys} | {DEFAULT_PYTHON}
    dirs = [str(best[m][1]) for m in sorted(wanted) if m in best]
    path = os.environ.get("PATH", "").split(os.pathsep)
    os.environ["PATH"] = os.pathsep.join(dirs + [p for p in path if p not in dirs])


_add_pyenv_interpreters_to_path()


def _install_driver(
    session: nox.Session, driver: str, extras: list[str], *requirements: str
) -> None:
    """Install the package with ``extras`` plus exactly one PostgreSQL driver.

    ``requirements`` (e.g. a Django pin) go into the same pip run, so a single
    resolver pass picks versions that agree with each other.
    """
    extra_list = ",".join([*extras, DRIVER_EXTRAS[driver]])
    # Not --no-compile: where PYTHONDONTWRITEBYTECODE is set (as on the
    # reference machine), every process would compile what it imports again
    # (docs/testing.rst: 702 s instead of 630 s for the README's command).
    session.install("-e", f".[{extra_list}]", *requirements)
    # Reused virtualenvs may hold the other driver from an earlier run.
    session.run_install(
        "python", "-m", "pip", "uninstall", "--yes", "--quiet",
        *FOREIGN_DRIVER_DISTS[driver],
        silent=True,
    )  # fmt: skip
    foreign = FOREIGN_DRIVER_MODULE[driver]
    session.run_install(
        "python",
        "-c",
        "import importlib.util, sys; "
        f"sys.exit('{foreign} must not be installed for a {driver} run' "
        f"if importlib.util.find_spec('{foreign}') else 0)",
    )


def _report_versions(session: nox.Session) -> None:
    """Print the versions that matter for this run (pytest shows Django's too)."""
    session.run(
        "python",
        "-c",
        "import sys, importlib.metadata as md; "
        "names = {'django', 'sqlalchemy', 'psycopg', 'psycopg-binary', "
        "'psycopg2-binary', 'mysqlclient'}; "
        "found = sorted(f'{d.name} {d.version}' for d in md.distributions() "
        "if d.name.lower() in names); "
        "print('python', sys.version.split()[0], '|', ', '.join(found))",
    )


def _run_pytest(session: nox.Session, driver: str) -> None:
    _report_versions(session)
    session.run(
        "pytest", *TESTS_PYTEST_ARGS, *session.posargs,
        env={"DJPOOL_TEST_DRIVER": driver},
    )  # fmt: skip


#: The default sessions' pytest options: private servers per xdist worker make
#: the suite safe to run in parallel (3 workers on the 2-core reference
#: machine: most of a test's time is spent waiting on servers, subprocesses
#: and sleeps; docs/testing.rst has the measurements), random order with the
#: seed in the header (pytest-randomly), the slowest tests listed.
TESTS_PYTEST_ARGS = ["-n", "3", "-p", "randomly", "--durations=15"]


SUPPORTED_PYTHONS = ("3.10", "3.11", "3.12", "3.13")


def _any_supported_python() -> str | None:
    """The interpreter for the sessions that need just one supported Python
    (example, docs, package): the one running nox if it is supported, else
    the newest ``python3.X`` on PATH; None when there is none."""
    if f"{sys.version_info[0]}.{sys.version_info[1]}" in SUPPORTED_PYTHONS:
        return sys.executable
    for version in reversed(SUPPORTED_PYTHONS):
        if shutil.which(f"python{version}"):
            return version
    return None


ANY_PYTHON = _any_supported_python()


def _require_python(session: nox.Session) -> None:
    if ANY_PYTHON is None:
        session.error(
            f"no supported Python found: this is Python {sys.version.split()[0]} "
            f"and none of python{', python'.join(SUPPORTED_PYTHONS)} is on PATH. "
            "Install one of them (e.g. apt-get install python3) and run "
            "'python3 -m nox' with it"
        )


#: The default psycopg2 session runs only the tests whose verdict can depend
#: on the PostgreSQL driver djpoolapp pools: the others (MariaDB-only cases
#: and files, tests/unit, tests/test_docs.py, the stock-Django baselines;
#: ``driver_independent`` in tests/conftest.py) ran in tests-psycopg3.  The matrix and the
#: corners run every test in each cell.
SECOND_DRIVER_PYTEST_ARGS = {"psycopg2": ["--second-driver-cut"]}


def _tests(session: nox.Session, driver: str) -> None:
    _require_python(session)  # the README's command: never a silent skip
    _install_driver(session, driver, ["test", "mysql"])
    _report_versions(session)
    session.run(
        "pytest", *TESTS_PYTEST_ARGS, *SECOND_DRIVER_PYTEST_ARGS.get(driver, []),
        *session.posargs,
        env={"DJPOOL_TEST_DRIVER": driver},
    )  # fmt: skip


@nox.session(name="tests-psycopg3", python=ANY_PYTHON or False)
def tests_psycopg3(session: nox.Session) -> None:
    """Test suite with psycopg 3 as the PostgreSQL driver."""
    _tests(session, "psycopg3")


@nox.session(name="tests-psycopg2", python=ANY_PYTHON or False)
def tests_psycopg2(session: nox.Session) -> None:
    """The tests that can depend on the PostgreSQL driver, with psycopg2 as
    its driver (psycopg 3 absent); the others ran in tests-psycopg3
    (``--second-driver-cut``)."""
    _tests(session, "psycopg2")


def _matrix_cell(session: nox.Session, django: str, driver: str) -> None:
    """One matrix cell: the given Django feature release and driver."""
    _install_driver(session, driver, ["test", "mysql"], f"django~={django}.0")
    _run_pytest(session, driver)


def _cell_id(python: str, django: str, driver: str) -> str:
    return f"django{django}-py{python}-{driver}"


@nox.session
@nox.parametrize(
    ("python", "django", "driver"),
    MATRIX,
    ids=[_cell_id(*cell) for cell in MATRIX],
)
def matrix(session: nox.Session, django: str, driver: str) -> None:
    """Supported Django x Python x driver combinations."""
    _matrix_cell(session, django, driver)


@nox.session
@nox.parametrize(
    ("python", "django", "driver"),
    CORNERS,
    ids=[_cell_id(*cell) for cell in CORNERS],
)
def corners(session: nox.Session, django: str, driver: str) -> None:
    """Oldest and newest matrix cells (djpoolapp/_support.py CORNERS)."""
    _matrix_cell(session, django, driver)


@nox.session(python=ANY_PYTHON or False)
def example(session: nox.Session) -> None:
    """The example project: ``demo`` (default) or ``serve`` to browse it.

    ``nox -s example`` migrates and runs the pooling demo; ``nox -s example
    -- serve [ADDRPORT]`` also creates a staff user and runs the development
    server (default 127.0.0.1:8000).  Other arguments go to ``demo``.
    Runs on whichever supported Python runs nox (else the newest one found).
    """
    _require_python(session)
    extras = ["example", "psycopg"]
    legacy = os.environ.get("LEGACY_DATABASE_URL") or os.environ.get("MYSQL_URL")
    if legacy and legacy.startswith("mysql"):
        extras.append("mysql")  # builds against libmariadb-dev: only if used
    session.install("-e", f".[{','.join(extras)}]")
    manage = ["python", "example_project/manage.py"]
    if session.posargs[:1] == ["serve"]:
        session.run(*manage, "serve", *session.posargs[1:])
    else:
        session.run(*manage, "demo", *session.posargs)


@nox.session(python=DEFAULT_PYTHON)
def lint(session: nox.Session) -> None:
    """ruff format --check, ruff check, and mypy on the package."""
    session.install(RUFF, "mypy", "django-stubs", "-e", ".[psycopg,test]")
    paths = [p for p in LINT_PATHS if (ROOT / p).exists()]
    session.run("ruff", "format", "--check", *paths)
    session.run("ruff", "check", *paths)
    session.run("mypy", "djpoolapp")


@nox.session(python=ANY_PYTHON or False)
def docs(session: nox.Session) -> None:
    """Build the documentation site (docs/) with warnings as errors."""
    _require_python(session)
    session.install("-e", ".[docs]")
    session.run(
        "python", "-m", "sphinx", "-W", "--keep-going", "-b", "html",
        "docs", "docs/_build/html", *session.posargs,
    )  # fmt: skip


#: Files the wheel must ship besides the modules.
WHEEL_DATA = ("djpoolapp/py.typed", "djpoolapp/templates/djpoolapp/status.html")


@nox.session(python=ANY_PYTHON or False)
def package(session: nox.Session) -> None:
    """Build the sdist and the wheel, check them as PyPI would (``twine check
    --strict``: metadata, README rendering) and check that the wheel ships
    the templates and ``py.typed``.  The files are left in dist/."""
    _require_python(session)
    session.install("build>=1.2", "twine>=5")
    dist = ROOT / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", str(dist), str(ROOT))
    files = sorted(dist.iterdir())
    session.run("python", "-m", "twine", "check", "--strict", *map(str, files))
    (wheel,) = (path for path in files if path.suffix == ".whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [name for name in WHEEL_DATA if name not in names]
    if missing:
        session.error(f"{wheel.name} lacks {', '.join(missing)}")
    session.log(f"{wheel.name} ships {', '.join(WHEEL_DATA)}")
