#!/usr/bin/env python3
"""Prove that the test run leaves the machine's own database servers alone.

The suite runs against private servers it starts itself (tests/harness.py);
the machine's PostgreSQL (127.0.0.1:5432) and MariaDB (127.0.0.1:3306), if
any run, must be neither restarted nor used.  Standard library only, plus the
``psql`` and ``mariadb`` command-line clients.

    machine_servers.py snapshot STATE.json
        start times of the machine's servers ("not running" if absent)
    machine_servers.py watch STATE.json SESSIONS.jsonl --ancestor PID
        until killed: every 0.5 s, list the TCP sessions of both servers and
        record those whose client process descends from PID (the test run)
    machine_servers.py verify STATE.json SESSIONS.jsonl
        exit 1 if a server restarted or a session of the run was seen

A session is attributed to a process through its client port: the local
socket with that port (/proc/net/tcp) and the process holding it
(/proc/PID/fd), then that process's parents.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PG = ["psql", "-h", "127.0.0.1", "-p", "5432", "-U", "root", "-d", "postgres",
      "-X", "-A", "-t", "-F", "\t", "-c"]  # fmt: skip
MY = ["mariadb", "-h127.0.0.1", "-P3306", "-uroot", "-N", "-B", "-e"]
PG_START = "SELECT extract(epoch FROM pg_postmaster_start_time())"
# Start time from Uptime (whole seconds): compared with a 2 s tolerance.
MY_START = (
    "SELECT UNIX_TIMESTAMP() - VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS"
    " WHERE VARIABLE_NAME = 'UPTIME'"
)
PG_SESSIONS = (
    "SELECT pid, client_port, coalesce(application_name, ''), "
    "coalesce(datname, '') FROM pg_stat_activity WHERE client_port > 0"
)
MY_SESSIONS = (
    "SELECT ID, HOST, coalesce(DB, '') FROM information_schema.PROCESSLIST "
    "WHERE HOST LIKE '127.0.0.1:%'"
)
PORTS = {"postgresql": 5432, "mariadb": 3306}


def query(client: list[str], sql: str) -> list[list[str]] | None:
    """Rows of *sql*, or None when the server does not answer."""
    try:
        result = subprocess.run(
            [*client, sql], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    return [line.split("\t") for line in result.stdout.splitlines() if line]


def snapshot() -> dict[str, float | None]:
    pg = query(PG, PG_START)
    my = query(MY, MY_START)
    return {
        "postgresql": float(pg[0][0]) if pg else None,
        "mariadb": float(my[0][0]) if my else None,
    }


def socket_owners(server_port: int) -> dict[int, int]:
    """{client port: inode} of local TCP sockets connected to *server_port*."""
    owners = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], int(fields[9])
            if int(remote.rsplit(":", 1)[1], 16) == server_port and inode:
                owners[int(local.rsplit(":", 1)[1], 16)] = inode
    return owners


def pids_of_inodes(inodes: set[int]) -> dict[int, int]:
    """{inode: pid} for the sockets in *inodes*."""
    found: dict[int, int] = {}
    wanted = {f"socket:[{inode}]": inode for inode in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target in wanted:
                    found[wanted[target]] = int(proc.name)
        except OSError:
            continue
    return found


def ancestors(pid: int) -> list[int]:
    chain = []
    while pid > 1:
        chain.append(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return chain


def command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:200]


def sessions_of(ancestor: int) -> list[dict[str, object]]:
    """The machine servers' TCP sessions whose client descends from *ancestor*."""
    seen = []
    listings = {
        "postgresql": [
            (int(r[1]), f"pid {r[0]} application_name={r[2]!r} db={r[3]!r}")
            for r in query(PG, PG_SESSIONS) or []
        ],
        "mariadb": [
            (int(r[1].rsplit(":", 1)[1]), f"id {r[0]} db={r[2]!r}")
            for r in query(MY, MY_SESSIONS) or []
        ],
    }
    for server, sessions in listings.items():
        if not sessions:
            continue
        owners = socket_owners(PORTS[server])
        inodes = {owners[port] for port, _ in sessions if port in owners}
        pids = pids_of_inodes(inodes)
        for port, what in sessions:
            pid = pids.get(owners.get(port, -1))
            if pid is None:
                continue
            chain = ancestors(pid)
            if ancestor in chain and os.getpid() not in chain:  # not our psql
                seen.append(
                    {"server": server, "session": what, "client_pid": pid,
                     "client": command_line(pid), "time": time.time()}
                )  # fmt: skip
    return seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["snapshot", "watch", "verify"])
    parser.add_argument("state")
    parser.add_argument("sessions", nargs="?")
    parser.add_argument("--ancestor", type=int)
    args = parser.parse_args()

    if args.action == "snapshot":
        state = snapshot()
        Path(args.state).write_text(json.dumps(state))
        for server, start in state.items():
            if start is None:
                print(f"machine {server}: not running (nothing to protect)")
            else:
                started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(start))
                print(f"machine {server}: running since {started} UTC")
        return 0

    if args.action == "watch":
        state = json.loads(Path(args.state).read_text())
        if all(start is None for start in state.values()):
            return 0
        with open(args.sessions, "a") as out:
            while True:
                for hit in sessions_of(args.ancestor):
                    out.write(json.dumps(hit) + "\n")
                    out.flush()
                time.sleep(0.5)

    before = json.loads(Path(args.state).read_text())
    after = snapshot()
    failed = False
    for server, start in before.items():
        if start is None:
            print(f"machine {server}: was not running; nothing to check")
        elif after[server] is None:
            print(f"machine {server}: STOPPED during the run")
            failed = True
        elif abs(after[server] - start) > 2:
            print(
                f"machine {server}: RESTARTED during the run ({start} -> {after[server]})"
            )
            failed = True
        else:
            print(f"machine {server}: not restarted (same start time)")
    hits = []
    if args.sessions and Path(args.sessions).exists():
        unique = {}
        for line in Path(args.sessions).read_text().splitlines():
            hit = json.loads(line)
            unique.setdefault((hit["server"], hit["session"]), hit)
        hits = list(unique.values())
    if hits:
        failed = True
        print(f"{len(hits)} sessions of the test run on the machine's servers, e.g.:")
        for hit in hits[:10]:
            print(f"  {hit['server']}: {hit['session']} from {hit['client']}")
    elif any(start is not None for start in before.values()):
        print("no session of the test run seen on the machine's servers")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
