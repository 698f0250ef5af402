"""A behaving fake of the ``e2b`` 2.63 SDK surface the e2b adapter uses.

``Sandbox.create / connect / get_info / pause / kill / set_timeout / list`` work both on the
class (with a sandbox id) and on an instance, like the SDK's ``class_method_variant``;
``commands.run`` runs ``/bin/bash -l -c`` for real (60 s default timeout for the whole command
-> ``TimeoutException``; a non-zero exit raises ``CommandExitException``); ``files.write_files``
/ ``read``; ``get_host``; ``create_snapshot``; ``list`` is a paginator. Pause really stops the
sandbox's processes (SIGSTOP) and connect resumes them. Errors are the real ``e2b`` classes.

Faults: ``world.fail(op, exc, times=n)``; ``world.vanish(sandbox_id)`` kills a sandbox behind
the adapter's back (E2B then answers 404 / "was not found").
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import shutil
import signal
import subprocess
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import e2b
from e2b import (
    CommandExitException,
    CommandResult,
    FileNotFoundException,
    InvalidArgumentException,
    SandboxException,
    SandboxInfo,
    SandboxNotFoundException,
    SandboxNotRunningException,
    SandboxQuery,
    SandboxState,
    SnapshotInfo,
    TimeoutException,
)
from e2b.connection_config import ApiParams
from e2b.sandbox.sandbox_api import SandboxLifecycle, SandboxNetworkOpts, SandboxNetworkUpdate

from .box import Box
from .surface import Journal, bind, typed_keys


@dataclass
class _State:
    box: Box
    template: str
    metadata: dict[str, str]
    envs: dict[str, str]
    timeout: int | None
    state: str = "running"
    killed: bool = False
    # The egress rules as the API holds them (create's ``network``, update_network's body).
    network: dict[str, list[str]] = field(default_factory=dict)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class World(Journal):
    def __init__(self, base: Path, journal: Path | None = None) -> None:
        super().__init__(base, journal)
        self.sandboxes: dict[str, _State] = {}
        self.templates: dict[str, Path | None] = {"base": None}

    def live(self, sandbox_id: str) -> _State:
        state = self.sandboxes.get(sandbox_id)
        if state is None or state.killed:
            raise SandboxNotFoundException(f"Sandbox {sandbox_id} not found")
        return state

    def vanish(self, sandbox_id: str) -> None:
        state = self.sandboxes[sandbox_id]
        state.box.kill_all()
        state.killed = True

    def running(self) -> list[str]:
        return [i for i, s in self.sandboxes.items() if not s.killed and s.state == "running"]

    def close(self) -> None:
        for state in self.sandboxes.values():
            state.box.kill_all()


def _network_rules(network: Any) -> dict[str, list[str]]:
    """allow_out / deny_out as the API stores them (selectors may be callables of a context
    with ``all_traffic``); the API takes hostnames in allow_out only."""
    rules: dict[str, list[str]] = {}
    for key in ("allow_out", "deny_out"):
        value = (network or {}).get(key)
        if callable(value):
            value = value(SimpleNamespace(all_traffic="0.0.0.0/0", rules={}))
        if value is None:
            continue
        entries = [str(v) for v in value]
        for entry in entries:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                if key == "deny_out":
                    raise InvalidArgumentException(
                        f"deny_out takes IP addresses and CIDR blocks, not {entry!r}"
                    ) from None
        rules[key] = entries
    return rules


class _variant:
    """Like e2b's class_method_variant: ``Sandbox.kill(id)`` or ``sb.kill()``."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __get__(self, obj: Any, cls: type) -> Callable[..., Any]:
        if obj is None:
            return functools.partial(self.fn, cls)
        return functools.partial(self.fn, cls, obj.sandbox_id)


class Commands:
    def __init__(self, world: World, sandbox_id: str) -> None:
        self._world, self._id = world, sandbox_id

    def run(
        self,
        cmd: str,
        background: bool | None = None,
        envs: dict[str, str] | None = None,
        user: str | None = None,
        cwd: str | None = None,
        on_stdout: Callable[[str], None] | None = None,
        on_stderr: Callable[[str], None] | None = None,
        stdin: bool | None = None,
        timeout: float | None = 60,
        request_timeout: float | None = None,
        *,
        retain_output: bool = True,
    ) -> CommandResult[str]:
        self._world.check("commands.run", sandbox_id=self._id, cmd=cmd[:4000])
        state = self._world.sandboxes.get(self._id)
        if state is None or state.killed or state.state != "running":
            raise SandboxNotRunningException(
                f"The sandbox {self._id} was not found: it was killed or reached its timeout."
            )
        if background:
            raise NotImplementedError("the adapter does not use background commands")
        box = state.box
        proc = box.popen(
            ["/bin/bash", "-l", "-c", cmd],
            cwd=cwd or "/workspace",
            env={**state.envs, **(envs or {})},
        )
        assert proc.stdin is not None
        proc.stdin.close()
        out: list[str] = []
        err: list[str] = []

        def pump(pipe: Any, sink: list[str], cb: Callable[[str], None] | None) -> None:
            for chunk in iter(lambda: pipe.read1(65536), b""):
                text = box.unmap(chunk.decode("utf-8", "replace"))
                if retain_output:
                    sink.append(text)
                if cb:
                    cb(text)

        threads = [
            threading.Thread(target=pump, args=(proc.stdout, out, on_stdout), daemon=True),
            threading.Thread(target=pump, args=(proc.stderr, err, on_stderr), daemon=True),
        ]
        for t in threads:
            t.start()
        try:
            code = proc.wait(timeout=timeout or None)
        except subprocess.TimeoutExpired:
            import os

            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            raise TimeoutException(
                "context deadline exceeded: This error is likely due to exceeding 'timeout'"
            ) from None
        for t in threads:
            t.join()
        # Like the SDK: without retain_output the result carries no output at all.
        stdout, stderr = ("".join(out), "".join(err)) if retain_output else (None, None)
        code = 128 - code if code < 0 else code
        if code != 0:
            raise CommandExitException(stderr=stderr, stdout=stdout, exit_code=code, error=None)
        return CommandResult(stderr=stderr, stdout=stdout, exit_code=0, error=None)


