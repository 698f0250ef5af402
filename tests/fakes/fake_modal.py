"""A behaving fake of the ``modal`` 1.6 SDK surface the modal adapter uses.

Same names, signatures and return types as the real SDK (App.lookup, Image.from_registry /
from_id, Sandbox.create / from_id / list, exec -> ContainerProcess with stdout.read(),
stdin.write/drain/write_eof, wait() -> -1 on timeout, filesystem.read_bytes/write_bytes,
tunnels(), snapshot_filesystem(), poll(), terminate(), get_tags/set_tags), raising the real
``modal.exception`` classes. Commands run as real subprocesses in a temp dir (see ``box``).

Faults: ``world.fail("create", exc, times=n)`` raises ``exc`` on the next n calls of an
operation; ``world.vanish(sandbox_id)`` terminates a sandbox behind the adapter's back;
``world.forget(sandbox_id)`` makes Modal not know it at all.
"""

from __future__ import annotations

import ipaddress
import queue
import shutil
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import modal
import modal.exception as exception
from modal_version import __version__

from .box import Box
from .surface import Journal, bind

MAX_BUFFER_SIZE = 2 * 1024 * 1024  # modal.io_streams.MAX_BUFFER_SIZE


class World(Journal):
    def __init__(self, base: Path, journal: Path | None = None) -> None:
        super().__init__(base, journal)
        self.apps: dict[str, FakeApp] = {}
        self.sandboxes: dict[str, _SandboxState] = {}
        self.images: dict[str, Path] = {}

    def vanish(self, sandbox_id: str) -> None:
        state = self.sandboxes[sandbox_id]
        state.box.kill_all()
        state.returncode = 137

    def forget(self, sandbox_id: str) -> None:
        self.sandboxes.pop(sandbox_id).box.remove()

    def running(self) -> list[str]:
        return [i for i, s in self.sandboxes.items() if s.returncode is None]

    def close(self) -> None:
        for state in self.sandboxes.values():
            state.box.kill_all()


@dataclass
class FakeApp:
    app_id: str
    name: str


@dataclass
class _SandboxState:
    box: Box
    app_id: str
    tags: dict[str, str]
    ports: list[int]
    workdir: str
    env: dict[str, str]
    returncode: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # modal_proto NetworkAccess, as Sandbox.create builds it: OPEN, BLOCKED or ALLOWLIST.
    network: dict[str, Any] = field(default_factory=lambda: {"type": "OPEN"})


def _network_access(block: bool, ports: list[int], cidrs: Any, domains: Any) -> dict[str, Any]:
    """What modal.sandbox._common checks and builds (modal 1.6.4)."""
    if block and ports:
        raise exception.InvalidError("Cannot specify open ports when `block_network` is enabled")
    if block:
        if cidrs is not None:
            raise exception.InvalidError(
                "`outbound_cidr_allowlist` cannot be used when `block_network` is enabled"
            )
        if domains is not None:
            raise exception.InvalidError(
                "`outbound_domain_allowlist` cannot be used when `block_network` is enabled"
            )
        return {"type": "BLOCKED"}
    if cidrs is None and domains is None:
        return {"type": "OPEN"}
    for cidr in cidrs or []:
        ipaddress.ip_network(cidr)  # the server refuses a malformed CIDR
    return {"type": "ALLOWLIST", "cidrs": list(cidrs or []), "domains": list(domains or [])}


@dataclass
class Tunnel:
    host: str
    port: int
    unencrypted_host: str = ""
    unencrypted_port: int = 0

    @property
    def url(self) -> str:
        return f"https://{self.host}" + ("" if self.port == 443 else f":{self.port}")


