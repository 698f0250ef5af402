"""What the local sandbox's network containment costs, end to end: this checkout against one
from before the network namespace (the parent of bd61a45, "Each local sandbox runs in its own
network namespace"), on the same host, alternating so that a shared machine's load falls on
both sides alike.

    git worktree add --detach /work/wt-prenetns bd61a45^
    (cd /work/wt-prenetns && python3 -m venv .venv &&
     .venv/bin/pip install -c ../wt-cloud10/constraints.txt -e '.[dev]')
    .venv/bin/python scripts/netns_cost.py --before /work/wt-prenetns --rounds 6

Each round asks each side, in turn, for 5 `command true` round trips, 2 cold ensures with no
files and no dev server, and 2 cold ensures of a one-file node dev server (until its preview
answers 200). Prints medians per side and the ratio after/before, as JSON. ``--after`` names
another checkout instead of this one (the netns merge itself: ``5c7e68f^1`` against
``5c7e68f``, so nothing else that changed since weighs in). Both need the agent script only
from this checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]
AGENT = HERE / "scripts" / "netns_cost_agent.py"
PG = os.environ.get("QAI_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
REDIS = os.environ.get("QAI_BENCH_REDIS", "redis://127.0.0.1:6379")


class Side:
    def __init__(self, name: str, tree: Path, redis_db: int, root: Path) -> None:
        env = {
            k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "USER", "TMPDIR")
        }
        ws_root = root / name
        env.update(
            DATABASE_URL=f"{PG}/qai_netns_cost_{name}_{uuid.uuid4().hex[:6]}",
            REDIS_URL=f"{REDIS}/{redis_db}",
            WORKSPACE_ROOT=str(ws_root),
            WORKSPACE_RUNTIME="local",
            WORKSPACE_LOCAL_ISOLATION="bwrap",
            WORKSPACE_SECRET_KEY="netns-cost-bench-key",  # noqa: S106 - a throwaway bench key
            WORKSPACE_LOCAL_PORT_MIN=str(47000 + redis_db * 200),
            WORKSPACE_LOCAL_PORT_MAX=str(47199 + redis_db * 200),
            PYTHONUNBUFFERED="1",
        )
        self.name, self.samples = name, {"command": [], "cold": [], "dev": []}
        self.proc = subprocess.Popen(
            [str(tree / ".venv" / "bin" / "python"), str(AGENT)],
            cwd=tree,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} agent exited ({self.proc.wait()})")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def ask(self, verb: str, count: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{verb} {count}\n")
        self.proc.stdin.flush()
        self.samples[verb] += self._read()[verb]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("quit\n")
        self.proc.stdin.close()
        self.proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, default=HERE, help="default: this checkout")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--redis-dbs", default="14,15")
    args = parser.parse_args()
    db_before, db_after = (int(x) for x in args.redis_dbs.split(","))
    root = Path(tempfile.mkdtemp(prefix="qai-netns-cost-"))
    sides = [
        Side("before", args.before, db_before, root),
        Side("after", args.after, db_after, root),
    ]
    try:
        for n in range(args.rounds):
            order = sides if n % 2 == 0 else sides[::-1]
            for verb, count in (("command", 5), ("cold", 2), ("dev", 2)):
                for side in order:
                    side.ask(verb, count)
    finally:
        for side in sides:
            side.close()
    report: dict[str, Any] = {}
    for verb in ("command", "cold", "dev"):
        med = {s.name: statistics.median(s.samples[verb]) * 1000 for s in sides}
        report[verb] = {
            "n": len(sides[0].samples[verb]),
            "before_ms": round(med["before"], 1),
            "after_ms": round(med["after"], 1),
            "ratio": round(med["after"] / med["before"], 2),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