class Filesystem:
    def __init__(self, world: World, sandbox_id: str) -> None:
        self._world, self._id = world, sandbox_id

    def _box(self) -> Box:
        state = self._world.sandboxes.get(self._id)
        if state is None or state.killed or state.state != "running":
            raise SandboxNotRunningException(f"The sandbox {self._id} was not found")
        return state.box

    def write_files(
        self,
        files: list[dict[str, Any]],
        user: str | None = None,
        request_timeout: float | None = None,
        **kw: Any,
    ) -> list[Any]:
        self._world.check("files.write_files")
        box = self._box()
        for entry in files:
            path = box.host_path(entry["path"])  # follows symlinks, as envd does
            path.parent.mkdir(parents=True, exist_ok=True)
            data = entry["data"]
            path.write_bytes(data.encode() if isinstance(data, str) else bytes(data))
        return [None for _ in files]

    def read(
        self,
        path: str,
        format: str = "text",
        user: str | None = None,
        request_timeout: float | None = None,
        **kw: Any,
    ) -> Any:
        self._world.check("files.read")
        host = self._box().host_path(path)
        if not host.is_file():
            raise FileNotFoundException(f"file {path} not found")
        if format == "stream":
            return _FileStream(host)
        data = host.read_bytes()
        return bytearray(data) if format == "bytes" else data.decode()


class _FileStream:
    """Like e2b's FileStreamReader: an iterator of byte chunks, and a context manager."""

    def __init__(self, path: Path) -> None:
        self._fh = open(path, "rb")  # noqa: SIM115 - closed by close() / __exit__

    def __iter__(self) -> _FileStream:
        return self

    def __next__(self) -> bytes:
        chunk = self._fh.read(65536)
        if not chunk:
            self.close()
            raise StopIteration
        return chunk

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> _FileStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Paginator:
    def __init__(self, items: list[SandboxInfo], limit: int) -> None:
        self._items, self._limit, self.has_next = items, limit, True
        self.next_token: str | None = None

    def next_items(self, **opts: Any) -> list[SandboxInfo]:
        if not self.has_next:
            raise Exception("No more items to fetch")
        page, self._items = self._items[: self._limit], self._items[self._limit :]
        self.has_next = bool(self._items)
        self.next_token = "more" if self.has_next else None
        return page


