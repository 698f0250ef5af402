"""The ``e2b`` provider: one E2B sandbox per workspace.

E2B pauses and resumes (``pause`` / ``connect``), so sleep keeps the same sandbox id and no
snapshot; snapshots are ``create_snapshot`` and a restore is a NEW sandbox created from the
snapshot id as its template. The sandbox ``timeout`` is its lifetime, not a request timeout:
it is kept short and extended on activity, with ``on_timeout: pause`` so a missed sweep
pauses (keeping files) instead of killing.

The SDK is imported lazily through :func:`_sdk`, the one seam tests point at a fake.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

from qai_jobs.config import Settings
from qai_jobs.errors import (
    ConfigurationError,
    ErrorCode,
    PermanentError,
    QaiJobsError,
    SandboxGone,
    TransientError,
)
from qai_jobs.providers import shell as remote
from qai_jobs.providers.base import (
    CreateSpec,
    ExecResult,
    OutputCallback,
    Provider,
    Sandbox,
    SandboxStatus,
    SleepOutcome,
)
from qai_jobs.providers.e2b.errors import map_e2b_error
from qai_jobs.sealing import seal_env, unseal_env

DEFAULT_TEMPLATE = "base"
MAX_RUNNING_S = 24 * 3600  # Pro plan cap on one continuous run
RECYCLE_MARGIN_S = 3600
TOUCH_EVERY_S = 60.0
WRITE_BATCH_FILES = 200
WRITE_BATCH_BYTES = 16 * 1024 * 1024


def _sdk() -> Any:
    """The ``e2b`` module (tests replace this function with one returning a fake)."""
    try:
        import e2b
    except ImportError as exc:
        raise ConfigurationError(
            "the e2b provider needs the E2B SDK: pip install 'qai-jobs[e2b]'"
        ) from exc
    return e2b


class E2BProvider(Provider):
    name: ClassVar[str] = "e2b"

    def __init__(self, settings: Settings, *, sdk: Any = None) -> None:
        super().__init__(settings)
        # The SDK module; None = import the real one on first use (tests pass a fake).
        self._sdk_module = sdk
        self._lock = threading.Lock()
        # Connection cache only (sandbox id -> (handle, last set_timeout)); truth is at E2B.
        self._handles: OrderedDict[str, tuple[Any, float]] = OrderedDict()

    # -- SDK plumbing ------------------------------------------------------------------------
    def _sdk(self) -> Any:
        return self._sdk_module if self._sdk_module is not None else _sdk()

    def _opts(self) -> dict[str, Any]:
        key = self.settings.e2b_api_key
        return {"api_key": key.get_secret_value()} if key else {}

    def _template(self) -> str:
        return self.settings.e2b_template or self.settings.workspace_image or DEFAULT_TEMPLATE

    def _lifetime(self) -> int:
        # A backstop behind our idle sweep; 1 h is the longest every plan accepts.
        return int(min(max(self.settings.inactivity_seconds * 2, 600), 3600))

    @contextlib.contextmanager
    def _guard(self, sandbox_id: str | None = None, *, creating: bool = False) -> Iterator[None]:
        try:
            yield
        except QaiJobsError:
            raise
        except Exception as exc:
            secrets = list(self._opts().values())
            err = map_e2b_error(exc, self._sdk(), secrets=secrets, creating=creating)
            if sandbox_id is not None and isinstance(err, SandboxGone):
                self._forget(sandbox_id)
            raise err from exc

    def _handle(self, sb: Sandbox) -> Any:
        now = time.monotonic()
        with self._lock:
            cached = self._handles.get(sb.sandbox_id)
        if cached is None:
            # connect() would resume a paused sandbox: only wake may do that.
            with self._guard(sb.sandbox_id):
                info = self._sdk().Sandbox.get_info(sb.sandbox_id, **self._opts())
            if str(getattr(info.state, "value", info.state)) == "paused":
                raise PermanentError(
                    "the workspace is asleep: wake it first", code=ErrorCode.SANDBOX_SLEEPING
                )
            with self._guard(sb.sandbox_id):
                handle = self._sdk().Sandbox.connect(
                    sb.sandbox_id, timeout=self._lifetime(), **self._opts()
                )
            self._remember(sb.sandbox_id, handle)
            return handle
        handle, touched = cached
        if now - touched > TOUCH_EVERY_S:
            # Activity extends the lifetime (throttled: one API call a minute at most).
            with self._guard(sb.sandbox_id):
                handle.set_timeout(self._lifetime())
            self._remember(sb.sandbox_id, handle)
        return handle

    def _remember(self, sandbox_id: str, handle: Any) -> None:
        with self._lock:
            self._handles[sandbox_id] = (handle, time.monotonic())
            self._handles.move_to_end(sandbox_id)
            while len(self._handles) > 256:
                self._handles.popitem(last=False)

    def _forget(self, sandbox_id: str) -> None:
        with self._lock:
            self._handles.pop(sandbox_id, None)

    def _sh(
        self,
        sb: Sandbox,
        script: str,
        *,
        timeout_s: float = 120,
        envs: Mapping[str, str] | None = None,
        cwd: str = remote.WORKDIR,
        user: str | None = None,
        on_stdout: Any = None,
        on_stderr: Any = None,
    ) -> tuple[int, str, str]:
        """Run a script; a non-zero exit is a result here (the SDK raises it as an exception)."""
        handle = self._handle(sb)
        sdk = self._sdk()
        kwargs: dict[str, Any] = {"cwd": cwd, "envs": dict(envs or {}), "timeout": timeout_s}
        if user:
            kwargs["user"] = user
        if on_stdout is not None:
            kwargs.update(on_stdout=on_stdout, on_stderr=on_stderr)
        try:
            with self._guard(sb.sandbox_id):
                try:
                    res = handle.commands.run(script, **kwargs)
                except sdk.CommandExitException as exc:
                    return int(exc.exit_code), exc.stdout or "", exc.stderr or ""
        except SandboxGone:
            raise
        return int(res.exit_code), res.stdout or "", res.stderr or ""

    def _checked(self, sb: Sandbox, script: str, **kw: Any) -> str:
        code, out, err = self._sh(sb, script, **kw)
        if code != 0:
            raise PermanentError(
                f"sandbox helper failed ({code}): {err[-300:]}", code=ErrorCode.PROVIDER_ERROR
            )
        return out

    # -- lifecycle ---------------------------------------------------------------------------
    def _new(self, state: dict[str, Any], template: str, *, from_snapshot: bool) -> Sandbox:
        sdk = self._sdk()
        try:
            with self._guard(creating=True):
                handle = sdk.Sandbox.create(
                    template=template,
                    timeout=self._lifetime(),
                    metadata=remote.tags_for(state["project_id"], state["workspace_id"]),
                    envs=unseal_env(self.settings, state.get("env")),
                    lifecycle={"on_timeout": "pause", "auto_resume": False},
                    **self._opts(),
                )
        except PermanentError as exc:
            if from_snapshot and exc.code == ErrorCode.TEMPLATE_NOT_FOUND:
                raise PermanentError(
                    f"snapshot {template} does not exist", code=ErrorCode.SNAPSHOT_NOT_FOUND
                ) from exc
            raise
        sb = Sandbox(self.name, str(handle.sandbox_id), {**state, "created_at": time.time()})
        self._remember(sb.sandbox_id, handle)
        dirs = f"{remote.WORKDIR} {remote.STATE_DIR}"
        try:
            # Templates run as a non-root user without a /workspace: make it, as root, once.
            self._checked(
                sb,
                f"mkdir -p {dirs} && chmod 0777 {dirs}",
                user="root",
                cwd="/",
                timeout_s=60,
            )
        except QaiJobsError:
            self.terminate_sandbox(sb.sandbox_id)  # never leave a half-made sandbox billing
            raise
        return sb

    def create(self, spec: CreateSpec) -> Sandbox:
        state = {
            "project_id": spec.project_id,
            "workspace_id": spec.workspace_id,
            "port": spec.port,
            # Sealed: this state is stored on the workspace row, and env values are secrets.
            "env": seal_env(self.settings, dict(spec.env)),
            "template": self._template(),
        }
        if spec.snapshot_id:
            return self._new(state, spec.snapshot_id, from_snapshot=True)
        return self._new(state, self._template(), from_snapshot=False)

    def adopt(self, sandbox_id: str, spec: CreateSpec) -> Sandbox:
        sb = Sandbox(self.name, sandbox_id, {})
        self._handle(sb)  # SandboxGone when E2B does not know it
        sb.state.update(
            project_id=spec.project_id,
            workspace_id=spec.workspace_id,
            port=spec.port,
            env=dict(spec.env),
            created_at=time.time(),
        )
        return sb

    def status(self, sb: Sandbox) -> SandboxStatus:
        try:
            with self._guard(sb.sandbox_id):
                info = self._sdk().Sandbox.get_info(sb.sandbox_id, **self._opts())
        except SandboxGone:
            return SandboxStatus.GONE
        state = str(getattr(info.state, "value", info.state))
        return SandboxStatus.SLEEPING if state == "paused" else SandboxStatus.RUNNING

    def sleep(self, sb: Sandbox) -> SleepOutcome:
        # False means "already paused": fine. Processes survive a full pause.
        with self._guard(sb.sandbox_id):
            self._sdk().Sandbox.pause(sb.sandbox_id, **self._opts())
        self._forget(sb.sandbox_id)
        return SleepOutcome(sb, None)

    def wake(self, sb: Sandbox) -> Sandbox:
        sdk = self._sdk()
        with self._guard(sb.sandbox_id):
            try:
                handle = sdk.Sandbox.connect(
                    sb.sandbox_id, timeout=self._lifetime(), **self._opts()
                )
            except sdk.GuestUnresponsiveException:
                # Paused while its agent hung: its memory cannot come back, cold-boot from disk.
                handle = sdk.Sandbox.connect(
                    sb.sandbox_id, timeout=self._lifetime(), on_resume="reboot", **self._opts()
                )
        self._remember(sb.sandbox_id, handle)
        sb.state = {**sb.state, "created_at": time.time()}
        return sb

    def snapshot(self, sb: Sandbox) -> str:
        handle = self._handle(sb)
        with self._guard(sb.sandbox_id):
            info = handle.create_snapshot()
        return str(info.snapshot_id)

    def restore(self, sb: Sandbox, snapshot_id: str) -> Sandbox:
        new = self._new(dict(sb.state), snapshot_id, from_snapshot=True)
        self.terminate_sandbox(sb.sandbox_id)
        return _replace(sb, new)

    def destroy(self, sb: Sandbox) -> None:
        self.terminate_sandbox(sb.sandbox_id)

    # -- recycling and the orphan sweep --------------------------------------------------------
    def needs_recycle(self, sb: Sandbox) -> bool:
        age = time.time() - float(sb.state.get("created_at", time.time()))
        return age >= MAX_RUNNING_S - RECYCLE_MARGIN_S

    def recycle(self, sb: Sandbox) -> Sandbox:
        """A pause and resume restarts the running-time clock and keeps processes."""
        return self.wake(self.sleep(sb).sandbox)

    def list_sandboxes(self) -> list[remote.TaggedSandbox]:
        sdk = self._sdk()
        found: list[remote.TaggedSandbox] = []
        with self._guard():
            pages = sdk.Sandbox.list(
                query=sdk.SandboxQuery(metadata=dict(remote.TAG)), **self._opts()
            )
            while pages.has_next:
                for info in pages.next_items():
                    meta = info.metadata or {}
                    found.append(
                        remote.TaggedSandbox(
                            self.name,
                            str(info.sandbox_id),
                            meta.get("project_id", ""),
                            meta.get("workspace_id", ""),
                            str(getattr(info.state, "value", info.state)),
                        )
                    )
        return found

    def terminate_sandbox(self, sandbox_id: str) -> bool:
        """Kill by id; False when E2B does not know it (the SDK answers False, not an error)."""
        self._forget(sandbox_id)
        with self._guard():
            return bool(self._sdk().Sandbox.kill(sandbox_id, **self._opts()))

    # -- files -------------------------------------------------------------------------------
    def write_files(self, sb: Sandbox, files: Sequence[tuple[str, bytes]]) -> None:
        if not files:
            return
        # write_files follows symlinks: remove any link standing at a target or a parent first.
        links = {p for p in self._checked(sb, remote.symlinks_script()).split("\0") if p}
        doomed = {link.removeprefix("./") for link in links} & remote.parents_and_self(
            [p for p, _ in files]
        )
        if doomed:
            self._checked(sb, remote.delete_script(sorted(doomed)))
        handle = self._handle(sb)
        batch: list[dict[str, Any]] = []
        size = 0
        for path, data in files:
            batch.append({"path": remote.abs_path(path), "data": data})
            size += len(data)
            if len(batch) >= WRITE_BATCH_FILES or size >= WRITE_BATCH_BYTES:
                with self._guard(sb.sandbox_id):
                    handle.files.write_files(batch)
                batch, size = [], 0
        if batch:
            with self._guard(sb.sandbox_id):
                handle.files.write_files(batch)

    def delete_files(self, sb: Sandbox, paths: Sequence[str]) -> list[str]:
        gone: list[str] = []
        for part in remote.chunks(paths):
            gone += [p for p in self._checked(sb, remote.delete_script(part)).split("\0") if p]
        return gone

    def read_files(self, sb: Sandbox, paths: Sequence[str]) -> dict[str, bytes | None]:
        result: dict[str, bytes | None] = dict.fromkeys(paths)
        safe: list[str] = []
        for part in remote.chunks(paths):
            safe += [p for p in self._checked(sb, remote.safe_files_script(part)).split("\0") if p]
        handle = self._handle(sb)
        sdk = self._sdk()
        for path in safe:
            with self._guard(sb.sandbox_id):
                try:
                    result[path] = bytes(handle.files.read(remote.abs_path(path), format="bytes"))
                except sdk.FileNotFoundException:
                    result[path] = None
        return result

    def hashes(self, sb: Sandbox, paths: Sequence[str] | None = None) -> dict[str, str]:
        if paths is None:
            out = self._checked(sb, remote.hash_script(None), timeout_s=600)
            return remote.parse_hashes(out, filter_ignored=True)
        result: dict[str, str] = {}
        for part in remote.chunks(paths):
            out = self._checked(sb, remote.hash_script(part), timeout_s=600)
            result.update(remote.parse_hashes(out, filter_ignored=False))
        return result

    # -- processes ---------------------------------------------------------------------------
    def run(
        self,
        sb: Sandbox,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout_s: float = 300,
        on_output: OutputCallback | None = None,
    ) -> ExecResult:
        import shlex

        on_output = remote.capped(on_output, self.settings.workspace_max_output_bytes)
        out: list[str] = []
        err: list[str] = []

        def _out(chunk: str) -> None:
            out.append(chunk)
            if on_output is not None:
                on_output("stdout", chunk.encode())

        def _err(chunk: str) -> None:
            err.append(chunk)
            if on_output is not None:
                on_output("stderr", chunk.encode())

        # `timeout` signals its whole process group; the SDK's stream timeout (60 s by default,
        # for the whole command!) is set well past it as a backstop.
        cmd = shlex.join(["timeout", "-k", "5", f"{timeout_s:g}", *argv])
        started = time.monotonic()
        try:
            code, stdout, stderr = self._sh(
                sb,
                cmd,
                timeout_s=timeout_s + 15,
                envs=env,
                cwd=remote.abs_path(cwd),
                on_stdout=_out,
                on_stderr=_err,
            )
        except TransientError as exc:
            if exc.code != ErrorCode.PROVIDER_TIMEOUT:
                raise
            code, stdout, stderr = -1, "".join(out), "".join(err)
        elapsed = time.monotonic() - started
        timed_out = code == -1 or (code in (124, 137) and elapsed >= timeout_s - 0.5)
        limit = self.settings.workspace_max_output_bytes
        stdout, t1 = remote.truncate(stdout or "".join(out), limit)
        stderr, t2 = remote.truncate(stderr or "".join(err), limit)
        return ExecResult(
            124 if timed_out else code, stdout, stderr, int(elapsed * 1000), timed_out, t1 or t2
        )

    def start_process(
        self, sb: Sandbox, command: str, *, env: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        proc_id = remote.new_proc_id()
        # Detached with setsid/nohup rather than background=True: a background handle's stream is
        # bounded by the command timeout, and the server must outlive this worker anyway.
        code, out, _ = self._sh(
            sb,
            remote.launch_script(proc_id),
            envs={**dict(env or {}), "QAI_DEV_CMD": command},
            timeout_s=30,
        )
        pid = out.strip().splitlines()[-1] if out.strip() else ""
        if code != 0 or not pid.isdigit():
            raise TransientError("the dev server did not start in the E2B sandbox")
        return remote.proc_record(sb, proc_id, int(pid), command)

    def process_alive(self, sb: Sandbox, proc: Mapping[str, Any]) -> bool:
        if not remote.proc_matches(sb, proc):
            return False
        try:
            code, _, _ = self._sh(sb, remote.alive_script(int(proc["pid"])), timeout_s=30)
        except SandboxGone:
            return False
        except PermanentError as exc:
            if exc.code == ErrorCode.SANDBOX_SLEEPING:
                return False
            raise
        return code == 0

    def stop_process(self, sb: Sandbox, proc: Mapping[str, Any]) -> None:
        if remote.proc_matches(sb, proc) and self.status(sb) is SandboxStatus.RUNNING:
            with contextlib.suppress(SandboxGone):
                self._sh(sb, remote.stop_script(int(proc["pid"])), timeout_s=30)

    def read_log(self, sb: Sandbox, proc: Mapping[str, Any], tail: int) -> str:
        if not proc.get("proc_id"):
            return ""
        return self._sh(sb, remote.tail_script(str(proc["proc_id"]), tail), timeout_s=30)[1]

    # -- network -----------------------------------------------------------------------------
    def preview_url(self, sb: Sandbox, port: int) -> str:
        return "https://" + str(self._handle(sb).get_host(port))

    def port_ready(self, sb: Sandbox, port: int) -> bool:
        return self._sh(sb, remote.port_script(port), timeout_s=15)[0] == 0


def _replace(sb: Sandbox, new: Sandbox) -> Sandbox:
    """Point ``sb`` at the new sandbox in place (callers may keep the old object) and return it."""
    sb.sandbox_id, sb.state = new.sandbox_id, new.state
    return sb
