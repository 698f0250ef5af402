"""HAProxy as the gateway's data plane: it serves running previews, Python serves the rest.

A Python proxy costs about 0.25 ms of CPU per request (two HTTP parsers, two socket pairs and
the interpreter around them), a compiled one a tenth of that. So when ``haproxy`` is installed,
``qai-jobs gateway`` runs it on the public port and keeps the aiohttp application behind it on
a private Unix socket. HAProxy looks the request's Host up in a map that the Python side fills
(through the runtime API) once it has proxied a request there itself: only plain HTTP
upstreams of running workspaces, in ``public`` mode, and never a WebSocket upgrade (its
messages count as activity, which only the Python relay sees). Everything else (an unknown
host, a sleeping or destroyed workspace, tokens, the gateway's own ``/metrics``) goes to
Python as before. An upstream that refuses or closes at once is retried on Python's socket
(``option redispatch``), which re-reads the route and wakes or restarts the preview, so a
stale map entry costs a retry, never a wrong answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

MAP_FILE = "routes.map"
ADMIN_SOCKET = "admin.sock"
APP_SOCKET = "app.sock"
# Where the fast path's retries arrive: a request there found its mapped upstream dead.
RETRY_SOCKET = "retry.sock"
FAST_BACKEND = "fast"
# The fast path's requests per host: what activity is computed from.
ACTIVITY_TABLE = FAST_BACKEND

_CONFIG = """\
global
  stats socket {dir}/{admin} mode 600 level admin
  maxconn {maxconn}
  nbthread {threads}
{log}
defaults
  mode http
  timeout connect 10s
  timeout client 75s
  timeout http-request 30s
  timeout http-keep-alive 75s
  timeout server 600s
  timeout tunnel 600s
  timeout queue 10s
  option http-keep-alive
  # Every request reaching a dev server or the Python side carries the client's address.
  option forwardfor

frontend preview
  bind {host}:{port}
  log global
  # No query (it may hold a token), no header: the same line the Python side writes.
  log-format "%ci %[var(txn.host)] %HM %HP %ST %Ta fast"
  http-request set-var(txn.host) req.hdr(host),lower
  http-request set-var(txn.upstream) var(txn.host),map({dir}/{map})
  acl mapped var(txn.upstream) -m found
  acl upgrade req.hdr(upgrade) -m found
  # The Python side writes its own access line.
  http-request set-log-level silent if !mapped or upgrade
  use_backend {fast} if mapped !upgrade
  default_backend app

backend {fast}
  balance first
  http-reuse always
  # A refused or at once closed connection (a slept or stopped dev server behind a port
  # forward) is retried once, on the Python side, which knows what to do about it.
  retries 1
  option redispatch 1
  retry-on conn-failure empty-response
  http-request disable-l7-retry unless METH_GET or METH_HEAD
  stick-table type string len 255 size 100k expire 10m store http_req_cnt
  http-request track-sc0 var(txn.host)
  http-request set-header X-Forwarded-Proto {scheme}
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-request set-dst var(txn.upstream),field(1,:)
  http-request set-dst-port var(txn.upstream),field(2,:)
  server upstream 0.0.0.0:0
  server retry {dir}/{retry}

backend app
  server app {dir}/{app}
"""


def binary() -> str | None:
    """The installed ``haproxy`` (Debian puts it in /usr/sbin, often not on a user's PATH)."""
    path = os.environ.get("PATH", os.defpath) + os.pathsep + "/usr/sbin:/usr/local/sbin"
    return shutil.which("haproxy", path=path)


def render(
    run_dir: Path, host: str, port: int, scheme: str, access_log: bool = True, maxconn: int = 4096
) -> str:
    return _CONFIG.format(
        log="  log stdout format raw local0 info\n" if access_log else "",
        dir=run_dir,
        admin=ADMIN_SOCKET,
        app=APP_SOCKET,
        retry=RETRY_SOCKET,
        map=MAP_FILE,
        fast=FAST_BACKEND,
        host=host if ":" not in host else f"[{host}]",
        port=port,
        scheme=scheme,
        maxconn=maxconn,
        threads=threads(),
    )


def threads() -> int:
    """Half the CPUs: the gateway shares its host with workers and the dev servers it fronts
    (on two CPUs a second thread only contends with them: measured slower)."""
    return max(1, (os.cpu_count() or 1) // 2)


def _maxconn() -> int:
    """What the open-file limit allows (HAProxy needs about two descriptors a connection)."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(256, min(20_000, (soft - 100) // 2))


def start(
    exe: str, run_dir: Path, host: str, port: int, scheme: str, access_log: bool
) -> subprocess.Popen[bytes]:
    """HAProxy in the foreground (``-db``), its access lines on this process's stdout."""
    (run_dir / MAP_FILE).touch()
    config = run_dir / "haproxy.cfg"
    config.write_text(render(run_dir, host, port, scheme, access_log, _maxconn()))
    return subprocess.Popen([exe, "-db", "-f", str(config)], start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGUSR1)  # soft stop: finish what is in flight
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class RuntimeAPI:
    """HAProxy's runtime API on its admin socket: one command per connection."""

    def __init__(self, socket_path: Path):
        self.path = str(socket_path)

    async def command(self, line: str) -> str:
        if "\n" in line or ";" in line:
            raise ValueError("one runtime API command at a time")
        reader, writer = await asyncio.open_unix_connection(self.path)
        try:
            writer.write(line.encode() + b"\n")
            await writer.drain()
            return (await reader.read()).decode(errors="replace")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
