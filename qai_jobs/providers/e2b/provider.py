"""The ``e2b`` provider: one E2B sandbox per workspace.

E2B pauses and resumes (``pause`` / ``connect``), so sleep keeps the same sandbox id and no
snapshot; snapshots are ``create_snapshot`` and a restore is a NEW sandbox created from the
snapshot id as its template. The sandbox ``timeout`` is its lifetime, not a request timeout:
it is kept short and extended on activity, with ``on_timeout: pause`` so a missed sweep
pauses (keeping files) instead of killing.
"""

from __future__ import annotations

import shlex
import time
import uuid
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, ClassVar

from qai_jobs.cancel import Cancel
from qai_jobs.egress import INTERNET, Egress
from qai_jobs.errors import (
    ErrorCode,
    PermanentError,
    QaiJobsError,
    SandboxGone,
    TransientError,
    not_owned,
)
from qai_jobs.providers import scripts as remote
from qai_jobs.providers.base import (
    CreateSpec,
    ExecResult,
    OutputCallback,
    Sandbox,
    SandboxStatus,
    SleepOutcome,
)
from qai_jobs.providers.cloud_egress import e2b_network
from qai_jobs.providers.e2b.sdk import E2BSdk
from qai_jobs.providers.shell import replace
from qai_jobs.sealing import seal_env, unseal_env

MAX_RUNNING_S = 24 * 3600  # Pro plan cap on one continuous run
RECYCLE_MARGIN_S = 3600
WRITE_BATCH_FILES = 200
WRITE_BATCH_BYTES = 16 * 1024 * 1024


