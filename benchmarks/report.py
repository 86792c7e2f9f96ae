"""Summaries, tables, targets, CSV/JSON and the plot of one benchmark run.

Every figure compares runs of the *same* invocation: a machine with two
cores shared with other work drifts by tens of percent between minutes.
Each strategy runs once per round, rounds interleave the strategies, and a
strategy's figure is the median over rounds.  Ratios to ``persistent`` are
the median of the per-round ratios (each strategy against the persistent
run of the same round, minutes apart at most), which cancels slow drift
better than dividing two medians.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

STRATEGIES = (
    "none", "persistent", "native", "dbcp", "djpoolapp", "djpoolapp-nopark", "djpoolapp-tx",
)  # fmt: skip
#: djpoolapp as shipped (``park=True``, the fast path of issue 12), without
#: the fast path (``park=False``, as before it) and with
#: ``pool_mode="transaction"`` (issue 13).
POOLED = ("djpoolapp", "djpoolapp-nopark", "djpoolapp-tx")
DATABASES = ("postgres", "postgres-tls", "mysql")
#: The contention scenario (contention.py): "barging" is djpoolapp with
#: SQLAlchemy's own queue, as it was before issue 12.
CONTENTION_STRATEGIES = ("persistent", "native", "dbcp", "barging", "djpoolapp")
CONTENTION_DEFAULT = ("persistent", "native", "barging", "djpoolapp")
CONTENTION_DATABASES = ("postgres", "mysql")
CONTENTION_FIELDS = (
    "database", "threads", "pool_size", "timeout", "hold_ms", "strategy",
    "seconds", "successes", "timeouts", "min_per_thread", "max_per_thread",
    "never_served", "wait_p50_ms", "wait_p99_ms", "wait_max_ms", "rps",
    "server_conns", "error_count",
)  # fmt: skip
#: The Django version the reference figures (README, docs/benchmarks.rst) are for.
REFERENCE_DJANGO = "6.1"
COLOURS = {
    "none": "#b0b0b0", "persistent": "#4c72b0", "native": "#dd8452",
    "dbcp": "#937860", "barging": "#c44e52", "djpoolapp": "#55a868",
    "djpoolapp-nopark": "#8172b3", "djpoolapp-tx": "#64b5cd",
}  # fmt: skip
TITLES = {
    "postgres": "PostgreSQL, TCP without TLS (sslmode=disable)",
    "postgres-tls": "PostgreSQL over TLS (sslmode=require)",
    "mysql": "MariaDB",
}
CSV_FIELDS = (
    "database", "threads", "pool_size", "strategy", "rounds", "requests",
    "p50_ms", "p99_ms", "rps", "cpu_us", "server_conns", "sessions",
    "p50_vs_persistent", "rps_vs_persistent", "cpu_vs_persistent", "tls",
)  # fmt: skip


def _median(values: Iterable[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def _ratios(runs: list[dict[str, Any]], key: str) -> dict[tuple, float | None]:
    """Per (database, threads, strategy): median over rounds of run / persistent."""
    base = {
        (run["round"], run["database"], run["threads"]): run[key]
        for run in runs
        if run["strategy"] == "persistent" and run.get(key)
    }
    found: dict[tuple, list[float]] = {}
    for run in runs:
        reference = base.get((run["round"], run["database"], run["threads"]))
        if reference and run.get(key) is not None:
            group = (run["database"], run["threads"], run["strategy"])
            found.setdefault(group, []).append(run[key] / reference)
    return {group: _median(values) for group, values in found.items()}


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (database, threads, strategy) from the successful runs."""
    ok = [run for run in runs if run.get("error") is None]
    p50_ratio, rps_ratio = _ratios(ok, "p50_ms"), _ratios(ok, "rps")
    cpu_ratio = _ratios(ok, "cpu_us")
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for run in ok:
        groups.setdefault(
            (run["database"], run["threads"], run["strategy"]), []
        ).append(run)
    rows = []
    for group, members in groups.items():
        database, threads, strategy = group
        conns = [
            run["server_conns"] for run in members if run["server_conns"] is not None
        ]
        rows.append({
            "database": database,
            "threads": threads,
            "pool_size": members[0]["pool_size"],
            "strategy": strategy,
            "rounds": len(members),
            "requests": sum(run["requests"] for run in members),
            "p50_ms": _median(run["p50_ms"] for run in members),
            "p99_ms": _median(run["p99_ms"] for run in members),
            "rps": _median(run["rps"] for run in members),
            "cpu_us": _median(run.get("cpu_us") for run in members),
            "server_conns": max(conns) if conns else None,
            "sessions": _median(run["sessions"] for run in members),
            "p50_vs_persistent": p50_ratio.get(group),
            "rps_vs_persistent": rps_ratio.get(group),
            "cpu_vs_persistent": cpu_ratio.get(group),
            "tls": members[0]["tls"],
        })  # fmt: skip
    order = {name: i for i, name in enumerate(STRATEGIES)}
    dbs = {name: i for i, name in enumerate(DATABASES)}
    rows.sort(key=lambda r: (dbs[r["database"]], r["threads"], order[r["strategy"]]))
    return rows


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def tables(rows: list[dict[str, Any]], headers: dict[str, str]) -> str:
    """A plain-text table per database (the same table the README shows)."""
    out = []
    for database in DATABASES:
        mine = [row for row in rows if row["database"] == database]
        if not mine:
            continue
        out.append(f"\n{TITLES[database]} -- {headers.get(database, '')}".rstrip(" -"))
        out.append(
            f"{'threads':<11}{'strategy':<15}{'p50 ms':>8}{'p99 ms':>8}{'req/s':>8}"
            f"{'conns':>6}{'CPU µs':>8}{'p50/pers':>9}{'req/s/pers':>11}{'CPU/pers':>9}"
        )
        for row in mine:
            threads = f"{row['threads']}" + (
                f" (pool {row['pool_size']})" if row["pool_size"] else ""
            )
            out.append(
                f"{threads:<11}{row['strategy']:<15}{_cell(row['p50_ms'], '.3f'):>8}"
                f"{_cell(row['p99_ms'], '.3f'):>8}{_cell(row['rps'], '.0f'):>8}"
                f"{_cell(row['server_conns'], 'd'):>6}{_cell(row['cpu_us'], '.0f'):>8}"
                f"{_cell(row['p50_vs_persistent'], '.2f'):>8}x"
                f"{_cell(row['rps_vs_persistent'], '.2f'):>10}x"
                f"{_cell(row['cpu_vs_persistent'], '.2f'):>8}x"
            )
    return "\n".join(out)


