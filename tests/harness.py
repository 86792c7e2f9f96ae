"""Throwaway PostgreSQL and MariaDB servers owned by the test session.

Loaded as a pytest plugin (``-p tests.harness`` in pyproject.toml's addopts),
so its ``pytest_load_initial_conftests`` runs before pytest-django imports
``tests.settings``:

- The process that owns the session (plain pytest, or the pytest-xdist
  controller) starts one PostgreSQL cluster and one MariaDB instance for
  itself, or for each xdist worker it is about to spawn: ``initdb`` /
  ``mariadb-install-db`` once into a template, one copy per process, each
  server on a free port of 127.0.0.1 with its socket in a private directory.
  Every process gets its own pair, so a test that restarts "its" server never
  disturbs a test running in another worker.
- It hands the servers to the workers in ``DJPOOL_TEST_HARNESS`` (JSON); each
  process then finds its own pair in ``DJPOOL_TEST_PRIVATE_POSTGRES`` /
  ``DJPOOL_TEST_PRIVATE_MYSQL`` (JSON: url and directory), which
  ``tests.settings`` reads and which child processes (gunicorn, nested pytest
  runs) inherit.
- At the end (``pytest_unconfigure``, ``atexit``, SIGTERM/SIGHUP, Ctrl-C) the
  owner stops every server it started -- also those a worker restarted, found
  by their pid files -- kills whatever still runs in the harness's temporary
  directory, and removes that directory.

``DJPOOL_TEST_POSTGRES_URL`` / ``DJPOOL_TEST_MYSQL_URL`` select an external
server instead (no private one is started for it; tests marked ``restart``
then skip).  As root, the servers run as ``nobody``: initdb and postgres
refuse root; only the harness's own temporary directory is handed to that
user.  Why not pytest-postgresql / pytest-mysql: docs/testing.rst.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import glob
import json
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

#: Environment: every process's servers (set by the owner, read by workers).
ENV_HARNESS = "DJPOOL_TEST_HARNESS"
#: Environment: this process's private server per name (JSON of ``Server``).
ENV_PRIVATE = {
    "postgres": "DJPOOL_TEST_PRIVATE_POSTGRES",
    "mysql": "DJPOOL_TEST_PRIVATE_MYSQL",
}
#: Environment: an external server per name (dj-database-url syntax).
ENV_EXTERNAL = {
    "postgres": "DJPOOL_TEST_POSTGRES_URL",
    "mysql": "DJPOOL_TEST_MYSQL_URL",
}
#: Environment: the process id of the harness's owner (nested runs reuse).
ENV_OWNER = "DJPOOL_TEST_HARNESS_OWNER"
#: Environment: why a private server is missing (JSON {name: message}).
ENV_MISSING = "DJPOOL_TEST_MISSING_SERVERS"
#: The Debian/Ubuntu package that provides each server.
PACKAGES = {"postgres": "postgresql", "mysql": "mariadb-server"}
#: Temporary directories of the harness are called ``<prefix><random>``.
DIR_PREFIX = "djpool-test-"
UNPRIVILEGED_USER = "nobody"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
PR_SET_PDEATHSIG = 1

#: The settings the servers run with: the machine defaults the suite was
#: written against (max_connections, character set), durability off.
POSTGRES_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "max_connections": "100",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "32MB",
    "logging_collector": "off",
    "log_min_messages": "warning",
}
MARIADB_SETTINGS = [
    "--bind-address=127.0.0.1",
    "--skip-name-resolve",
    "--character-set-server=utf8mb4",
    "--collation-server=utf8mb4_general_ci",
    "--max-connections=151",
    "--innodb-buffer-pool-size=32M",
    "--innodb-log-file-size=16M",
    "--innodb-flush-log-at-trx-commit=0",
    "--skip-log-bin",
    "--performance-schema=OFF",
]


class HarnessError(RuntimeError):
    """A private server could not be set up, started or stopped."""


# -- binaries ------------------------------------------------------------------
def _executable(path: str | Path) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def postgres_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``postgres``: ``pg_config
    --bindir``, else the newest ``/usr/lib/postgresql/*/bin``, else the
    binaries bundled with the ``pgserver`` wheel.  (``/usr/local/bin`` may hold
    wrappers or links; the real directory is what we want.)"""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            if out:
                candidates.append(Path(out))

    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parent.name
        return tuple(int(p) for p in name.split(".") if p.isdigit())

    candidates += [
        Path(p)
        for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version)[::-1]
    ]
    with contextlib.suppress(Exception):
        import importlib.util

        spec = importlib.util.find_spec("pgserver")
        if spec and spec.origin:
            candidates.append(Path(spec.origin).parent / "pginstall" / "bin")
    for directory in candidates:
        if _executable(directory / "initdb") and _executable(directory / "postgres"):
            return directory
    return None