def build(base: Path, journal: Path | None = None) -> Any:
    world = World(base, journal)

    class Sandbox:
        def __init__(self, sandbox_id: str) -> None:
            self.sandbox_id = sandbox_id
            self.sandbox_domain = "e2b.fake"
            self.files = Filesystem(world, sandbox_id)
            self.commands = Commands(world, sandbox_id)

        @classmethod
        def create(cls, *args: Any, **kwargs: Any) -> Sandbox:
            a = bind(e2b.Sandbox.create, *args, **kwargs)  # TypeError as the real SDK's
            template, timeout, metadata, envs = (
                a["template"], a["timeout"], a["metadata"], a["envs"],
            )  # fmt: skip
            lifecycle, network = a["lifecycle"], a["network"]
            allow_internet_access = a["allow_internet_access"]
            typed_keys(ApiParams, a["opts"], "create's options")
            typed_keys(SandboxNetworkOpts, network, "create's network")
            typed_keys(SandboxLifecycle, lifecycle, "create's lifecycle")
            world.check(
                "Sandbox.create", network=network, allow_internet_access=allow_internet_access
            )
            rules = _network_rules(network)
            if allow_internet_access is False:  # the same as deny_out ALL_TRAFFIC
                rules["deny_out"] = sorted({*rules.get("deny_out", []), "0.0.0.0/0"})
            template = template or "base"
            if template not in world.templates:
                raise SandboxException(f"404: template '{template}' not found", status_code=404)
            if lifecycle and lifecycle.get("on_timeout") not in (None, "pause", "kill"):
                raise InvalidArgumentException("invalid lifecycle")
            sandbox_id = f"i{uuid.uuid4().hex[:19]}"
            world.record("Sandbox.created", sandbox_id=sandbox_id, network=rules)
            world.sandboxes[sandbox_id] = _State(
                Box(world.base, world.templates[template]),
                template,
                dict(metadata or {}),
                dict(envs or {}),
                timeout,
                network=rules,
            )
            return cls(sandbox_id)

        @_variant
        def update_network(cls, sandbox_id: str, *args: Any, **kwargs: Any) -> None:
            """Replaces every egress rule at once: fields left out are cleared."""
            a = bind(e2b.Sandbox.update_network, *args, **kwargs)
            network = a["network"]
            typed_keys(ApiParams, a["opts"], "update_network's options")
            typed_keys(SandboxNetworkUpdate, network, "update_network's network")
            world.check("Sandbox.update_network", sandbox_id=sandbox_id, network=network)
            state = world.sandboxes.get(sandbox_id)
            if state is None or state.killed:
                raise SandboxNotFoundException(f"Sandbox {sandbox_id} not found")
            state.network = _network_rules(network)

        @_variant
        def connect(
            cls,
            sandbox_id: str,
            timeout: int | None = None,
            logger: Any = None,
            *,
            on_resume: str = "restore",
            **opts: Any,
        ) -> Sandbox:
            world.check("Sandbox.connect")
            state = world.sandboxes.get(sandbox_id)
            if state is None or state.killed:
                raise SandboxNotFoundException(f"Paused sandbox {sandbox_id} not found")
            if state.state == "paused":
                state.box.signal_all(signal.SIGCONT)
                state.state = "running"
            return cls(sandbox_id)

        @_variant
        def get_info(cls, sandbox_id: str, **opts: Any) -> SandboxInfo:
            world.check("Sandbox.get_info")
            return _info(sandbox_id, world.live(sandbox_id))

        @_variant
        def pause(
            cls,
            sandbox_id: str,
            keep_memory: bool | None = None,
            *,
            mode: Any = None,
            strict: bool = False,
            **opts: Any,
        ) -> bool:
            world.check("Sandbox.pause")
            state = world.live(sandbox_id)
            if state.state == "paused":
                return False
            state.box.signal_all(signal.SIGSTOP)  # memory kept: processes resume on connect
            state.state = "paused"
            return True

        @_variant
        def kill(cls, sandbox_id: str, **opts: Any) -> bool:
            world.check("Sandbox.kill", sandbox_id=sandbox_id)
            state = world.sandboxes.get(sandbox_id)
            if state is None or state.killed:
                return False
            state.box.kill_all()
            state.killed = True
            return True

        @_variant
        def set_timeout(cls, sandbox_id: str, timeout: int, **opts: Any) -> None:
            world.check("Sandbox.set_timeout")
            world.live(sandbox_id).timeout = timeout

        @_variant
        def create_snapshot(
            cls, sandbox_id: str, name: str | None = None, *, mode: Any = None, **opts: Any
        ) -> SnapshotInfo:
            world.check("Sandbox.create_snapshot")
            state = world.live(sandbox_id)
            snapshot_id = f"snap-{uuid.uuid4().hex[:12]}:default"
            target = world.base / f"snapshot-{snapshot_id.replace(':', '-')}"
            state.box.copy_to(target)
            world.templates[snapshot_id] = target
            return SnapshotInfo(snapshot_id=snapshot_id, names=[])

        @classmethod
        def list(
            cls,
            query: SandboxQuery | None = None,
            limit: int | None = None,
            next_token: str | None = None,
            order: Any = None,
            **opts: Any,
        ) -> _Paginator:
            world.check("Sandbox.list")
            wanted = (query.metadata if query else None) or {}
            states = [s.value for s in (query.state or [])] if query and query.state else None
            infos = [
                _info(i, s)
                for i, s in world.sandboxes.items()
                if not s.killed
                and all(s.metadata.get(k) == v for k, v in wanted.items())
                and (states is None or s.state in states)
            ]
            return _Paginator(infos, limit or 2)  # small pages, so paging is exercised

        def get_host(self, port: int) -> str:
            return f"{port}-{self.sandbox_id}.{self.sandbox_domain}"

    ns = type("FakeE2BModule", (), {})()
    for name in dir(e2b):
        if name.endswith("Exception") or name in ("SandboxQuery", "SandboxState", "CommandResult"):
            setattr(ns, name, getattr(e2b, name))
    ns.Sandbox = Sandbox
    ns.world = world
    return ns


def _info(sandbox_id: str, state: _State) -> SandboxInfo:
    return SandboxInfo(
        sandbox_id=sandbox_id,
        sandbox_domain="e2b.fake",
        template_id=state.template,
        name=state.template,
        metadata=dict(state.metadata),
        started_at=state.started_at,
        end_at=state.started_at,
        state=SandboxState(state.state),
        cpu_count=2,
        memory_mb=1024,
        envd_version="0.2.0",
    )


def cleanup(ns: Any) -> None:
    ns.world.close()
    shutil.rmtree(ns.world.base, ignore_errors=True)