class E2BProvider(E2BSdk):
    name: ClassVar[str] = "e2b"
    keeps_processes_asleep: ClassVar[bool] = True  # a full pause keeps memory and processes

    # -- lifecycle ---------------------------------------------------------------------------
    def _new(self, state: dict[str, Any], template: str, *, from_snapshot: bool) -> Sandbox:
        sdk = self._sdk()
        network = e2b_network(state.get("egress", INTERNET))
        try:
            with self._guard(creating=True):
                handle = sdk.Sandbox.create(
                    template=template,
                    timeout=self._lifetime(),
                    metadata=remote.tags_for(
                        state["project_id"], state["workspace_id"], self.settings.deployment_id
                    ),
                    envs=unseal_env(self.settings, state.get("env")),
                    lifecycle={"on_timeout": "pause", "auto_resume": False},
                    **({"network": network} if network is not None else {}),
                    **self._opts(),
                )
        except PermanentError as exc:
            if from_snapshot and exc.code == ErrorCode.TEMPLATE_NOT_FOUND:
                raise PermanentError(
                    f"snapshot {template} does not exist", code=ErrorCode.SNAPSHOT_NOT_FOUND
                ) from exc
            raise
        sb = Sandbox(self.name, str(handle.sandbox_id), {**state, "created_at": time.time()})
        self._keep(sb.sandbox_id, handle)
        dirs = f"{remote.WORKDIR} {remote.STATE_DIR}"
        try:
            # Templates run as a non-root user without a /workspace: make it, as root, once.
            code, _, err = self._sh(
                sb, f"mkdir -p {dirs} && chmod 0777 {dirs}", user="root", cwd="/", timeout_s=60
            )
            if code != 0:
                raise PermanentError(
                    f"cannot make {dirs} in the E2B sandbox: {err[-300:]}",
                    code=ErrorCode.PROVIDER_ERROR,
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
            "egress": self.settings.workspace_egress if spec.egress is None else spec.egress,
        }
        if spec.snapshot_id:
            return self._new(state, spec.snapshot_id, from_snapshot=True)
        return self._new(state, self._template(), from_snapshot=False)

    def adopt(self, sandbox_id: str, spec: CreateSpec) -> Sandbox:
        sb = Sandbox(self.name, sandbox_id, {})
        self._handle(sb)  # SandboxGone when E2B does not know it
        with self._guard(sandbox_id):
            info = self._sdk().Sandbox.get_info(sandbox_id, **self._opts())
        if not remote.may_adopt(
            dict(info.metadata or {}), spec.project_id, self.settings.deployment_id
        ):
            raise not_owned(sandbox_id, spec.project_id)
        sb.state.update(
            project_id=spec.project_id,
            workspace_id=spec.workspace_id,
            port=spec.port,
            # Sealed like create's: a recycle or rebuild creates the new sandbox with it.
            env=seal_env(self.settings, dict(spec.env)),
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
                # Its processes are gone, and their pids mean nothing any more.
                sb.state = {**sb.state, "processes_since": time.time()}
        self._keep(sb.sandbox_id, handle)
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
        return replace(sb, new)

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
                query=sdk.SandboxQuery(metadata=remote.own_tags(self.settings.deployment_id)),
                **self._opts(),
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
                            deployment=meta.get("deployment", ""),
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
        links = set(self._paths(sb, remote.symlinks_script()))
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

    def _read_file(self, sb: Sandbox, path: str, max_bytes: int) -> bytes | None:
        handle = self._handle(sb)
        sdk = self._sdk()
        with self._guard(sb.sandbox_id):
            try:
                # Streamed, and left after max_bytes + 1: the file may have grown since its
                # size was checked.
                with handle.files.read(remote.abs_path(path), format="stream") as stream:
                    return remote.bounded_read(stream, max_bytes)
            except sdk.FileNotFoundException:
                return None

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
        cancel: Cancel | None = None,
    ) -> ExecResult:
        limit = self.settings.workspace_max_output_bytes
        live = remote.capped(on_output, limit)
        # One byte past the limit is kept, to know it was passed: the sandbox caps each stream
        # too, but code in it can write around that cap (to its parent's descriptors).
        out = remote.Collected(limit + 1, None if live is None else partial(live, "stdout"))
        err = remote.Collected(limit + 1, None if live is None else partial(live, "stderr"))
        run_id = uuid.uuid4().hex
        # The SDK's stream timeout (60 s by default, for the whole command!) is set well past
        # the `timeout` the command runs under, as a backstop. Output is capped in the sandbox.
        cmd = shlex.join(remote.run_argv(run_id, timeout_s, limit, argv))
        unregister = (
            cancel.on_fire(lambda: self.script(sb, remote.kill_run_script(run_id), timeout_s=30))
            if cancel is not None
            else lambda: None
        )
        started = time.monotonic()
        try:
            code, _, _ = self._sh(
                sb,
                cmd,
                timeout_s=timeout_s + 15,
                envs=env,
                cwd=remote.abs_path(cwd),
                out=out,
                err=err,
            )
        except TransientError as exc:
            if exc.code != ErrorCode.PROVIDER_TIMEOUT:
                raise
            code = -1
        finally:
            unregister()
        if cancel is not None:
            cancel.check()
        elapsed = time.monotonic() - started
        timed_out = code == -1 or (code in (124, 137) and elapsed >= timeout_s - 0.5)
        # Cut first, then make safe: the limit counts the sandbox's bytes.
        stdout, t1 = remote.truncate(out.text(), limit)
        stderr, t2 = remote.truncate(err.text(), limit)
        stdout, stderr = _clean(stdout), _clean(stderr)
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

    # -- network -----------------------------------------------------------------------------
    def set_egress(self, sb: Sandbox, egress: Egress) -> None:
        """E2B changes a running sandbox's rules in place, all at once (``update_network``
        replaces them; ``{}`` clears them back to open)."""
        network = e2b_network(egress)
        if sb.state.get("egress", INTERNET) == egress:
            return
        handle = self._handle(sb)
        with self._guard(sb.sandbox_id):
            handle.update_network(network or {}, **self._opts())
        sb.state = {**sb.state, "egress": egress}

    def preview_url(self, sb: Sandbox, port: int) -> str:
        return "https://" + str(self._handle(sb).get_host(port))


def _clean(text: str) -> str:
    """The SDK's decoded output, without the NUL a JSON column cannot hold."""
    return text.replace("\x00", "\ufffd")
