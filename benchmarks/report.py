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

STRATEGIES = ("none", "persistent", "native", "dbcp", "djpoolapp")
DATABASES = ("postgres", "postgres-tls", "mysql")
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
            f"{'threads':<11}{'strategy':<11}{'p50 ms':>8}{'p99 ms':>8}{'req/s':>8}"
            f"{'conns':>6}{'CPU µs':>8}{'p50/pers':>9}{'req/s/pers':>11}{'CPU/pers':>9}"
        )
        for row in mine:
            threads = f"{row['threads']}" + (
                f" (pool {row['pool_size']})" if row["pool_size"] else ""
            )
            out.append(
                f"{threads:<11}{row['strategy']:<11}{_cell(row['p50_ms'], '.3f'):>8}"
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


def targets(
    rows: list[dict[str, Any]], runs: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The targets of issue 5, each with its figure and whether it is met."""
    get = {(r["database"], r["threads"], r["strategy"]): r for r in rows}
    found = []

    def add(name: str, figure: float | None, limit: float, met: bool | None) -> None:
        found.append({"target": name, "figure": figure, "limit": limit, "met": met})

    for database in DATABASES:
        one = get.get((database, 1, "djpoolapp"))
        if one:
            ratio = one["p50_vs_persistent"]
            add(f"{database}: 1 thread p50 djpoolapp / persistent <= 1.10",
                ratio, 1.10, None if ratio is None else ratio <= 1.10)  # fmt: skip
        many = [r for (db, t, _), r in get.items() if db == database and t > 1]
        mine = next((r for r in many if r["strategy"] == "djpoolapp"), None)
        if mine:
            ratio = mine["rps_vs_persistent"]
            add(f"{database}: {mine['threads']} threads req/s djpoolapp / persistent >= 0.95",
                ratio, 0.95, None if ratio is None else ratio >= 0.95)  # fmt: skip
            for peer in ("native", "dbcp"):
                other = next((r for r in many if r["strategy"] == peer), None)
                if other and other["rps_vs_persistent"] and ratio:
                    relative = ratio / other["rps_vs_persistent"]
                    add(f"{database}: {mine['threads']} threads req/s djpoolapp / {peer} >= 1",
                        relative, 1.0, relative >= 1.0)  # fmt: skip
            conns = mine["server_conns"]
            add(f"{database}: {mine['threads']} threads djpoolapp server conns <= pool_size",
                conns, mine["pool_size"] or 0,
                None if conns is None else conns <= (mine["pool_size"] or 0))  # fmt: skip
        limit = {"postgres": 15.0, "postgres-tls": 40.0}.get(database)
        if limit:
            speedup = _paired_speedup(runs, database)
            if speedup is not None:
                add(f"{database}: 1 thread p50 none / djpoolapp >= {limit:.0f}",
                    speedup, limit, speedup >= limit)  # fmt: skip
    return found


def targets_text(found: list[dict[str, Any]]) -> str:
    lines = ["\nTargets (issue 5)"]
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
) -> list[Path]:  # fmt: skip
    """benchmark.csv (the summary) and benchmark.json (everything)."""
    directory.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = directory / "benchmark.csv", directory / "benchmark.json"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    slim = [{k: v for k, v in run.items() if k != "session_ids"} for run in runs]
    document = {"meta": meta, "summary": rows, "targets": found, "runs": slim}
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    return [csv_path, json_path]


def plot(path: Path, rows: list[dict[str, Any]], subtitle: str) -> Path | None:
    """Bars per database: 1-thread p50 (log scale) and multi-thread req/s.
    Returns None when matplotlib is missing (the ``bench`` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib import ticker
    except ImportError:
        return None
    databases = [db for db in DATABASES if any(r["database"] == db for r in rows)]
    figure, axes = plt.subplots(
        2, len(databases), figsize=(max(4.2 * len(databases), 9), 7.5), squeeze=False
    )
    palette = ("#b0b0b0", "#4c72b0", "#dd8452", "#937860", "#55a868")
    colours = dict(zip(STRATEGIES, palette, strict=True))
    for column, database in enumerate(databases):
        for line, (multi, key, ratio_key, label) in enumerate((
            (False, "p50_ms", "p50_vs_persistent", "p50 ms, 1 thread (log)"),
            (True, "rps", "rps_vs_persistent", "requests/s, {t} threads, pool_size {p}"),
        )):  # fmt: skip
            axis = axes[line][column]
            mine = [r for r in rows if r["database"] == database
                    and (r["threads"] > 1) == multi and r[key]]  # fmt: skip
            names = [r["strategy"] for r in mine]
            bars = axis.bar(names, [r[key] for r in mine],
                            color=[colours[n] for n in names])  # fmt: skip
            for bar, row in zip(bars, mine, strict=True):
                if row[ratio_key] is not None:
                    axis.annotate(f"{row[ratio_key]:.2f}x", (bar.get_x() + bar.get_width() / 2,
                                  bar.get_height()), ha="center", va="bottom", fontsize=8)  # fmt: skip
            if not multi:  # none is 5-60x the others: log scale, plain labels
                axis.set_yscale("log")
                axis.yaxis.set_major_formatter(
                    ticker.FuncFormatter(lambda v, _: f"{v:g}")
                )
                axis.yaxis.set_minor_formatter(ticker.NullFormatter())
            example = mine[0] if mine else {"threads": "?", "pool_size": "?"}
            axis.set_ylabel(label.format(t=example["threads"], p=example["pool_size"]))
            axis.tick_params(axis="x", labelsize=8)
            if line == 0:
                axis.set_title(TITLES[database], fontsize=9)
    figure.suptitle(
        "djpoolapp benchmark: Django WSGIHandler, one query per request "
        "(labels: ratio to persistent)\n" + subtitle,
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
