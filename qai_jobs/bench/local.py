"""`qai-jobs bench --scenarios local`: the local provider's figures, end to end.

A real worker with ``WORKSPACE_RUNTIME=local`` and a throwaway ``WORKSPACE_ROOT`` runs on the
bench's own database and queue; every figure is end to end (client enqueue -> ``wait`` returns):
warm and cold ``ensure`` of examples/hello, a ``command`` round trip, and delta sync of a
5,000-file tree against its cold sync.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from qai_jobs.config import Settings

Log = Callable[[str], None]
HELLO = Path(__file__).resolve().parents[1] / "examples" / "hello"
TARGETS_MS = {"warm_ensure": 50.0, "cold_ensure": 1000.0, "command_true": 40.0}
DELTA_TARGET_RATIO = 0.10
WAIT = 300.0


def _hello_files() -> dict[str, str]:
    if not HELLO.is_dir():
        raise RuntimeError(f"examples/hello not found at {HELLO}")
    return {p.name: p.read_text() for p in sorted(HELLO.iterdir()) if p.is_file()}


def _tree(count: int) -> dict[str, str]:
    # Small files in 50 directories, like a source tree with its assets.
    return {f"src/d{i % 50:02d}/file{i:05d}.txt": f"content of file {i}\n" for i in range(count)}


def _timed(fn: Callable[[], dict[str, Any]]) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def _cold_ensures(client: Any, names: list[str], log: Log) -> list[float]:
    log(f"local: cold ensure of examples/hello to a preview that answers, {len(names)} projects")
    times: list[float] = []
    files = _hello_files()
    for name in names:
        started = time.perf_counter()
        result = client.ensure(name, files=files).wait(WAIT)
        page = httpx.get(result["preview_url"], timeout=10)
        times.append(time.perf_counter() - started)
        if page.status_code != 200 or not result["created"]:
            raise RuntimeError(f"cold ensure of {name}: preview answered {page.status_code}")
    return times


def _warm_ensures(client: Any, name: str, samples: int, log: Log) -> list[float]:
    log(f"local: warm ensure with nothing changed, {samples} in a row")
    files = _hello_files()
    times: list[float] = []
    for _ in range(samples):
        elapsed, result = _timed(lambda: client.ensure(name, files=files).wait(WAIT))
        if result["files_written"] or result["installed"] or result["created"]:
            raise RuntimeError(f"warm ensure was not a no-op: {result}")
        times.append(elapsed)
    return times


def _worker_ms(client: Any, action_id: str) -> float:
    """Time the worker spent on an action (started -> finished), from its row."""
    action = client.get_action(action_id)
    started = datetime.fromisoformat(action["started_at"])
    finished = datetime.fromisoformat(action["finished_at"])
    return round((finished - started).total_seconds() * 1000, 1)


def _commands(client: Any, name: str, samples: int, log: Log) -> tuple[list[float], list[float]]:
    """Round trips, and the sandboxed process's own duration (bwrap, limits, bash)."""
    log(f"local: command `true`, {samples} round trips")
    times: list[float] = []
    in_sandbox: list[float] = []
    for _ in range(samples):
        elapsed, result = _timed(lambda: client.command(name, "true").wait(WAIT))
        if result["exit_code"] != 0:
            raise RuntimeError(f"`true` exited with {result['exit_code']}")
        times.append(elapsed)
        in_sandbox.append(result["duration_ms"] / 1000)
    return times, in_sandbox


