"""A private PostgreSQL server for the example project, from the system's binaries.

When ``DATABASE_URL`` is unset, the example runs its own PostgreSQL server
with the ``initdb`` and ``pg_ctl`` of the machine's PostgreSQL installation
(Debian/Ubuntu: ``apt-get install postgresql``; any version works):

- its data directory is ``DATA_DIR/.pgdata`` (``example_project/.pgdata``
  unless ``EXAMPLE_DATA_DIR`` says otherwise), mode 0700;
- it listens on a Unix socket inside that directory only (no TCP port, so it
  never clashes with another server and nobody else can reach it) and trusts
  local connections as the database user ``postgres``;
- it runs as the user running the example.  PostgreSQL refuses to run as
  root, so under root it runs as the unprivileged ``postgres`` account of the
  PostgreSQL package (or ``nobody``), and only the data directory is handed
  to that account.  Nothing outside the data directory is created, chowned
  or chmodded, and no account is created: if that account cannot reach the
  data directory (a parent such as ``/root`` is private), :class:`Unavailable`
  says so and the example falls back to SQLite;
- the process that started the server stops it when it exits (Ctrl-C and
  SIGTERM included); a server that was already running (another example
  process) is reused and left running.
"""

from __future__ import annotations

import atexit
import fcntl
import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: Unix socket paths are limited to 107 bytes; this leaves room for the name.
MAX_SOCKET_DIR = 90
PORT = 5432  # names the socket file only: the server listens on no TCP port


class Unavailable(Exception):
    """The embedded server cannot run here; the message says why and what to do."""


def find_binaries() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl``: PATH first, then the
    versioned directories of Debian/Ubuntu (newest first) and common prefixes."""
    on_path = shutil.which("pg_ctl")
    candidates = [Path(on_path).parent] if on_path else []

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path))

    for pattern in (
        "/usr/lib/postgresql/*/bin",
        "/usr/pgsql-*/bin",
        "/usr/local/pgsql/bin",
        "/opt/homebrew/opt/postgresql*/bin",
        "/usr/local/opt/postgresql*/bin",
    ):
        candidates += [Path(p) for p in sorted(glob.glob(pattern), key=version)[::-1]]
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    raise Unavailable(
        "no PostgreSQL server binaries (initdb, pg_ctl) found; install them "
        "(Debian/Ubuntu: apt-get install postgresql)"
    )


def server_account() -> pwd.struct_passwd:
    """Who runs the server: the current user, or an unprivileged system
    account when that is root (never created here)."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise Unavailable(
        "running as root and no unprivileged 'postgres' or 'nobody' account "
        "exists to run PostgreSQL as (it refuses to run as root)"
    )


def _exit_cleanly_on_sigterm() -> None:
    """Make SIGTERM (``kill``, nox or a container stopping) exit through
    ``atexit``, so the server this process started is stopped too; left
    alone when the program has its own SIGTERM handler."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def exit_now(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, exit_now)


class EmbeddedPostgres:
    """The example's private server in *data_dir*."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.lock_file = data_dir.parent / f"{data_dir.name}.lock"
        self.started_here = False

    # -- helpers ------------------------------------------------------------
    def _run(self, account: pwd.struct_passwd, *args: str) -> str:
        """Run a PostgreSQL program as *account*; return its output."""
        as_other = account.pw_uid != os.geteuid()
        result = subprocess.run(
            args,
            capture_output=True,
            text=True,
            cwd=self.data_dir if self.data_dir.exists() else None,
            env={**os.environ, "LC_ALL": "C", "LANG": "C"},
            user=account.pw_uid if as_other else None,
            group=account.pw_gid if as_other else None,
            extra_groups=[] if as_other else None,
            timeout=120,
        )
        if result.returncode != 0 and args[1:2] != ("status",):
            raise Unavailable(
                f"{Path(args[0]).name} {args[1] if len(args) > 1 else ''} failed "
                f"(exit {result.returncode}): "
                f"{(result.stderr or result.stdout).strip()[-600:]}"
            )
        return result.stdout

    def _reachable_by(self, account: pwd.struct_passwd) -> bool:
        """Whether *account* can enter the folder holding the data directory,
        tried as that account (no guessing from mode bits)."""
        if account.pw_uid == os.geteuid():
            return True
        result = subprocess.run(
            ["test", "-x", str(self.data_dir.parent)],
            user=account.pw_uid,
            group=account.pw_gid,
            extra_groups=[],
            check=False,
        )
        return result.returncode == 0

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One process at a time initialises, starts or stops the server."""
        with open(self.lock_file, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # -- the server ---------------------------------------------------------
    def start(self) -> dict[str, Any]:
        """Initialise (once) and start (unless running) the server; return
        the connection settings of its ``postgres`` database."""
        if len(str(self.data_dir)) > MAX_SOCKET_DIR:
            raise Unavailable(
                f"the data directory path {self.data_dir} is too long for a Unix "
                f"socket (over {MAX_SOCKET_DIR} characters); set EXAMPLE_DATA_DIR "
                "to a shorter path"
            )
        bin_dir = find_binaries()
        account = server_account()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if not self._reachable_by(account):
            raise Unavailable(
                f"PostgreSQL refuses to run as root, and the account it would run "
                f"as ({account.pw_name!r}) cannot enter {self.data_dir.parent}; "
                "the example does not change permissions outside its data "
                "directory. Run it as an ordinary user, or set EXAMPLE_DATA_DIR "
                "to a folder that account can reach"
            )
        with self._locked():
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb(bin_dir, account)
            status = self._run(
                account, str(bin_dir / "pg_ctl"), "status", "-D", str(self.data_dir)
            )
            if "server is running" not in status:
                self._run(
                    account, str(bin_dir / "pg_ctl"), "start", "-w", "-t", "60",
                    "-D", str(self.data_dir), "-l", str(self.data_dir / "server.log"),
                    "-o", f"-c listen_addresses='' -p {PORT} "
                    f"-c unix_socket_directories='{self.data_dir}'",
                )  # fmt: skip
                self.started_here = True
                atexit.register(self.stop, bin_dir, account)
                _exit_cleanly_on_sigterm()
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": "postgres",
            "USER": "postgres",
            "PASSWORD": "",
            "HOST": str(self.data_dir),
            "PORT": str(PORT),
            "CONN_MAX_AGE": 0,
        }

    def _initdb(self, bin_dir: Path, account: pwd.struct_passwd) -> None:
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)  # a half-made one from an interrupted run
        self.data_dir.mkdir(mode=0o700)
        if account.pw_uid != os.geteuid():
            os.chown(self.data_dir, account.pw_uid, account.pw_gid)  # ours only
        self._run(
            account, str(bin_dir / "initdb"), "-D", str(self.data_dir),
            "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-instructions",
        )  # fmt: skip

    def stop(self, bin_dir: Path, account: pwd.struct_passwd) -> None:
        """Stop the server if this process started it (registered with atexit)."""
        if not self.started_here:
            return
        self.started_here = False
        try:
            with self._locked():
                self._run(
                    account, str(bin_dir / "pg_ctl"), "stop", "-m", "fast", "-w",
                    "-D", str(self.data_dir),
                )  # fmt: skip
        except (Unavailable, OSError, subprocess.SubprocessError):
            pass  # already stopped, or the data directory was removed
