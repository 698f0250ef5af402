"""What the cloud adapters (modal, e2b) share: sandbox-side shell snippets and small helpers.

Both SDKs can only run commands and move bytes, so process bookkeeping (pid files, logs, port
probes) and bulk file work (tar in, hashes out) are shell scripts run inside the sandbox. They
live here once, so the two adapters differ only in transport.
"""

from __future__ import annotations

import io
import shlex
import tarfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from qai_jobs.providers.base import Sandbox
from qai_jobs.sync import IGNORED_DIRS, is_ignored

WORKDIR = "/workspace"
# Outside the workspace so pid files and logs are neither synced, hashed nor snapshotted as source.
STATE_DIR = "/tmp/qai"  # noqa: S108 (a path inside the sandbox, not on this host)
TAG = {"qai": "1"}


def abs_path(rel: str | None) -> str:
    """The absolute sandbox path of a workspace-relative path (already validated upstream)."""
    return WORKDIR if not rel or rel == "." else f"{WORKDIR}/{rel}"


def tags_for(project_id: str, workspace_id: str, deployment: str) -> dict[str, str]:
    """What a sandbox is tagged with: ours, whose, and which deployment's (accounts may be
    shared by several deployments, whose orphan sweeps must each keep to their own)."""
    return {
        **TAG,
        "deployment": deployment,
        "project_id": project_id,
        "workspace_id": workspace_id,
    }


def may_adopt(tags: dict[str, str], project_id: str, deployment: str) -> bool:
    """Whether a sandbox with these tags may become ``project_id``'s: untagged (made outside
    qai-jobs), or already this project's in this deployment; never another's."""
    if "project_id" in tags and tags["project_id"] != project_id:
        return False
    return tags.get("deployment", deployment) == deployment


def own_tags(deployment: str) -> dict[str, str]:
    """The tags a listing filters on: this deployment's sandboxes only."""
    return {**TAG, "deployment": deployment}


def tar_bytes(files: Sequence[tuple[str, bytes]]) -> bytes:
    """An uncompressed tar of ``files`` (source trees compress well, but gzip costs CPU twice)."""
    buf = io.BytesIO()
    now = time.time()
    # Directory entries first: GNU tar then replaces a symlink standing where a parent directory
    # should be, instead of writing through it out of the workspace.
    dirs = sorted(
        {"/".join(p.split("/")[:i]) for p, _ in files for i in range(1, p.count("/") + 1)}
    )
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            info.mtime = int(now)
            tar.addfile(info)
        for path, data in files:
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mtime = int(now)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# GNU tar replaces an existing symlink instead of writing through it, which keeps a write from
# escaping the workspace through a link planted by a command.
UNTAR_SCRIPT = f"mkdir -p {WORKDIR} && tar -x --no-same-owner -m -C {WORKDIR} -f -"


def hash_script(paths: Sequence[str] | None, max_bytes: int) -> str:
    """sha256 of files, NUL-terminated ``<hex>  ./<path>`` records (``-z`` disables escaping).

    Files over ``max_bytes`` are left out (find's ``-size -<n>c`` is "fewer than n bytes"):
    hashing a 50 GB file a sandbox made would take minutes for nothing."""
    small = f"-size -{int(max_bytes) + 1}c"
    if paths is not None:
        quoted = " ".join(shlex.quote(f"./{p}") for p in paths)
        # find examines a starting point that is a symlink as the link itself: never a file.
        return (
            f"cd {WORKDIR} && {{ find {quoted} -maxdepth 0 -type f {small} -print0 "
            "2>/dev/null | xargs -0 -r sha256sum -z --; }; true"
        )
    prune = " -o ".join(f"-name {shlex.quote(d)}" for d in sorted(IGNORED_DIRS))
    return (
        f"mkdir -p {WORKDIR} && cd {WORKDIR} && "
        f"find . \\( {prune} \\) -prune -o -type f {small} -print0 | xargs -0 -r sha256sum -z --"
    )


def parse_hashes(output: bytes | str, *, filter_ignored: bool) -> dict[str, str]:
    raw = output.decode("utf-8", "surrogateescape") if isinstance(output, bytes) else output
    result: dict[str, str] = {}
    for record in raw.split("\0"):
        digest, sep, name = record.partition("  ")
        if not sep or len(digest) != 64:
            continue
        path = name.removeprefix("./")
        if filter_ignored and is_ignored(path):
            continue
        result[path] = digest
    return result


