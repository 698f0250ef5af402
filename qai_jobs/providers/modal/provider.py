"""The ``modal`` provider: one Modal sandbox per workspace, in one app.

Modal has no pause: sleep is a filesystem snapshot (an Image) plus terminate, wake creates a
new sandbox from that image. A sandbox's lifetime is capped (24 h) and cannot be extended, so
long-lived workspaces are recycled through a snapshot before the cap (``needs_recycle`` /
``recycle``). ``idle_timeout`` is only a backstop behind qai-jobs' own idle sweep.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from qai_jobs.cancel import Cancel
from qai_jobs.egress import INTERNET, Egress
from qai_jobs.errors import (
    ErrorCode,
    PermanentError,
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
    safe_text,
)
from qai_jobs.providers.cloud_egress import modal_network
from qai_jobs.providers.modal.sdk import ModalSdk
from qai_jobs.providers.shell import replace
from qai_jobs.sealing import seal_env, unseal_env

DEFAULT_IMAGE = "node:22-bookworm"
MAX_LIFETIME_S = 24 * 3600
RECYCLE_MARGIN_S = 3600  # recycle an hour before the cap: a snapshot of a big tree takes time
SNAPSHOT_TIMEOUT_S = 300


class ModalProvider(ModalSdk):
    name: ClassVar[str] = "modal"

    # -- lifecycle ---------------------------------------------------------------------------
    def _new(self, spec_state: dict[str, Any], image_id: str | None) -> Sandbox:
        # First: a policy Modal cannot express is refused before any app or sandbox is made.
        network = modal_network(spec_state.get("egress", INTERNET))
        sdk = self._sdk()
        app, client = self._app_obj(), self._client_obj()
        ports = sorted({int(spec_state["port"]), self.settings.workspace_preview_port})
        with self._guard():
            if image_id:
                image = sdk.Image.from_id(image_id, client=client)
            else:
                image = sdk.Image.from_registry(self.settings.workspace_image or DEFAULT_IMAGE)
        idle_backstop = int(max(self.settings.inactivity_seconds * 3, 3600))
        try:
            with self._guard():
                handle = sdk.Sandbox.create(
                    "sleep",
                    "infinity",
                    app=app,
                    image=image,
                    client=client,
                    timeout=MAX_LIFETIME_S,
                    idle_timeout=idle_backstop,
                    workdir=remote.WORKDIR,
                    encrypted_ports=ports,
                    env=unseal_env(self.settings, spec_state.get("env")),
                    tags=remote.tags_for(
                        spec_state["project_id"],
                        spec_state["workspace_id"],
                        self.settings.deployment_id,
                    ),
                    **network,
                )
        except SandboxGone as exc:
            if image_id:  # NotFoundError on create from an image id: the snapshot is unknown
                raise PermanentError(
                    f"snapshot {image_id} does not exist", code=ErrorCode.SNAPSHOT_NOT_FOUND
                ) from exc
            raise PermanentError(str(exc), code=ErrorCode.TEMPLATE_NOT_FOUND) from exc
        state = {**spec_state, "created_at": time.time(), "sleeping": False, "ports": ports}
        sb = Sandbox(self.name, str(handle.object_id), state)
        self._remember(sb.sandbox_id, handle)
        return sb

    def create(self, spec: CreateSpec) -> Sandbox:
        if spec.snapshot_id and not spec.snapshot_id.startswith("im-"):
            raise PermanentError(
                f"snapshot {spec.snapshot_id} does not exist", code=ErrorCode.SNAPSHOT_NOT_FOUND
            )
        state = {
            "project_id": spec.project_id,
            "workspace_id": spec.workspace_id,
            "port": spec.port,
            # Sealed: this state is stored on the workspace row, and env values are secrets.
            "env": seal_env(self.settings, dict(spec.env)),
            "egress": self.settings.workspace_egress if spec.egress is None else spec.egress,
        }
        return self._new(state, spec.snapshot_id)

    def adopt(self, sandbox_id: str, spec: CreateSpec) -> Sandbox:
        sb = Sandbox(self.name, sandbox_id, {})
        handle = self._handle(sb)
        with self._guard(sandbox_id=sandbox_id):
            if handle.poll() is not None:
                raise SandboxGone(f"Modal sandbox {sandbox_id} has finished")
            if not remote.may_adopt(
                handle.get_tags(), spec.project_id, self.settings.deployment_id
            ):
                raise not_owned(sandbox_id, spec.project_id)
            handle.set_tags(
                remote.tags_for(spec.project_id, spec.workspace_id, self.settings.deployment_id)
            )
        # Its real age is unknown: count from now, the 24 h cap is Modal's backstop anyway.
        sb.state.update(
            project_id=spec.project_id,
            workspace_id=spec.workspace_id,
            port=spec.port,
            # Sealed like create's: this state is stored on the workspace row, and a wake
            # after sleep creates the new sandbox with it.
            env=seal_env(self.settings, dict(spec.env)),
            created_at=time.time(),
            sleeping=False,
            ports=[spec.port],
        )
        return sb

    def status(self, sb: Sandbox) -> SandboxStatus:
        if sb.state.get("sleeping"):
            return SandboxStatus.SLEEPING
        try:
            handle = self._handle(sb)
            with self._guard(sandbox_id=sb.sandbox_id):
                code = handle.poll()
        except SandboxGone:
            return SandboxStatus.GONE
        if code is not None:
            self._forget(sb.sandbox_id)
            return SandboxStatus.GONE
        return SandboxStatus.RUNNING

    def _snapshot_image(self, sb: Sandbox) -> str:
        handle = self._handle(sb)
        with self._guard(handle, sb.sandbox_id):
            image = handle.snapshot_filesystem(timeout=SNAPSHOT_TIMEOUT_S)
        return str(image.object_id)

    def sleep(self, sb: Sandbox) -> SleepOutcome:
        if sb.state.get("sleeping"):
            return SleepOutcome(sb, sb.state.get("sleep_image"))
        image_id = self._snapshot_image(sb)
        self.terminate_sandbox(sb.sandbox_id)
        sb.state = {**sb.state, "sleeping": True, "sleep_image": image_id}
        return SleepOutcome(sb, image_id)

    def wake(self, sb: Sandbox) -> Sandbox:
        if not sb.state.get("sleeping"):
            return sb
        state = {k: v for k, v in sb.state.items() if k not in ("sleeping", "sleep_image")}
        return replace(sb, self._new(state, sb.state["sleep_image"]))

    def snapshot(self, sb: Sandbox) -> str:
        return self._snapshot_image(sb)

    def restore(self, sb: Sandbox, snapshot_id: str) -> Sandbox:
        if not snapshot_id.startswith("im-"):
            raise PermanentError(
                f"snapshot {snapshot_id} does not exist", code=ErrorCode.SNAPSHOT_NOT_FOUND
            )
        state = {k: v for k, v in sb.state.items() if k not in ("sleeping", "sleep_image")}
        new = self._new(state, snapshot_id)
        if not sb.state.get("sleeping"):
            self.terminate_sandbox(sb.sandbox_id)
        return replace(sb, new)

    def destroy(self, sb: Sandbox) -> None:
        if not sb.state.get("sleeping"):
            self.terminate_sandbox(sb.sandbox_id)

    # -- recycling and the orphan sweep --------------------------------------------------------
    def needs_recycle(self, sb: Sandbox) -> bool:
        """Whether the sandbox nears Modal's lifetime cap and must move to a fresh one."""
        if sb.state.get("sleeping"):
            return False
        age = time.time() - float(sb.state.get("created_at", time.time()))
        return age >= MAX_LIFETIME_S - RECYCLE_MARGIN_S

    def recycle(self, sb: Sandbox) -> Sandbox:
        """Snapshot, start a new sandbox from it, stop the old one. Processes must be restarted."""
        image_id = self._snapshot_image(sb)
        state = {k: v for k, v in sb.state.items() if k not in ("sleeping", "sleep_image")}
        new = self._new(state, image_id)
        self.terminate_sandbox(sb.sandbox_id)
        return replace(sb, new)

    def list_sandboxes(self) -> list[remote.TaggedSandbox]:
        app, client = self._app_obj(), self._client_obj()
        found: list[remote.TaggedSandbox] = []
        with self._guard():
            for handle in self._sdk().Sandbox.list(
                app_id=app.app_id, tags=remote.own_tags(self.settings.deployment_id), client=client
            ):
                tags = handle.get_tags()
                found.append(
                    remote.TaggedSandbox(
                        self.name,
                        str(handle.object_id),
                        tags.get("project_id", ""),
                        tags.get("workspace_id", ""),
                        deployment=tags.get("deployment", ""),
                    )
                )
        return found

    def terminate_sandbox(self, sandbox_id: str) -> bool:
        """Terminate by id; False when Modal does not know it (already gone is not an error)."""
        self._forget(sandbox_id)
        try:
            with self._guard():
                handle = self._sdk().Sandbox.from_id(sandbox_id, client=self._client_obj())
                if handle.poll() is not None:
                    return False
                handle.terminate()
        except SandboxGone:
            return False
        return True

    # -- files -------------------------------------------------------------------------------
    def write_files(self, sb: Sandbox, files: Sequence[tuple[str, bytes]]) -> None:
        if not files:
            return
        # One tar through stdin instead of one filesystem call (one exec each) per file.
        code, _, err = self._exec(
            sb, remote.UNTAR_SCRIPT, stdin=remote.tar_bytes(files), timeout_s=600
        )
        if code != 0:
            raise PermanentError(
                f"writing files failed ({code}): {err.decode(errors='replace')[-300:]}",
                code=ErrorCode.PROVIDER_ERROR,
            )

    def _read_file(self, sb: Sandbox, path: str, max_bytes: int) -> bytes | None:
        # No streamed read in the SDK: the size was checked just before, and Modal refuses
        # files over its own limit (SandboxFilesystemFileTooLargeError).
        handle = self._handle(sb)
        fs_missing = self._sdk().exception.SandboxFilesystemNotFoundError
        try:
            with self._guard(handle, sb.sandbox_id):
                return bytes(handle.filesystem.read_bytes(remote.abs_path(path)))
        except PermanentError as exc:
            if not isinstance(exc.__cause__, fs_missing):
                raise
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
        handle = self._handle(sb)
        limit = self.settings.workspace_max_output_bytes
        on_output = remote.capped(on_output, limit)
        started = time.monotonic()
        run_id = uuid.uuid4().hex
        # A ContainerProcess cannot be killed: a second exec kills the group it recorded.
        unregister = (
            cancel.on_fire(lambda: self.script(sb, remote.kill_run_script(run_id), timeout_s=30))
            if cancel is not None
            else lambda: None
        )
        try:
            with self._guard(handle, sb.sandbox_id):
                proc = handle.exec(
                    *remote.run_argv(run_id, timeout_s, limit, argv),
                    workdir=remote.abs_path(cwd),
                    env=dict(env or {}),
                    timeout=math.ceil(timeout_s) + 15,  # a backstop behind `timeout`
                    text=False,
                )
                out = bytearray()
                for chunk in proc.stdout:
                    out += chunk[: limit + 1 - len(out)]
                    if on_output is not None:
                        on_output("stdout", bytes(chunk))
                err = bytearray()
                for chunk in proc.stderr:
                    err += chunk[: limit + 1 - len(err)]
                    if on_output is not None:
                        on_output("stderr", bytes(chunk))
                code = int(proc.wait())
        finally:
            unregister()
        if cancel is not None:
            cancel.check()
        elapsed = time.monotonic() - started
        timed_out = code == -1 or (code in (124, 137) and elapsed >= timeout_s - 0.5)
        # Cut first, then make safe: the limit counts the sandbox's bytes.
        stdout, t1 = safe_text(bytes(out[:limit])), len(out) > limit
        stderr, t2 = safe_text(bytes(err[:limit])), len(err) > limit
        return ExecResult(
            124 if timed_out else code, stdout, stderr, int(elapsed * 1000), timed_out, t1 or t2
        )

    def start_process(
        self, sb: Sandbox, command: str, *, env: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        proc_id = remote.new_proc_id()
        handle = self._handle(sb)
        # Detached with setsid/nohup, so it outlives this exec and this worker.
        with self._guard(handle, sb.sandbox_id):
            proc = handle.exec(
                "bash",
                "-c",
                remote.launch_script(proc_id),
                workdir=remote.WORKDIR,
                env={**dict(env or {}), "QAI_DEV_CMD": command},
                timeout=30,
                text=True,
            )
            out, code = proc.stdout.read(), proc.wait()
        pid = out.strip().splitlines()[-1] if out.strip() else ""
        if code != 0 or not pid.isdigit():
            raise TransientError("the dev server did not start in the Modal sandbox")
        return remote.proc_record(sb, proc_id, int(pid), command)

    # -- network -----------------------------------------------------------------------------
    def set_egress(self, sb: Sandbox, egress: Egress) -> None:
        """Modal fixes a sandbox's network at creation: a new policy moves the workspace to a
        new sandbox made from a snapshot of this one (its processes are restarted), as a
        recycle does. An adopted sandbox's network is unknown: taken to be Modal's open one."""
        modal_network(egress)  # refused before anything changes
        if sb.state.get("egress", INTERNET) == egress:
            return
        if sb.state.get("sleeping"):
            sb.state = {**sb.state, "egress": egress}  # wake creates it with the new policy
            return
        moved = Sandbox(sb.provider, sb.sandbox_id, {**sb.state, "egress": egress})
        replace(sb, self.recycle(moved))

    def preview_url(self, sb: Sandbox, port: int) -> str:
        handle = self._handle(sb)
        # Re-minted on every call: a tunnel URL changes whenever the sandbox is replaced.
        with self._guard(handle, sb.sandbox_id):
            tunnels = handle.tunnels()
        if port not in tunnels:
            raise PermanentError(
                f"port {port} is not exposed by this sandbox (exposed: {sorted(tunnels)})",
                code=ErrorCode.PORT_NOT_EXPOSED,
            )
        return str(tunnels[port].url)