def _paired_speedup(runs: list[dict[str, Any]], database: str) -> float | None:
    """Median over rounds of none p50 / djpoolapp p50, 1 thread."""
    by_round: dict[int, dict[str, float]] = {}
    for run in runs:
        if (
            run.get("error") is None
            and run["database"] == database
            and run["threads"] == 1
        ):
            by_round.setdefault(run["round"], {})[run["strategy"]] = run["p50_ms"]
    return _median(
        pair["none"] / pair["djpoolapp"]
        for pair in by_round.values()
        if pair.get("none") and pair.get("djpoolapp")
    )


def _pooled_targets(
    get: dict[tuple[str, int, str], dict[str, Any]],
    database: str,
    pooled: str,
    add: Any,
) -> None:
    """Issue 12's targets for one djpoolapp variant (:data:`POOLED`)."""
    one = get.get((database, 1, pooled))
    if one:
        ratio = one["p50_vs_persistent"]
        add(f"{database}: 1 thread p50 {pooled} / persistent <= 1.10",
            ratio, 1.10, None if ratio is None else ratio <= 1.10)  # fmt: skip
        native = get.get((database, 1, "native"))
        if native and native["p50_ms"] and one["p50_ms"]:
            relative = one["p50_ms"] / native["p50_ms"]
            add(f"{database}: 1 thread p50 {pooled} / native < 1",
                relative, 1.0, relative < 1.0)  # fmt: skip
    many = sorted(
        (r for (db, t, _), r in get.items() if db == database and t > 1),
        key=lambda r: (r["threads"] != 8, r["threads"]),  # issue 12: 8 threads
    )
    mine = next((r for r in many if r["strategy"] == pooled), None)
    if mine:
        many = [r for r in many if r["threads"] == mine["threads"]]
        ratio = mine["rps_vs_persistent"]
        add(f"{database}: {mine['threads']} threads req/s {pooled} / persistent >= 0.90",
            ratio, 0.90, None if ratio is None else ratio >= 0.90)  # fmt: skip
        for peer in ("native", "dbcp"):
            other = next((r for r in many if r["strategy"] == peer), None)
            if other and other["rps_vs_persistent"] and ratio:
                relative = ratio / other["rps_vs_persistent"]
                add(f"{database}: {mine['threads']} threads req/s {pooled} / {peer} >= 1",
                    relative, 1.0, relative >= 1.0)  # fmt: skip
        conns = mine["server_conns"]
        add(f"{database}: {mine['threads']} threads {pooled} server conns <= pool_size",
            conns, mine["pool_size"] or 0,
            None if conns is None else conns <= (mine["pool_size"] or 0))  # fmt: skip