class _Reader:
    """StreamReader: iterate for chunks as they come, or read() the rest of the stream."""

    def __init__(self, pipe: Any, text: bool, box: Box) -> None:
        self._q: queue.Queue[bytes | None] = queue.Queue()
        self._text, self._box, self._done = text, box, False
        self._thread = threading.Thread(target=self._pump, args=(pipe,), daemon=True)
        self._thread.start()

    def _pump(self, pipe: Any) -> None:
        for chunk in iter(lambda: pipe.read1(65536), b""):
            self._q.put(chunk)
        self._q.put(None)

    def _convert(self, data: bytes) -> Any:
        data = self._box.unmap_bytes(data)
        return data.decode("utf-8", "replace") if self._text else data

    def __iter__(self) -> Iterator[Any]:
        while not self._done:
            chunk = self._q.get()
            if chunk is None:
                self._done = True
                return
            yield self._convert(chunk)

    def read(self) -> Any:
        parts = []
        while not self._done:
            chunk = self._q.get()
            if chunk is None:
                self._done = True
                break
            parts.append(chunk)
        return self._convert(b"".join(parts))


class _Writer:
    def __init__(self, pipe: Any) -> None:
        self._pipe, self._buf, self._eof = pipe, b"", False

    def write(self, data: bytes | bytearray | memoryview | str) -> None:
        if self._eof:
            raise ValueError("Stdin is closed. Cannot write to it.")
        data = data.encode() if isinstance(data, str) else bytes(data)
        if len(self._buf) + len(data) > MAX_BUFFER_SIZE:
            raise BufferError("Buffer size exceed limit. Call drain to flush the buffer.")
        self._buf += data

    def write_eof(self) -> None:
        self._eof = True

    def drain(self) -> None:
        try:
            if self._buf:
                self._pipe.write(self._buf)
                self._pipe.flush()
            self._buf = b""
            if self._eof:
                self._pipe.close()
        except (BrokenPipeError, ValueError):
            self._buf = b""


class ContainerProcess:
    def __init__(
        self,
        box: Box,
        argv: tuple[str, ...],
        workdir: str,
        env: dict[str, Any],
        timeout: int | None,
        text: bool,
    ) -> None:
        self._popen = box.popen(argv, cwd=workdir, env=env)
        self._timed_out = False
        self._timer: threading.Timer | None = None
        if timeout:
            self._timer = threading.Timer(timeout, self._expire)
            self._timer.daemon = True
            self._timer.start()
        self.stdout = _Reader(self._popen.stdout, text, box)
        self.stderr = _Reader(self._popen.stderr, text, box)
        self.stdin = _Writer(self._popen.stdin)
        self._returncode: int | None = None

    def _expire(self) -> None:
        if self._popen.poll() is None:
            self._timed_out = True
            try:
                import os
                import signal

                os.killpg(self._popen.pid, signal.SIGKILL)
            except OSError:
                pass

    def _code(self, raw: int) -> int:
        if self._timed_out:
            return -1  # the SDK swallows ExecTimeoutError and answers -1
        return 128 - raw if raw < 0 else raw

    def wait(self) -> int:
        raw = self._popen.wait()
        if self._timer:
            self._timer.cancel()
        self._returncode = self._code(raw)
        return self._returncode

    def poll(self) -> int | None:
        raw = self._popen.poll()
        if raw is None:
            return None
        self._returncode = self._code(raw)
        return self._returncode

    @property
    def returncode(self) -> int:
        if self._returncode is None:
            raise exception.InvalidError("You must call wait() before accessing the returncode.")
        return self._returncode


class SandboxFilesystem:
    def __init__(self, sb: Any) -> None:
        self._sb = sb

    def _path(self, remote_path: str) -> Path:
        if not remote_path.startswith("/"):
            raise exception.InvalidError(f"Remote path must be absolute: {remote_path}")
        state = self._sb._state()
        if state.returncode is not None:
            raise exception.NotFoundError(
                "The Sandbox is unavailable. This Sandbox may have already shut down."
            )
        return state.box.host_path(remote_path)

    def read_bytes(self, remote_path: str) -> bytes:
        self._sb._world.check("fs.read_bytes")
        path = self._path(remote_path)
        if path.is_dir():
            raise exception.SandboxFilesystemIsADirectoryError(f"{remote_path} is a directory")
        if not path.exists():
            raise exception.SandboxFilesystemNotFoundError(f"{remote_path} not found")
        return path.read_bytes()

    def read_text(self, remote_path: str) -> str:
        return self.read_bytes(remote_path).decode()

    def write_bytes(self, data: bytes | bytearray | memoryview, remote_path: str) -> None:
        self._sb._world.check("fs.write_bytes")
        path = self._path(remote_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes(data))

    def write_text(self, data: str, remote_path: str) -> None:
        self.write_bytes(data.encode(), remote_path)