def mariadb_binaries() -> tuple[str, str] | None:
    """``(server, install_db)``: ``mariadbd`` (or ``mysqld``) and
    ``mariadb-install-db`` (or ``mysql_install_db``), from PATH or /usr/sbin."""

    def find(*names: str) -> str | None:
        for name in names:
            for found in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
                if found and _executable(found):
                    return found
        return None

    server = find("mariadbd", "mysqld")
    install = find("mariadb-install-db", "mysql_install_db")
    return (server, install) if server and install else None


def missing_message(name: str) -> str:
    """One line: which server is missing and the package that provides it."""
    if name == "postgres":
        return (
            "PostgreSQL server binaries (initdb, postgres) not found: "
            "apt-get install postgresql (or set DJPOOL_TEST_POSTGRES_URL)"
        )
    return (
        "MariaDB server binaries (mariadbd, mariadb-install-db) not found: "
        "apt-get install mariadb-server (or set DJPOOL_TEST_MYSQL_URL)"
    )


# -- processes -------------------------------------------------------------------
def _run_as() -> tuple[int, int] | None:
    """(uid, gid) to run the servers as: ``nobody`` when we are root."""
    if os.geteuid() != 0:
        return None
    entry = pwd.getpwnam(UNPRIVILEGED_USER)
    return entry.pw_uid, entry.pw_gid


def _credentials() -> dict[str, Any]:
    ids = _run_as()
    if ids is None:
        return {}
    return {"user": ids[0], "group": ids[1], "extra_groups": []}


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL the server if the process that started it dies
    without cleaning up (pytest itself SIGKILLed)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _env(home: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
    }


def _run(command: list[str], directory: Path, log: Path) -> None:
    with open(log, "ab") as out:
        result = subprocess.run(
            command, cwd=directory, env=_env(directory), stdout=out,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            timeout=START_TIMEOUT, check=False, **_credentials(),
        )  # fmt: skip
    if result.returncode != 0:
        raise HarnessError(
            f"{' '.join(command)} failed with {result.returncode}:\n{_tail(log)}"
        )