def _delta_sync(client: Any, name: str, count: int, log: Log, rounds: int = 7) -> dict[str, Any]:
    log(f"local: delta sync, {count}-file tree cold, then one file changed, {rounds} times")
    tree = _tree(count)

    def sync(files: dict[str, str]) -> tuple[float, dict[str, Any], str]:
        # What a producer does: diff against the workspace's manifest, send what differs.
        elapsed, result = _timed(
            lambda: client.sync(name, files, timeout=WAIT, start_dev_server=False)
        )
        return elapsed, result, client.list_actions(name, limit=1)[-1]["id"]

    cold_s, cold, cold_id = sync(tree)
    if cold["files_written"] != count:
        raise RuntimeError(f"cold sync wrote {cold['files_written']} of {count} files")
    paths = list(tree)
    times: list[float] = []
    worker: list[float] = []
    for i in range(rounds):
        tree[paths[i * 101 % count]] = f"changed {i}\n"
        elapsed, delta, action_id = sync(tree)
        if delta["files_written"] != 1 or delta["files_unchanged"] != count - 1:
            raise RuntimeError(f"delta sync of one changed file did: {delta}")
        times.append(elapsed)
        worker.append(_worker_ms(client, action_id))
    delta_s = statistics.median(times)
    return {
        "files": count,
        "cold_ms": round(cold_s * 1000, 1),
        "one_changed_ms": round(delta_s * 1000, 1),
        "rounds": rounds,
        "files_written": delta["files_written"],  # of the last round; each was checked
        "ratio": round(delta_s / cold_s, 3),
        "worker_cold_ms": _worker_ms(client, cold_id),
        "worker_one_changed_ms": statistics.median(worker),
    }


def run_local_scenario(settings: Settings, n: int, log: Log) -> dict[str, Any]:
    from qai_jobs.bench.run import Worker, summarize
    from qai_jobs.celery_app import app
    from qai_jobs.client.direct import WorkspaceClient

    root = Path(tempfile.mkdtemp(prefix="qai-bench-local-"))
    queue = settings.workspace_queue
    worker = Worker(
        settings,
        2,
        queue,
        root / "worker.log",
        extra_env={"WORKSPACE_RUNTIME": "local", "WORKSPACE_ROOT": str(root / "workspaces")},
    )
    client = WorkspaceClient(settings)
    run_id = uuid.uuid4().hex[:6]
    cold_names = [f"bench-local-{run_id}-cold{i}" for i in range(5)]
    cmd_name, tree_name = f"bench-local-{run_id}-cmd", f"bench-local-{run_id}-tree"
    samples = max(20, min(200, n // 10))
    used: list[str] = []
    try:
        worker.wait_ready(app)
        used.append(cmd_name)
        client.command(cmd_name, "true").wait(WAIT)  # warm-up: imports, first connections
        used.extend(cold_names)
        cold = _cold_ensures(client, cold_names, log)
        warm = _warm_ensures(client, cold_names[0], samples, log)
        commands, in_sandbox = _commands(client, cmd_name, samples, log)
        used.append(tree_name)
        delta = _delta_sync(client, tree_name, 5000, log)
    finally:
        for name in used:
            try:
                client.destroy(name).wait(60)
            except Exception as exc:  # clean up the rest, report this one
                log(f"local: destroy {name} failed: {exc}")
        worker.stop()
        client.engine.dispose()
        shutil.rmtree(root / "workspaces", ignore_errors=True)
    figures = {
        "warm_ensure": summarize(warm),
        "cold_ensure": summarize(cold),
        "command_true": summarize(commands),
        "command_true_in_sandbox": summarize(in_sandbox),
    }
    met = {k: figures[k]["p50_ms"] < TARGETS_MS[k] for k in TARGETS_MS}
    met["delta_sync"] = delta["ratio"] < DELTA_TARGET_RATIO
    for key, value in figures.items():
        if key not in TARGETS_MS:
            continue
        log(
            f"local: {key:13s} p50 {value['p50_ms']:8.1f} ms  p99 {value['p99_ms']:8.1f} ms"
            f"  (target < {TARGETS_MS[key]:g} ms)"
        )
    log(
        f"local: delta sync {delta['files']} files: cold {delta['cold_ms']} ms, one changed "
        f"p50 {delta['one_changed_ms']} ms over {delta['rounds']}, ratio {delta['ratio']:.1%}"
        f" (target < {DELTA_TARGET_RATIO:.0%}); in the worker {delta['worker_cold_ms']} ms and "
        f"{delta['worker_one_changed_ms']} ms"
    )
    return {
        **{k: {m: round(v, 1) for m, v in f.items()} for k, f in figures.items()},
        "samples": {
            "cold_ensure": len(cold),
            "warm_ensure": len(warm),
            "command_true": len(commands),
        },
        "delta_sync": delta,
        "targets_met": met,
        "logs": str(root),
    }