class Image:
    def __init__(self, kind: str, ref: str) -> None:
        self.kind, self.ref = kind, ref
        self.object_id = ref if kind == "id" else ""

    @classmethod
    def from_registry(cls, tag: str, secret: Any = None, **kwargs: Any) -> Image:
        return cls("registry", tag)

    @classmethod
    def from_id(cls, image_id: str, client: Any = None) -> Image:
        return cls("id", image_id)  # lazy, like the SDK: an unknown id fails at use

    @classmethod
    def debian_slim(cls, python_version: str | None = None) -> Image:
        return cls("registry", "debian-slim")


def build(base: Path, journal: Path | None = None) -> Any:
    """A fresh fake ``modal`` module (as a namespace) over its own world under ``base``."""
    world = World(base, journal)

    class App:
        @staticmethod
        def lookup(
            name: str,
            *,
            client: Any = None,
            environment_name: str | None = None,
            create_if_missing: bool = False,
        ) -> FakeApp:
            world.check("App.lookup")
            if name not in world.apps:
                if not create_if_missing:
                    raise exception.NotFoundError(f"App '{name}' not found")
                world.apps[name] = FakeApp(f"ap-{uuid.uuid4().hex[:12]}", name)
            return world.apps[name]

    class Client:
        @staticmethod
        def from_credentials(token_id: str, token_secret: str) -> Any:
            return object()

    class Sandbox:
        def __init__(self, sandbox_id: str) -> None:
            self.object_id = sandbox_id
            self._world = world

        def _state(self) -> _SandboxState:
            state = world.sandboxes.get(self.object_id)
            if state is None:
                raise exception.NotFoundError(f"Sandbox {self.object_id} not found")
            return state

        @staticmethod
        def create(*args: str, **kwargs: Any) -> Sandbox:
            a = bind(modal.Sandbox.create, *args, **kwargs)  # TypeError as the real SDK's
            app, image, timeout, workdir = a["app"], a["image"], a["timeout"], a["workdir"]
            encrypted_ports, tags, env = a["encrypted_ports"], a["tags"], a["env"]
            outbound_cidr_allowlist = a["outbound_cidr_allowlist"]
            network_kwargs = {
                k: a[k]
                for k in (
                    "block_network",
                    "outbound_cidr_allowlist",
                    "outbound_domain_allowlist",
                    "cidr_allowlist",
                    "inbound_cidr_allowlist",
                )
            }
            if a["cidr_allowlist"] is not None:  # deprecated spelling, still accepted
                if outbound_cidr_allowlist is not None:
                    raise exception.InvalidError(
                        "Cannot specify both `cidr_allowlist` and `outbound_cidr_allowlist`."
                    )
                outbound_cidr_allowlist = a["cidr_allowlist"]
            world.check("Sandbox.create", ports=list(encrypted_ports), **network_kwargs)
            network = _network_access(
                a["block_network"], list(encrypted_ports), outbound_cidr_allowlist,
                a["outbound_domain_allowlist"],
            )  # fmt: skip
            if app is None:
                raise exception.InvalidError("App is required outside a Modal container")
            if timeout is None:
                raise exception.InvalidError("timeout=None requires _experimental_persistent")
            if workdir is not None and not workdir.startswith("/"):
                raise exception.InvalidError("workdir must be an absolute path")
            template = None
            if image is not None and image.kind == "id":
                if image.ref not in world.images:
                    raise exception.NotFoundError(f"Image {image.ref} not found")
                template = world.images[image.ref]
            box = Box(world.base, template)
            sandbox_id = f"sb-{uuid.uuid4().hex[:16]}"
            world.record("Sandbox.created", sandbox_id=sandbox_id, network=network)
            world.sandboxes[sandbox_id] = _SandboxState(
                box,
                app.app_id,
                dict(tags or {}),
                list(encrypted_ports),
                workdir or "/",
                {k: v for k, v in (env or {}).items() if v is not None},
                network=network,
            )
            return Sandbox(sandbox_id)

        @staticmethod
        def from_id(sandbox_id: str, client: Any = None) -> Sandbox:
            world.check("Sandbox.from_id")
            if sandbox_id not in world.sandboxes:
                raise exception.NotFoundError(f"Sandbox {sandbox_id} not found")
            return Sandbox(sandbox_id)

        @staticmethod
        def list(
            *, app_id: str | None = None, tags: dict[str, str] | None = None, client: Any = None
        ) -> Iterator[Sandbox]:
            world.check("Sandbox.list")
            for sandbox_id, state in list(world.sandboxes.items()):
                if state.returncode is not None or (app_id and state.app_id != app_id):
                    continue
                if all(state.tags.get(k) == v for k, v in (tags or {}).items()):
                    yield Sandbox(sandbox_id)

        def get_tags(self) -> dict[str, str]:
            return dict(self._state().tags)

        def set_tags(self, tags: dict[str, str], *, client: Any = None) -> None:
            self._state().tags = dict(tags)

        @property
        def returncode(self) -> int | None:
            return self._state().returncode

        def poll(self) -> int | None:
            world.check("Sandbox.poll")
            return self._state().returncode

        def terminate(self, *, wait: bool = False) -> int | None:
            world.check("Sandbox.terminate", sandbox_id=self.object_id)
            state = self._state()
            if state.returncode is None:
                state.box.kill_all()
                state.returncode = 137
            return state.returncode if wait else None

        def exec(self, *args: str, **kwargs: Any) -> ContainerProcess:
            a = bind(modal.Sandbox.exec, *args, **kwargs)
            args, workdir, env, timeout, text = (
                a["args"], a["workdir"], a["env"], a["timeout"], a["text"],
            )  # fmt: skip
            world.check("Sandbox.exec", sandbox_id=self.object_id, argv=[x[:2000] for x in args])
            state = self._state()
            if state.returncode is not None:
                raise exception.ConflictError("Sandbox already finished")
            if workdir is not None and not workdir.startswith("/"):
                raise exception.InvalidError("workdir must be an absolute path")
            if not args:
                raise exception.InvalidError("exec needs a command")
            merged = {**state.env, **{k: v for k, v in (env or {}).items() if v is not None}}
            return ContainerProcess(
                state.box, args, workdir or state.workdir, merged, timeout, text
            )

        @property
        def filesystem(self) -> SandboxFilesystem:
            return SandboxFilesystem(self)

        def tunnels(self, timeout: int = 50) -> dict[int, Tunnel]:
            world.check("Sandbox.tunnels")
            state = self._state()
            if state.returncode is not None:
                raise exception.SandboxTerminatedError("Sandbox terminated")
            tag = uuid.uuid4().hex[:6]  # a fresh host every time, as after a sandbox restart
            return {p: Tunnel(f"{self.object_id}-{p}-{tag}.modal.fake", 443) for p in state.ports}

        def snapshot_filesystem(
            self, timeout: int = 55, *, ttl: int | None = 30 * 24 * 3600
        ) -> Image:
            world.check("Sandbox.snapshot_filesystem", sandbox_id=self.object_id)
            state = self._state()
            if state.returncode is not None:
                raise exception.ConflictError("Sandbox already finished")
            image_id = f"im-{uuid.uuid4().hex[:16]}"
            target = world.base / f"image-{image_id}"
            state.box.copy_to(target)
            world.images[image_id] = target
            return Image("id", image_id)

    ns = type("FakeModalModule", (), {})()
    ns.__version__ = __version__
    ns.exception = exception
    ns.App, ns.Client, ns.Sandbox, ns.Image = App, Client, Sandbox, Image
    ns.world = world
    return ns


def cleanup(ns: Any) -> None:
    ns.world.close()
    shutil.rmtree(ns.world.base, ignore_errors=True)