def safe_files_script(paths: Sequence[str]) -> str:
    """Print ``<size> <path>`` (NUL-separated) for those paths that are regular files really
    inside the workspace: a read is judged by the sizes before anything is read."""
    quoted = " ".join(shlex.quote(p) for p in paths)
    return (
        f"cd {WORKDIR} && for p in {quoted}; do "
        '[ -f "$p" ] && [ ! -L "$p" ] || continue; r=$(realpath -e -- "$p") || continue; '
        's=$(stat -c %s -- "$p") || continue; '
        f'case "$r" in {WORKDIR}/*) printf "%s %s\\0" "$s" "$p";; esac; done; true'
    )


def parse_sizes(records: Sequence[str]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for record in records:
        size, sep, path = record.partition(" ")
        if sep and size.isdigit():
            sizes[path] = int(size)
    return sizes


def bounded_read(chunks: Iterable[bytes], max_bytes: int) -> bytes:
    """At most ``max_bytes`` + 1 bytes of a stream: enough to tell that it holds too many."""
    out = bytearray()
    for chunk in chunks:
        out += chunk[: max_bytes + 1 - len(out)]
        if len(out) > max_bytes:
            break
    return bytes(out)


def symlinks_script() -> str:
    """Every symlink in the workspace outside ignored directories, NUL-separated, relative."""
    prune = " -o ".join(f"-name {shlex.quote(d)}" for d in sorted(IGNORED_DIRS))
    return f"mkdir -p {WORKDIR} && cd {WORKDIR} && find . \\( {prune} \\) -prune -o -type l -print0"


def parents_and_self(paths: Sequence[str]) -> set[str]:
    out: set[str] = set()
    for p in paths:
        parts = p.split("/")
        out.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    return out


def delete_script(paths: Sequence[str]) -> str:
    """Delete files, printing (NUL-separated) the ones that existed, and remove the directories
    that leaves empty (a file of the same name may be written next, as a delta sync does)."""
    quoted = " ".join(shlex.quote(p) for p in paths)
    return (
        f"cd {WORKDIR} && for p in {quoted}; do "
        'if [ -e "$p" ] || [ -L "$p" ]; then rm -f -- "$p" && printf "%s\\0" "$p"; '
        # Parameter expansion, not $(dirname): no fork per level, and names ending in a
        # newline keep it.
        "d=$p; while case $d in */*) true;; *) false;; esac; do d=${d%/*}; "
        'rmdir -- "$d" 2>/dev/null || break; done; fi; done'
    )


def chunks(items: Sequence[str], size: int = 500) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def new_proc_id() -> str:
    return uuid.uuid4().hex[:12]


def pid_file(proc_id: str) -> str:
    return f"{STATE_DIR}/{proc_id}.pid"


def log_file(proc_id: str) -> str:
    return f"{STATE_DIR}/{proc_id}.log"


def launch_script(proc_id: str) -> str:
    """Start ``$QAI_DEV_CMD`` in its own session (so a stop reaches the whole tree), detached.

    The inner shell writes its own pid (= the process group id) before exec'ing the command;
    the launcher waits for that file so the caller can read the pid right after.
    """
    pid, log = pid_file(proc_id), log_file(proc_id)
    inner = f'echo $$ > {pid}; cd {WORKDIR}; exec bash -lc "$QAI_DEV_CMD"'
    return (
        f"mkdir -p {STATE_DIR} {WORKDIR} && rm -f {pid} && "
        f"(nohup setsid bash -c {shlex.quote(inner)} > {log} 2>&1 < /dev/null &) ; "
        f"for i in $(seq 1 100); do [ -s {pid} ] && break; sleep 0.05; done; cat {pid}"
    )


def run_argv(run_id: str, timeout_s: float, max_bytes: int, argv: Sequence[str]) -> list[str]:
    """``argv`` as a command is run for a user, inside the sandbox.

    Under coreutils ``timeout``, which leads its own process group: its id is written first,
    so :func:`kill_run_script` can stop the whole tree on demand. Each stream is cut at
    ``max_bytes`` + 1 inside the sandbox (the rest is drained, so the command never blocks on a
    full pipe), so no more than that ever reaches the SDK or this worker's memory.
    """
    pid = f"{STATE_DIR}/run-{run_id}.pid"
    cap = f"{{ head -c {max_bytes + 1}; cat > /dev/null; }}"
    wrapper = (
        f"mkdir -p {STATE_DIR}; "
        f'timeout -k 5 {timeout_s:g} "$@" > >({cap}) 2> >({cap} >&2) & '
        f"echo $! > {pid}; wait $!"
    )
    return ["bash", "-c", wrapper, "qai-run", *argv]


def kill_run_script(run_id: str) -> str:
    pid = f"{STATE_DIR}/run-{run_id}.pid"
    return (
        f'p=$(cat {pid} 2>/dev/null) && [ -n "$p" ] && '
        f'{{ kill -KILL -- -"$p" 2>/dev/null; kill -KILL "$p" 2>/dev/null; }}; rm -f {pid}; true'
    )


def alive_script(pid: int) -> str:
    # Zombies count as dead: `kill -0` succeeds on them until the parent reaps.
    return (
        f"kill -0 {pid} 2>/dev/null || exit 1; "
        f"s=$(awk '{{print $3}}' /proc/{pid}/stat 2>/dev/null); [ \"$s\" != Z ]"
    )


def stop_script(pid: int) -> str:
    return (
        f"kill -TERM -- -{pid} 2>/dev/null; kill -TERM {pid} 2>/dev/null; "
        f"for i in $(seq 1 30); do kill -0 {pid} 2>/dev/null || exit 0; sleep 0.1; done; "
        f"kill -KILL -- -{pid} 2>/dev/null; kill -KILL {pid} 2>/dev/null; true"
    )


def tail_script(proc_id: str, lines: int) -> str:
    return f"tail -n {int(lines)} {log_file(proc_id)} 2>/dev/null; true"


def port_script(port: int) -> str:
    """Exit 0 when something answers HTTP on the port inside the sandbox (any status)."""
    probe = (
        f"exec 3<>/dev/tcp/127.0.0.1/{int(port)} && "
        "printf 'GET / HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -c 5 <&3"
    )
    return f"timeout 3 bash -c {shlex.quote(probe)} 2>/dev/null | grep -q HTTP"


# What a helper script of ours may print (hashes of 10,000 files are about 1 MB); a sandbox
# that makes one print more (millions of files) fails the call instead of filling the worker.
SCRIPT_OUTPUT_MAX = 64 * 1024 * 1024


class Collected:
    """One output stream of a sandbox command, kept up to ``limit`` bytes: the rest is only
    noticed (``over``), so whatever the sandbox prints, the worker holds no more than that."""

    def __init__(self, limit: int, forward: Callable[[bytes], None] | None = None) -> None:
        self.limit = limit
        self.forward = forward
        self.over = False
        self._kept = bytearray()

    def add(self, chunk: bytes) -> None:
        if self.forward is not None:
            self.forward(chunk)
        room = self.limit - len(self._kept)
        if len(chunk) > room:
            self.over = True
        if room > 0:
            self._kept += chunk[:room]

    def add_text(self, chunk: str) -> None:
        """For an SDK that hands out decoded text (E2B)."""
        self.add(chunk.encode("utf-8", "surrogateescape"))

    def data(self) -> bytes:
        return bytes(self._kept)

    def text(self) -> str:
        return self._kept.decode("utf-8", "replace")


def truncate(text: str, limit: int) -> tuple[str, bool]:
    data = text.encode("utf-8", "surrogateescape")
    if len(data) <= limit:
        return text, False
    return data[:limit].decode("utf-8", "ignore"), True


def capped(on_output: Any, limit: int) -> Any:
    """Wrap a live-output callback: at most ``limit`` bytes per stream, like the result."""
    if on_output is None:
        return None
    sent = {"stdout": 0, "stderr": 0}

    def forward(stream: str, chunk: bytes) -> None:
        room = limit - sent[stream]
        if room > 0 and chunk:
            part = chunk[:room]
            sent[stream] += len(part)
            on_output(stream, part)

    return forward


def proc_record(sb: Sandbox, proc_id: str, pid: int, command: str) -> dict[str, Any]:
    return {
        "proc_id": proc_id,
        "pid": pid,
        "command": command,
        "started_at": time.time(),
        "log": log_file(proc_id),
        # A pid only means something in the sandbox that issued it: a sandbox recreated from a
        # snapshot reuses low pids for unrelated processes.
        "sandbox_id": sb.sandbox_id,
    }


def proc_matches(sb: Sandbox, proc: Any) -> bool:
    """Whether ``proc`` was started in this sandbox since its processes last went away."""
    since = float(sb.state.get("processes_since", 0))
    return (
        bool(proc.get("pid"))
        and proc.get("sandbox_id", sb.sandbox_id) == sb.sandbox_id
        and float(proc.get("started_at", since)) >= since
    )


@dataclass(frozen=True)
class TaggedSandbox:
    """One sandbox qai-jobs created, as the provider lists it (for the orphan sweep)."""

    provider: str
    sandbox_id: str
    project_id: str
    workspace_id: str
    state: str = "running"
    deployment: str = ""


@runtime_checkable
class CloudProvider(Protocol):
    """The extra surface of the cloud adapters: listing, recycling, termination by id."""

    name: str

    def list_sandboxes(self) -> list[TaggedSandbox]: ...

    def terminate_sandbox(self, sandbox_id: str) -> bool: ...

    def needs_recycle(self, sb: Sandbox) -> bool: ...

    def recycle(self, sb: Sandbox) -> Sandbox: ...
