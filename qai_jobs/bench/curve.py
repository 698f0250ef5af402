"""Throughput against the number of projects: medians of runs, ``docs/benchmarks.md`` and a plot.

The plot needs matplotlib (``pip install 'qai-jobs[bench]'``); without it the page is written
with its table only.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any


def median_point(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median ratio (its figures stay one run's, consistent with each
    other), with every run's ratio beside it and the checker summed over all runs."""
    ordered = sorted(runs, key=lambda r: float(r["ratio"]))
    point = dict(ordered[(len(ordered) - 1) // 2])
    point["ratios"] = [round(float(r["ratio"]), 3) for r in runs]
    point["checker"] = {
        key: sum(int(r["checker"][key]) for r in runs) for key in runs[0]["checker"]
    }
    return point


def _plot(report: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    curve = report["curve"]
    xs = [p["projects"] for p in curve]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(xs, [p["durable"]["per_second"] for p in curve], "o-", label="qai-jobs write actions")
    ax.plot(xs, [p["baseline"]["per_second"] for p in curve], "s--", label="plain Celery no-op")
    ax.set_xscale("log")
    ax.set_xlabel("projects (FIFO keys)")
    ax.set_ylabel("per second")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title(
        f"{curve[0]['actions']} actions, concurrency {report['concurrency']}, "
        f"{report['cpus']} CPUs, median of {report['runs']}"
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


_CURVE_HEADING = "## Throughput against the number of projects"


def _fake(per: dict[str, Any]) -> str:
    fake = per.get("fake_provider_redis")
    return "included" if fake is None else f"{fake:.1f}"


def _cpu_total(per: dict[str, Any]) -> str:
    used = per.get("cpu_ms")
    return f"{used['total']:.1f}" if used else "—"


def _cpu_table(curve: list[dict[str, Any]]) -> list[str]:
    """Where the CPU time of one action goes, by process (the qai-jobs side of each point)."""
    roles = ["worker", "postgres", "redis", "fake_provider_redis", "bench"]
    if not any(p["durable"]["per_action"].get("cpu_ms") for p in curve):
        return []
    lines = [
        "",
        "CPU milliseconds per action by process, read from `/proc` around the timed window "
        "(worker: the `qai-jobs worker` and its pool processes, the fake provider's client "
        "calls included; bench: the producer thread and its completion polling); plain "
        "Celery's per task in brackets, where it has the role:",
        "",
        "| projects | " + " | ".join(roles) + " | total |",
        "|---:|" + "---:|" * (len(roles) + 1),
    ]
    for p in curve:
        used = p["durable"]["per_action"].get("cpu_ms") or {}
        base = p["baseline"]["per_task"].get("cpu_ms") or {}
        cells = [
            f"{used.get(r, float('nan')):.2f}" + (f" ({base[r]:.2f})" if r in base else "")
            for r in [*roles, "total"]
        ]
        lines.append(f"| {p['projects']} | " + " | ".join(cells) + " |")
    return lines


def _other_sections(text: str) -> str:
    """The page's ``## `` sections other than the curve's (history, notes), kept as they are."""
    kept: list[str] = []
    keep = False
    for line in text.splitlines(keepends=True):
        if line.startswith("## "):
            keep = line.strip() != _CURVE_HEADING
        if keep:
            kept.append(line)
    return ("\n" + "".join(kept)) if kept else ""


def write_docs(report: dict[str, Any], docs: Path) -> list[Path]:
    """Write ``benchmarks.md`` (and ``benchmarks.png`` when matplotlib is there) into ``docs``."""
    docs.mkdir(parents=True, exist_ok=True)
    png = docs / "benchmarks.png"
    plotted = _plot(report, png)
    curve = report["curve"]
    counts = ",".join(str(p["projects"]) for p in curve)
    command = (
        f"qai-jobs bench --actions {curve[0]['actions']} --projects {counts} "
        f"--runs {report['runs']} --concurrency {report['concurrency']}"
    )
    lines = [
        "# Benchmarks",
        "",
        _CURVE_HEADING,
        "",
        "Written by `qai-jobs bench` when `--projects` lists several counts. Each point is "
        "the median of its runs. qai-jobs runs `write` actions on the fake provider, in FIFO "
        "order per project with one at a time per project; the baseline is a plain Celery app "
        "(late acks, task events on, results ignored, default prefetch) running no-op tasks on "
        "a worker of the same concurrency; one producer thread on each side, timed from the "
        "first enqueue to the last completion. Counts are per action (per task for Celery), "
        "from `pg_stat_database`, `pg_stat_wal` (the server's) and Redis `INFO commandstats` "
        "around the run; the fake "
        "provider, a stand-in for a remote sandbox service, keeps its sandboxes on a Redis "
        "server of its own and its commands are shown apart. The checker reads every "
        "action's timestamps back from Postgres.",
        "",
        f"Command: `{command}`",
        f"Measured {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on {os.uname().nodename} "
        f"({report['cpus']} CPUs).",
        "",
    ]
    if plotted:
        lines += ["![throughput against projects](benchmarks.png)", ""]
    lines += [
        "| projects | qai-jobs actions/s | plain Celery tasks/s | ratio (runs) | "
        "Postgres commits / rollbacks / WAL syncs per action | "
        "Redis commands per action (Celery) | "
        "fake provider's Redis commands | "
        "enqueue p50 / p99 | enqueue→start p50 / p99 at half load (Celery) | "
        "CPU ms per action (Celery) | violations |",
        "|---:|---:|---:|---|---|---|---|---|---|---|---|",
    ]
    for p in curve:
        d, b = p["durable"], p["baseline"]
        per, base_per = d["per_action"], b["per_task"]
        half, bhalf = d["half_load"]["enqueue_to_start"], b["half_load"]["enqueue_to_start"]
        ratios = ", ".join(f"{r:.2f}" for r in p["ratios"])
        bad = p["checker"]["overlaps"] + p["checker"]["out_of_order"]
        lines.append(
            f"| {p['projects']} | {d['per_second']:.0f} | {b['per_second']:.0f} | "
            f"**{p['ratio']:.2f}x** ({ratios}) | {per['pg_commits']:.2f} / "
            f"{per['pg_rollbacks']:.2f} / {per.get('wal_syncs', 0):.2f} | "
            f"{per['redis_commands']:.1f} "
            f"({base_per['redis_commands']:.1f}) | {_fake(per)} | {d['enqueue']['p50_ms']:.2f} / "
            f"{d['enqueue']['p99_ms']:.2f} ms | {half['p50_ms']:.1f} / {half['p99_ms']:.1f} ms "
            f"({bhalf['p50_ms']:.1f} / {bhalf['p99_ms']:.1f}) | "
            f"{_cpu_total(per)} ({_cpu_total(base_per)}) | {bad} |"
        )
    lines += _cpu_table(curve)
    page = docs / "benchmarks.md"
    kept = _other_sections(page.read_text()) if page.exists() else ""
    page.write_text("\n".join(lines) + "\n" + kept)
    return [page, png] if plotted else [page]
