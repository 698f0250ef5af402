"""`qai-jobs bench --scenarios netns`: what a sandbox's own network namespace costs.

On a shared host the end-to-end figures of ``--scenarios local`` move by more than this cost
from one run to the next, so the two are measured here side by side in one process,
alternating sample by sample: a `true` in the bubblewrap sandbox as it runs now (nsenter into
its namespace first) against the same sandbox without it (bwrap on the host's network, as
before namespaces), and the namespace's bring-up (namespace, rules, pasta, dnsmasq), which a
cold ensure or a wake pays once, against its teardown.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qai_jobs.bench.run import summarize
from qai_jobs.config import Settings
from qai_jobs.providers.base import CreateSpec
from qai_jobs.providers.local.jail import Jail
from qai_jobs.providers.local.layout import Layout
from qai_jobs.providers.local.net import SandboxNet, _wait_port_free, net_config
from qai_jobs.providers.local.provider import LocalProvider

Log = Callable[[str], None]


class _HostNetwork(LocalProvider):
    """The same provider with bwrap on the host's network, as before namespaces."""

    def _jail(self, layout: Layout) -> Jail:
        return Jail("bwrap", layout.tree, layout.home)


def run_netns_scenario(settings: Settings, n: int, log: Log) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="qai-bench-netns-"))
    local = settings.model_copy(
        update={"workspace_root": root, "workspace_local_isolation": "bwrap"}
    )
    provider = LocalProvider(local)
    sb = provider.create(CreateSpec("bench-netns", uuid.uuid4().hex, 3000))
    layout = provider._layout(sb)
    samples = max(20, min(400, n // 5))
    log(f"netns: `true` with and without the namespace, alternating, {samples} each")
    with_ns: list[float] = []
    without: list[float] = []
    try:
        # The same sandbox through the same code but for the namespace.
        bare = _HostNetwork(local)
        provider.run(sb, ["true"])  # brings the namespace up; warms the page cache
        bare.run(sb, ["true"])
        for _ in range(samples):
            started = time.perf_counter()
            provider.run(sb, ["true"])
            with_ns.append(time.perf_counter() - started)
            started = time.perf_counter()
            bare.run(sb, ["true"])
            without.append(time.perf_counter() - started)
        cycles = max(10, samples // 10)
        log(f"netns: namespace bring-up and teardown, {cycles} times")
        net = SandboxNet(layout.base)
        cfg = net_config(local, layout.read_meta())
        ups: list[float] = []
        downs: list[float] = []
        for _ in range(cycles):
            started = time.perf_counter()
            net.down()
            downs.append(time.perf_counter() - started)
            # As a cold ensure finds it: no pasta of a moment ago still letting go of the port.
            _wait_port_free(cfg.host_address, cfg.port)
            started = time.perf_counter()
            net.up(cfg)
            ups.append(time.perf_counter() - started)
    finally:
        provider.destroy(sb)
        shutil.rmtree(root, ignore_errors=True)
    figures = {
        "command_true_netns": summarize(with_ns),
        "command_true_host_network": summarize(without),
        "netns_up": summarize(ups),
        "netns_down": summarize(downs),
    }
    added = figures["command_true_netns"]["p50_ms"] - figures["command_true_host_network"]["p50_ms"]
    ratio = statistics.median(with_ns) / statistics.median(without)
    for key, value in figures.items():
        log(f"netns: {key:26s} p50 {value['p50_ms']:7.1f} ms  p99 {value['p99_ms']:7.1f} ms")
    log(f"netns: the namespace adds {added:.1f} ms to `true` ({ratio:.2f}x)")
    return {
        **{k: {m: round(v, 2) for m, v in f.items()} for k, f in figures.items()},
        "command_true_added_ms": round(added, 2),
        "command_true_ratio": round(ratio, 3),
        "samples": {"command_true": samples, "cycles": len(ups)},
    }