def _tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _alive(pid: int) -> bool:
    """True while *pid* runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


#: Ports handed out by :func:`free_port`: below the kernel's ephemeral
#: range, in :data:`_PORT_SLICES` slices (one per xdist worker, one for the
#: controlling process).
_PORT_FLOOR = 10000
_PORT_SLICES = 8


def _ephemeral_floor() -> int:
    """The lowest port the kernel gives to ``bind(0)`` and to outgoing
    connections (``net.ipv4.ip_local_port_range``; Linux's default 32768)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
            return int(ranges.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing uses now, for a server a test is
    about to start.

    Chosen below the kernel's ephemeral range, so that no socket the kernel
    numbers itself -- a listener bound to port 0 (a test's tripwire or proxy),
    a client's outgoing connection -- can take it between this call and the
    server's own ``bind()``; and within this process's slice of that space
    (its xdist worker's, ``PYTEST_XDIST_WORKER``), so that two workers do not
    pick the same one.  (Bound to port 0 and released, as before, it was a
    port of the ephemeral range: a concurrent test's listener got it, the
    server failed with "address already in use" and that listener counted a
    stranger's connection.)  Falls back to the kernel's choice when the
    range leaves no room below it."""
    floor = _ephemeral_floor()
    span = (floor - _PORT_FLOOR) // _PORT_SLICES
    if span >= 100:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "")
        index = (
            int(worker[2:]) % (_PORT_SLICES - 1)
            if worker.startswith("gw") and worker[2:].isdigit()
            else _PORT_SLICES - 1
        )
        first = _PORT_FLOOR + index * span
        for _ in range(100):
            port = random.randrange(first, first + span)
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: Processes this interpreter started (reaped on stop, so they don't linger
#: as zombies that look alive).
_children: dict[int, subprocess.Popen[bytes]] = {}


# -- one server -----------------------------------------------------------------
@dataclass
class Server:
    """One private server: everything lives under ``directory``."""

    name: str  # "postgres" | "mysql"
    directory: str
    port: int
    binary: str  # postgres or mariadbd

    # -- layout
    @property
    def path(self) -> Path:
        return Path(self.directory)

    @property
    def datadir(self) -> Path:
        return self.path / "data"

    @property
    def socket_dir(self) -> Path:
        return self.path / "run"

    @property
    def log(self) -> Path:
        return self.path / "server.log"

    @property
    def pid_file(self) -> Path:
        if self.name == "postgres":
            return self.datadir / "postmaster.pid"
        return self.socket_dir / "mariadbd.pid"

    @property
    def url(self) -> str:
        if self.name == "postgres":
            return f"postgres://root@127.0.0.1:{self.port}/postgres"
        return f"mysql://root@127.0.0.1:{self.port}/test"

    def to_env(self) -> str:
        return json.dumps({**asdict(self), "url": self.url})

    @classmethod
    def from_env(cls, value: str) -> Server:
        data = json.loads(value)
        data.pop("url", None)
        return cls(**data)

    # -- lifecycle
    def command(self) -> list[str]:
        if self.name == "postgres":
            settings = [
                arg
                for key, value in POSTGRES_SETTINGS.items()
                for arg in ("-c", f"{key}={value}")
            ]
            return [
                self.binary, "-D", str(self.datadir), "-p", str(self.port),
                "-k", str(self.socket_dir), *settings,
            ]  # fmt: skip
        return [
            self.binary, "--no-defaults", f"--datadir={self.datadir}",
            f"--port={self.port}", f"--socket={self.socket_dir / 'mysqld.sock'}",
            f"--pid-file={self.pid_file}", f"--tmpdir={self.path / 'tmp'}",
            *MARIADB_SETTINGS,
        ]  # fmt: skip

    def pid(self) -> int | None:
        """The server's process id from its pid file, if it runs."""
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _alive(pid) else None

    def ready(self) -> bool:
        """The server accepts connections on its TCP port."""
        if self.name == "postgres":
            try:
                lines = self.pid_file.read_text().splitlines()
            except OSError:
                return False
            if len(lines) < 8 or lines[7].strip() != "ready":
                return False
        try:
            with socket.create_connection(("127.0.0.1", self.port), 1) as sock:
                if self.name == "mysql":  # the server greets a client first
                    sock.settimeout(2)
                    return bool(sock.recv(4))
                return True
        except OSError:
            return False

    def spawn(self, die_with_parent: bool = False) -> subprocess.Popen[bytes]:
        """Start the server process (see ``wait_ready``).  *die_with_parent*:
        SIGKILL it when the calling thread ends -- only for the main thread."""
        if self.pid() is not None:
            raise HarnessError(f"{self.name} in {self.directory} is already running")
        with open(self.log, "ab") as out:
            process = subprocess.Popen(
                self.command(), cwd=self.path, env=_env(self.path), stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent if die_with_parent else None,
                **_credentials(),
            )  # fmt: skip
        _children[process.pid] = process
        return process

    def wait_ready(self, process: subprocess.Popen[bytes]) -> None:
        """Wait until the server accepts connections; HarnessError with the
        end of its log if it exits or takes longer than START_TIMEOUT."""
        deadline = time.monotonic() + START_TIMEOUT
        while not self.ready():
            if process.poll() is not None:
                raise HarnessError(
                    f"{self.name} exited with {process.returncode} while starting "
                    f"on port {self.port}:\n{_tail(self.log)}"
                )
            if time.monotonic() > deadline:
                process.kill()
                raise HarnessError(
                    f"{self.name} not ready after {START_TIMEOUT} s:\n{_tail(self.log)}"
                )
            time.sleep(0.05)

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self.wait_ready(self.spawn())

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the server: PostgreSQL "fast" shutdown (SIGINT; sessions get
        "terminating connection due to administrator command"), MariaDB's
        normal shutdown (SIGTERM); SIGKILL after *timeout* seconds."""
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT if self.name == "postgres" else signal.SIGTERM)
        if not _wait_gone(pid, timeout):
            self.kill()
            return
        self._reap(pid)

    def kill(self) -> None:
        """SIGKILL the server (a crash); for PostgreSQL its backends follow."""
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, STOP_TIMEOUT)
        self._reap(pid)
        kill_processes_in(self.path)

    @staticmethod
    def _reap(pid: int) -> None:
        process = _children.pop(pid, None)
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(STOP_TIMEOUT)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        child = _children.get(pid)
        if child is not None:
            child.poll()
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def processes_in(directory: Path) -> list[int]:
    """Processes whose working directory or executable's arguments lie in
    *directory* (the servers and PostgreSQL's backends)."""
    found = []
    prefix = str(directory)
    for proc in glob.glob("/proc/[0-9]*"):
        pid = int(proc.rsplit("/", 1)[1])
        if pid == os.getpid():
            continue
        try:
            cwd = os.readlink(f"{proc}/cwd")
            with open(f"{proc}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
        except OSError:
            continue
        if (cwd == prefix or cwd.startswith(prefix + "/") or prefix in cmdline) and (
            _alive(pid)
        ):
            found.append(pid)
    return found


def kill_processes_in(directory: Path) -> None:
    for pid in processes_in(directory):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in processes_in(directory):
        _wait_gone(pid, STOP_TIMEOUT)


# -- set-up of a server pair -----------------------------------------------------
def _make_dir(path: Path) -> None:
    path.mkdir(mode=0o700)
    ids = _run_as()
    if ids is not None:
        os.chown(path, *ids)


def _copy(source: Path, target: Path, log: Path) -> None:
    _run(["cp", "-a", str(source), str(target)], target.parent, log)


def init_postgres(template: Path, bindir: Path) -> None:
    """``initdb`` into *template*/data: superuser ``root``, trust auth (as the
    machine's server in CI: any password is accepted), UTF8, C.UTF-8."""
    _make_dir(template)
    _run(
        [str(bindir / "initdb"), "-D", str(template / "data"), "-U", "root",
         "--auth=trust", "--no-sync", "--encoding=UTF8", "--locale=C.UTF-8",
         "--no-instructions"],
        template, template / "init.log",
    )  # fmt: skip


def init_mariadb(template: Path, install_db: str) -> None:
    """``mariadb-install-db`` into *template*/data: ``root`` without a
    password (also over TCP), the ``test`` database."""
    _make_dir(template)
    _run(
        [install_db, "--no-defaults", f"--datadir={template / 'data'}",
         "--auth-root-authentication-method=normal", "--skip-name-resolve",
         "--innodb-log-file-size=16M"],
        template, template / "init.log",
    )  # fmt: skip


def prepare(name: str, template: Path, directory: Path) -> None:
    """*directory* with a copy of *template*'s data and its own sockets/tmp."""
    _make_dir(directory)
    _copy(template / "data", directory / "data", directory / "server.log")
    for sub in ("run", "tmp"):
        _make_dir(directory / sub)


def start_all(servers: list[Server]) -> None:
    """Start *servers* together (from this thread, so that they die with it if
    the process is killed) and wait until all accept connections.  A port
    taken since ``free_port()`` gets a new one (three tries)."""
    main = threading.current_thread() is threading.main_thread()
    pending = {id(server): server for server in servers}
    for _attempt in range(3):
        spawned = [(server, server.spawn(main)) for server in pending.values()]
        retry = {}
        for server, process in spawned:
            try:
                server.wait_ready(process)
            except HarnessError as error:
                if "in use" not in str(error):
                    raise
                server.port = free_port()
                retry[id(server)] = server
        if not retry:
            return
        pending = retry
    raise HarnessError(f"no free port for {list(pending.values())}")


# -- the session's servers -------------------------------------------------------
@dataclass
class Harness:
    """The servers this process owns, and how to remove them."""

    root: Path
    servers: list[Server]
    cleaned: bool = False

    def cleanup(self) -> None:
        """Stop every server, kill leftovers, remove the directory.  Runs once;
        Ctrl-C is ignored while it runs (on the main thread)."""
        if self.cleaned or os.getpid() != _owner_pid:
            return  # a forked child (multiprocessing.Pool.terminate() sends it SIGTERM)
        self.cleaned = True
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for server in self.servers:
                with contextlib.suppress(Exception):
                    server.stop()
            kill_processes_in(self.root)
            for pid in list(_children):
                Server._reap(pid)
            shutil.rmtree(self.root, ignore_errors=True)
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)


_owned: Harness | None = None
#: The process that started the servers: the only one that may stop them.
_owner_pid: int | None = None


def _on_signal(signum: int, frame: Any) -> None:
    if _owned is not None and os.getpid() == _owner_pid:
        _owned.cleanup()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def sweep_stale(base: Path) -> None:
    """Remove directories left by harnesses whose owner died (SIGKILL)."""
    for owner_file in base.glob(f"{DIR_PREFIX}*/owner.json"):
        try:
            owner = json.loads(owner_file.read_text())["pid"]
        except (OSError, ValueError, KeyError):
            continue
        if not _alive(int(owner)):
            kill_processes_in(owner_file.parent)
            shutil.rmtree(owner_file.parent, ignore_errors=True)


def base_dir() -> Path:
    """Where the harness's directory goes: /tmp when root (``nobody`` must
    reach it; $TMPDIR may be private), else the usual temporary directory."""
    return Path("/tmp") if os.geteuid() == 0 else Path(tempfile.gettempdir())


def start_servers(
    keys: list[str], wanted: list[str]
) -> tuple[Harness, dict[str, dict[str, str]], dict[str, str]]:
    """Start a server of each *wanted* name for each process key.

    Returns the harness, ``{key: {name: Server.to_env()}}`` and
    ``{name: why missing}``.
    """
    global _owned, _owner_pid
    base = base_dir()
    sweep_stale(base)
    root = Path(tempfile.mkdtemp(prefix=DIR_PREFIX, dir=base))
    ids = _run_as()
    if ids is not None:
        os.chown(root, *ids)
    (root / "owner.json").write_text(json.dumps({"pid": os.getpid()}))
    harness = Harness(root, [])
    _owned = harness
    _owner_pid = os.getpid()
    atexit.register(harness.cleanup)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if threading.current_thread() is threading.main_thread():
            signal.signal(signum, _on_signal)

    missing: dict[str, str] = {}
    plans: dict[str, tuple[Callable[[Path], None], str]] = {}
    if "postgres" in wanted:
        bindir = postgres_bindir()
        if bindir is None:
            missing["postgres"] = missing_message("postgres")
        else:
            plans["postgres"] = (
                lambda t, b=bindir: init_postgres(t, b),
                str(bindir / "postgres"),
            )
    if "mysql" in wanted:
        binaries = mariadb_binaries()
        if binaries is None:
            missing["mysql"] = missing_message("mysql")
        else:
            plans["mysql"] = (
                lambda t, i=binaries[1]: init_mariadb(t, i),
                binaries[0],
            )

    def set_up(name: str) -> list[Server]:
        init, binary = plans[name]
        template = root / f"{name}-template"
        init(template)
        directories = [root / f"{name}-{key}" for key in keys]
        with ThreadPoolExecutor(len(keys)) as pool:
            list(pool.map(lambda d: prepare(name, template, d), directories))
        shutil.rmtree(template, ignore_errors=True)
        return [Server(name, str(d), free_port(), binary) for d in directories]

    servers: dict[str, dict[str, str]] = {key: {} for key in keys}
    try:
        # initdb / install-db and the copies in threads; the servers are
        # started from this thread (see start_all).
        with ThreadPoolExecutor(max(1, len(plans))) as pool:
            futures = {name: pool.submit(set_up, name) for name in plans}
            failures = []
            prepared: dict[str, list[Server]] = {}
            for name, future in futures.items():
                try:
                    prepared[name] = future.result()
                except Exception as error:
                    failures.append(f"{name}: {error}")
            if failures:
                raise HarnessError("\n".join(failures))
        for started in prepared.values():
            harness.servers += started
        start_all(harness.servers)
        for name, started in prepared.items():
            for key, server in zip(keys, started, strict=True):
                servers[key][name] = server.to_env()
    except BaseException:
        harness.cleanup()
        raise
    return harness, servers, missing


@contextlib.contextmanager
def private_servers(
    names: list[str], key: str = "main"
) -> Iterator[tuple[dict[str, Server], dict[str, str]]]:
    """Private servers for a program other than pytest (the benchmarks).

    Starts one server of each of *names* ("postgres", "mysql") as
    ``start_servers([key], names)`` does for the test session -- its own
    directory under ``base_dir()``, a free port of 127.0.0.1, ``nobody`` when
    root, stopped on exit, SIGTERM/SIGHUP and ``atexit`` -- and yields
    ``({name: Server}, {name: why missing})``: a name whose binaries are not
    installed is in the second mapping, not the first.  Every server is
    stopped and the directory removed when the block ends.  Raises
    HarnessError when a server is installed but cannot start.
    """
    harness, servers, missing = start_servers([key], names)
    try:
        yield (
            {name: Server.from_env(value) for name, value in servers[key].items()},
            missing,
        )
    finally:
        harness.cleanup()


# -- what this process uses ------------------------------------------------------
def private_server(name: str) -> Server | None:
    """This process's private server *name* ("postgres"/"mysql"), or None
    when the suite runs against an external one (or none at all)."""
    if os.environ.get(ENV_EXTERNAL[name]):
        return None
    value = os.environ.get(ENV_PRIVATE[name])
    return Server.from_env(value) if value else None


def private_url(name: str) -> str | None:
    value = os.environ.get(ENV_PRIVATE[name])
    return json.loads(value)["url"] if value else None


def _worker_count(config: Any) -> int:
    """How many xdist workers the controller will spawn (0: no xdist)."""
    if not config.pluginmanager.has_plugin("xdist"):
        return 0
    ns = config.known_args_namespace
    n = getattr(ns, "numprocesses", None)
    if getattr(ns, "dist", "no") == "no" and not n:
        return 0
    if n == "auto":
        with contextlib.suppress(Exception):
            from xdist.plugin import auto_detect_cpus

            return int(auto_detect_cpus())
    if n in ("auto", "logical"):
        return os.cpu_count() or 1
    try:
        return int(n or 0)
    except (TypeError, ValueError):
        return os.cpu_count() or 1


def _assign(servers: dict[str, str]) -> None:
    for name, value in servers.items():
        os.environ[ENV_PRIVATE[name]] = value


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: Any, parser: Any, args: Any) -> None:
    """Start (or find) this process's servers before Django reads settings."""
    wanted = [name for name in ENV_PRIVATE if not os.environ.get(ENV_EXTERNAL[name])]
    if not wanted:
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    shared = json.loads(os.environ.get(ENV_HARNESS) or "{}")
    if worker and worker in shared:  # an xdist worker: its own pair
        _assign({k: v for k, v in shared[worker].items() if k in wanted})
        return
    if os.environ.get(ENV_OWNER) and not (worker and shared):
        return  # a nested run (tests that run pytest): its parent's servers
    # The owner: plain pytest, the xdist controller, or a worker xdist started
    # to replace a crashed one (not in the map).
    workers = 0 if worker else _worker_count(early_config)
    keys = [f"gw{i}" for i in range(workers)] or ["main"]
    started = time.monotonic()
    try:
        harness, servers, missing = start_servers(keys, wanted)
    except HarnessError as error:
        raise SystemExit(f"djpoolapp test harness: {error}") from None
    early_config.stash[_SUMMARY] = (harness, keys, time.monotonic() - started)
    # The controller itself runs no test; it sees gw0's servers.
    _assign(servers[keys[0]])
    os.environ[ENV_OWNER] = str(os.getpid())
    if workers:
        os.environ[ENV_HARNESS] = json.dumps(servers)
    if missing:
        os.environ[ENV_MISSING] = json.dumps(missing)


_SUMMARY = pytest.StashKey[tuple[Harness, list[str], float]]()


def pytest_report_header(config: Any) -> list[str]:
    lines = []
    for name in ENV_PRIVATE:
        external = os.environ.get(ENV_EXTERNAL[name])
        if external:
            lines.append(f"{name}: external server {_redact(external)}")
    summary = config.stash.get(_SUMMARY, None)
    if summary is not None:
        harness, keys, seconds = summary
        ports = ", ".join(f"{s.name}-{Path(s.directory).name.split('-')[-1]}:{s.port}"
                          for s in harness.servers)  # fmt: skip
        lines.append(
            f"private servers in {harness.root} ({len(harness.servers)} started in "
            f"{seconds:.1f} s for {', '.join(keys)}): {ports or 'none'}"
        )
    for message in json.loads(os.environ.get(ENV_MISSING) or "{}").values():
        lines.append(message)
    return lines


def _redact(url: str) -> str:
    head, sep, tail = url.rpartition("@")
    if not sep:
        return url
    scheme, _, credentials = head.partition("://")
    return f"{scheme}://{credentials.split(':')[0]}@{tail}"


def pytest_unconfigure(config: Any) -> None:
    summary = config.stash.get(_SUMMARY, None)
    if summary is not None:
        summary[0].cleanup()


@contextlib.contextmanager
def environment_without_servers() -> Iterator[dict[str, str]]:
    """A copy of ``os.environ`` for a child pytest that must start its own
    servers (the harness's own tests)."""
    env = dict(os.environ)
    for key in [ENV_HARNESS, ENV_MISSING, ENV_OWNER, *ENV_PRIVATE.values()]:
        env.pop(key, None)
    env.pop("PYTEST_XDIST_WORKER", None)
    yield env


if __name__ == "__main__":  # pragma: no cover - manual check
    h, s, m = start_servers(["main"], ["postgres", "mysql"])
    print(json.dumps(s, indent=1), m)
    h.cleanup()
    sys.exit(0)