def targets(
    rows: list[dict[str, Any]], runs: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The targets of issues 5 and 12, each with its figure and whether it
    is met (issue 12: 1 thread p50 <= 1.10 x persistent and below native's;
    8 threads on pool_size 4 >= 0.90 x persistent req/s and above native's,
    with at most pool_size server connections)."""
    get = {(r["database"], r["threads"], r["strategy"]): r for r in rows}
    found = []

    def add(name: str, figure: float | None, limit: float, met: bool | None) -> None:
        found.append({"target": name, "figure": figure, "limit": limit, "met": met})

    for database in DATABASES:
        for pooled in POOLED:
            _pooled_targets(get, database, pooled, add)
        limit = {"postgres": 15.0, "postgres-tls": 40.0}.get(database)
        if limit:
            speedup = _paired_speedup(runs, database)
            if speedup is not None:
                add(f"{database}: 1 thread p50 none / djpoolapp >= {limit:.0f}",
                    speedup, limit, speedup >= limit)  # fmt: skip
    return found


def contention_table(contended: list[dict[str, Any]]) -> str:
    """The contention scenario's table: one line per database and strategy."""
    if not contended:
        return ""
    first = next((run for run in contended if not run["error"]), contended[0])
    out = [
        f"\nContention: {first['threads']} threads on pool_size="
        f"{first['pool_size']}, max_overflow=0, timeout={first.get('timeout')} s, "
        f"{first.get('hold_ms', 0):g} ms per request"
        + (f", {first['seconds']:.0f} s" if first.get("seconds") else ""),
        f"{'database':<10}{'strategy':<12}{'served':>7}{'timeouts':>9}"
        f"{'min/thr':>8}{'max/thr':>8}{'never':>6}{'p50 wait':>9}"
        f"{'p99 wait':>9}{'max wait':>9}{'req/s':>7}{'conns':>6}{'errors':>7}",
    ]
    for run in contended:
        head = f"{run['database']:<10}{run['strategy']:<12}"
        if run["error"]:
            out.append(f"{head}FAILED: {run['error']}")
            continue
        out.append(
            f"{head}{run['successes']:>7d}{run['timeouts']:>9d}"
            f"{run['min_per_thread']:>8d}{run['max_per_thread']:>8d}"
            f"{run['never_served']:>6d}{_cell(run['wait_p50_ms'], '.0f'):>7}ms"
            f"{_cell(run['wait_p99_ms'], '.0f'):>7}ms"
            f"{_cell(run['wait_max_ms'], '.0f'):>7}ms{run['rps']:>7.1f}"
            f"{_cell(run['server_conns'], 'd'):>6}{run.get('error_count', 0):>7d}"
        )
    out.append("(waits are checkout waits in ms, timed-out checkouts included; "
               "errors: requests that failed otherwise)")  # fmt: skip
    return "\n".join(out)


def contention_targets(contended: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 12's contention targets for djpoolapp, per database."""
    found = []
    ok = {(r["database"], r["strategy"]): r for r in contended if not r["error"]}

    def add(name: str, figure: float | None, limit: float, met: bool | None) -> None:
        found.append({"target": name, "figure": figure, "limit": limit, "met": met})

    for database in CONTENTION_DATABASES:
        mine = ok.get((database, "djpoolapp"))
        if mine is None:
            continue
        add(f"{database}: contention djpoolapp timeouts == 0",
            mine["timeouts"], 0, mine["timeouts"] == 0)  # fmt: skip
        counts = mine["per_thread"]
        mean = statistics.mean(counts) if counts else 0
        spread = max(abs(c - mean) for c in counts) / mean if mean else None
        add(f"{database}: contention djpoolapp per-thread spread <= 25 % of mean",
            spread, 0.25, None if spread is None else spread <= 0.25)  # fmt: skip
        native = ok.get((database, "native"))
        if native and native["wait_p99_ms"] and mine["wait_p99_ms"] is not None:
            ratio = mine["wait_p99_ms"] / native["wait_p99_ms"]
            add(f"{database}: contention djpoolapp p99 wait / native <= 1",
                ratio, 1.0, ratio <= 1.0)  # fmt: skip
    return found


def targets_text(found: list[dict[str, Any]]) -> str:
    lines = ["\nTargets (issues 5 and 12)"]
    for item in found:
        verdict = {True: "met", False: "NOT MET", None: "not measured"}[item["met"]]
        figure = _cell(
            item["figure"], ".3f" if isinstance(item["figure"], float) else "d"
        )
        lines.append(f"  {verdict:<8} {item['target']}: {figure}")
    return "\n".join(lines)


def write_files(
    directory: Path, rows: list[dict[str, Any]], runs: list[dict[str, Any]],
    found: list[dict[str, Any]], meta: dict[str, Any],
    contended: list[dict[str, Any]] | None = None,
) -> list[Path]:  # fmt: skip
    """benchmark.csv (the summary), contention.csv (the contention scenario,
    when run) and benchmark.json (everything)."""
    directory.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = directory / "benchmark.csv", directory / "benchmark.json"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    slim = [{k: v for k, v in run.items() if k != "session_ids"} for run in runs]
    contention = [
        {k: v for k, v in run.items() if k != "session_ids"} for run in contended or []
    ]
    document = {"meta": meta, "summary": rows, "targets": found, "runs": slim,
                "contention": contention}  # fmt: skip
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    paths = [csv_path, json_path]
    if contention:
        contention_path = directory / "contention.csv"
        with contention_path.open("w", newline="") as handle:
            writer = csv.DictWriter(
                handle, fieldnames=CONTENTION_FIELDS, extrasaction="ignore"
            )
            writer.writeheader()
            writer.writerows(run for run in contention if not run["error"])
        paths.insert(1, contention_path)
    return paths


def subtitle(meta: dict[str, Any], rounds: int, requests: int) -> str:
    """The plot's second title line: versions, machine and its load."""
    load = meta.get("load_average") or [None]
    return (
        f"Django {meta.get('django')}, Python {meta.get('python')}, "
        f"{meta.get('started')}, {meta.get('cpus')} CPUs, load average "
        f"{_cell(load[0], '.1f')} at the start; median of {rounds} round(s) "
        f"of {requests} requests"
    )


LINESTYLES = {"postgres": "-", "postgres-tls": "--", "mysql": ":"}
SHORT = {"postgres": "PostgreSQL", "postgres-tls": "PostgreSQL TLS", "mysql": "MariaDB"}


def plot(
    path: Path,
    rows: list[dict[str, Any]],
    subtitle: str,
    contended: list[dict[str, Any]] | None = None,
) -> Path | None:
    """One figure, three panels, read left to right:

    1. per-request cost with one thread: p50 ÷ persistent per strategy and
       database (log scale; 1 = a connection kept for ever);
    2. requests/s per thread count, a line per strategy and database;
    3. the contention scenario: requests served per thread (bar: mean,
       whisker: fewest to most), timeouts written above.

    Returns None when matplotlib is missing (the ``bench`` extra).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib import ticker
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch
    except ImportError:
        return None
    contended = [run for run in contended or [] if not run["error"]]
    panels = 3 if contended else 2
    figure, axes = plt.subplots(1, panels, figsize=(5.6 * panels, 5.4))
    databases = [db for db in DATABASES if any(r["database"] == db for r in rows)]

    # 1. p50 ratio, one thread.
    axis = axes[0]
    shown = [s for s in STRATEGIES if s != "persistent"]
    width = 0.8 / max(len(shown), 1)
    for offset, strategy in enumerate(shown):
        xs, ys = [], []
        for index, database in enumerate(databases):
            row = next((r for r in rows if r["database"] == database
                        and r["threads"] == 1 and r["strategy"] == strategy), None)  # fmt: skip
            if row and row["p50_vs_persistent"]:
                xs.append(index + (offset - (len(shown) - 1) / 2) * width)
                ys.append(row["p50_vs_persistent"])
        bars = axis.bar(xs, ys, width, color=COLOURS[strategy], label=strategy)
        for bar, value in zip(bars, ys, strict=True):
            axis.annotate(f"{value:.2f}" if value < 10 else f"{value:.0f}",
                          (bar.get_x() + bar.get_width() / 2, value), ha="center",
                          va="bottom", fontsize=7)  # fmt: skip
    axis.axhline(1.0, color=COLOURS["persistent"], linewidth=1.5)
    axis.axhline(1.10, color="black", linewidth=0.8, linestyle="--")
    on_right = axis.get_yaxis_transform()  # x in axes fraction, y in data
    axis.text(0.99, 0.99, "persistent = 1", transform=on_right, ha="right",
              va="top", fontsize=7, color=COLOURS["persistent"])  # fmt: skip
    axis.text(0.99, 1.11, "target 1.10", transform=on_right, ha="right",
              va="bottom", fontsize=7)  # fmt: skip
    axis.set_yscale("log")
    axis.set_ylim(bottom=0.8)
    axis.yaxis.set_major_locator(
        ticker.FixedLocator([1, 1.5, 2, 3, 5, 10, 20, 50, 100])
    )
    axis.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
    axis.yaxis.set_minor_locator(ticker.NullLocator())
    axis.set_xticks(range(len(databases)), [SHORT[db] for db in databases])
    axis.set_title("1 thread: p50 per request ÷ persistent\n(lower is better)",
                   fontsize=9)  # fmt: skip

    # 2. req/s per thread count.
    axis = axes[1]
    counts = sorted({r["threads"] for r in rows})
    for database in databases:
        for strategy in STRATEGIES:
            mine = sorted((r["threads"], r["rps"]) for r in rows
                          if r["database"] == database and r["strategy"] == strategy
                          and r["rps"])  # fmt: skip
            if mine:
                axis.plot([counts.index(t) for t, _ in mine], [v for _, v in mine],
                          color=COLOURS[strategy], linestyle=LINESTYLES[database],
                          marker="o", markersize=4)  # fmt: skip
    pool = next((r["pool_size"] for r in rows if r["pool_size"]), None)
    axis.set_xticks(range(len(counts)),
                    [f"{t}" + (f"\n(pool {pool})" if t > 1 and pool else "")
                     for t in counts])  # fmt: skip
    axis.set_xlabel("threads")
    axis.set_ylim(bottom=0)
    axis.set_title("requests/s by thread count\n(higher is better)", fontsize=9)
    axis.legend(handles=[Line2D([], [], color="black", linestyle=LINESTYLES[db],
                                label=SHORT[db]) for db in databases],
                fontsize=7, loc="upper left")  # fmt: skip

    # 3. contention: served per thread.
    if contended:
        axis = axes[2]
        dbs = [db for db in CONTENTION_DATABASES
               if any(r["database"] == db for r in contended)]  # fmt: skip
        # persistent holds one connection per thread: nothing to share.
        strategies = [s for s in CONTENTION_STRATEGIES if s != "persistent"
                      and any(r["strategy"] == s for r in contended)]  # fmt: skip
        width = 0.8 / len(strategies)
        top = 0
        for offset, strategy in enumerate(strategies):
            for index, database in enumerate(dbs):
                run = next((r for r in contended if r["database"] == database
                            and r["strategy"] == strategy), None)  # fmt: skip
                if run is None:
                    continue
                x = index + (offset - (len(strategies) - 1) / 2) * width
                mean = statistics.mean(run["per_thread"])
                axis.bar(x, mean, width, color=COLOURS[strategy])
                axis.errorbar(x, mean, yerr=[[mean - run["min_per_thread"]],
                              [run["max_per_thread"] - mean]], color="black",
                              capsize=3, linewidth=1)  # fmt: skip
                label = f"{run['timeouts']} t/o"
                if run["never_served"]:
                    label += f", {run['never_served']} never"
                axis.annotate(f" {label}", (x, run["max_per_thread"]), ha="center",
                              va="bottom", fontsize=7, rotation=90,
                              color="#c44e52" if run["timeouts"] else "black")  # fmt: skip
                top = max(top, run["max_per_thread"])
        first = contended[0]
        axis.set_ylim(0, top * 1.45 + 1)  # room for the labels
        axis.set_xticks(range(len(dbs)), [SHORT[db] for db in dbs])
        axis.set_ylabel("requests served per thread")
        axis.set_title(
            f"{first['threads']} threads on {first['pool_size']} connections, "
            f"{first['hold_ms']:g} ms each, timeout {first.get('timeout')} s:\n"
            "requests served per thread (bar mean, whisker fewest-most;\n"
            "t/o: timeouts, never: threads never served)",
            fontsize=9,
        )
    used = [s for s in COLOURS if any(r["strategy"] == s for r in rows + contended)]
    figure.legend(handles=[Patch(color=COLOURS[s], label=s) for s in used],
                  loc="lower center", ncol=len(used), fontsize=8,
                  frameon=False)  # fmt: skip
    figure.suptitle(
        "djpoolapp benchmark: Django WSGIHandler, one query per request\n" + subtitle,
        fontsize=9,
    )
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
