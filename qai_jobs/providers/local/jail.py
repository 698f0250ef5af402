"""The bubblewrap jail a local sandbox's processes run in: what they see of the host.

Every command and the dev server see their own workspace (writable, at /workspace), the system
read-only, a private /tmp, an /etc of their own with only what bash, node, npm and git need, and
nothing of other workspaces or the host's home; with a network namespace, only that.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from qai_jobs.errors import ErrorCode, PermanentError

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SANDBOX_HOME = "/home/qai"
# The worker's environment holds secrets (DATABASE_URL, tokens): a sandbox starts from this.
BASE_ENV = {
    "PATH": SAFE_PATH,
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "TMPDIR": "/tmp",  # noqa: S108 - the sandbox's private tmpfs
    "USER": "qai",
    # npm must not phone home for advisories/funding/updates on every install.
    "npm_config_update_notifier": "false",
    "npm_config_fund": "false",
    "npm_config_audit": "false",
}
# What a sandbox sees of the host's /etc: enough for bash, node, npm (TLS, DNS) and git, and not
# /etc/shadow, SSH host keys or service configs, which uid 0 could read even without caps.
# Files are copied into the sandbox's own read-only /etc, directories bound (see _etc).
ETC_ALLOWLIST = (
    "passwd", "group", "hosts", "hostname", "resolv.conf", "nsswitch.conf", "host.conf",
    "gai.conf", "protocols", "services", "networks", "ssl", "ca-certificates",
    "ca-certificates.conf", "pki", "crypto-policies", "alternatives", "ld.so.cache",
    "ld.so.conf", "ld.so.conf.d", "localtime", "timezone", "locale.alias", "profile",
    "profile.d", "bash.bashrc", "inputrc", "os-release", "lsb-release", "debian_version",
    "mime.types", "fonts", "terminfo", "gitconfig",
)  # fmt: skip
# Merged-/usr systems make these symlinks into /usr; older layouts have real directories.
ROOT_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# Host trees a sandbox sees unchanged at the same path: a link into them can stay a link.
SHARED_TREES = ("/usr/", "/opt/")


@dataclass
class Launch:
    """What to spawn, and the descriptors bwrap copies files from (closed once it has them)."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path | None
    fds: list[int] = field(default_factory=list)

    def release(self) -> None:
        """Close our copies of the descriptors: the child has its own once it is spawned."""
        while self.fds:
            os.close(self.fds.pop())


@dataclass(frozen=True)
class Jail:
    """How to run a command for one workspace: with bubblewrap, or directly (``none``)."""

    isolation: str
    tree: Path
    home: Path
    # The workspace's network namespace (net.py) and the resolv.conf that points into it.
    netns: Path | None = None
    resolv: Path | None = None
    # Size of each of /tmp and /var/tmp; None: bubblewrap's default, half the RAM.
    tmp_mb: int | None = None
    # Host directories shown read-only at a path inside (host path, sandbox path): the private
    # git mirror a checkout fetches from, for that one command.
    ro_binds: tuple[tuple[str, str], ...] = ()

    def command(
        self,
        argv: Sequence[str],
        cwd: str | None,
        env: Mapping[str, str],
        *,
        foreground: bool,
    ) -> Launch:
        """What to hand to Popen; the caller must spawn it or ``release()`` it."""
        if self.isolation != "bwrap":
            full = {**BASE_ENV, "HOME": str(self.home), **env}
            where = self.tree / cwd if cwd else self.tree
            if foreground and _SETPRIV:
                # What bubblewrap's --die-with-parent does below: a command dies with its
                # worker (here only the command's own process, not what it started).
                program = resolve_program(argv[0], full, where)
                argv = [_SETPRIV, "--pdeathsig", "KILL", "--", program, *argv[1:]]
            return Launch(list(argv), full, where)
        inner = {**BASE_ENV, "HOME": SANDBOX_HOME, **env}
        # bwrap joins no network namespace itself: nsenter puts it in the workspace's first.
        args = ["nsenter", f"--net={self.netns}", "--", "bwrap"] if self.netns else ["bwrap"]
        if foreground:
            # A dev server must outlive the worker; a command must not.
            args.append("--die-with-parent")
        args += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        args += ["--hostname", "sandbox", "--cap-drop", "ALL"]
        args += ["--ro-bind", "/usr", "/usr"]
        for link in ROOT_LINKS:
            if os.path.islink(link):
                args += ["--symlink", os.readlink(link), link]
            elif os.path.isdir(link):
                args += ["--ro-bind", link, link]
        if os.path.isdir("/opt"):
            args += ["--ro-bind", "/opt", "/opt"]
        args += ["--bind", str(self.tree), "/workspace", "--bind", str(self.home), SANDBOX_HOME]
        for host_path, inside in self.ro_binds:
            args += ["--ro-bind", host_path, inside]
        # Fresh tmpfs mounts: nothing of the host's /tmp is visible. Sized, as each would
        # otherwise take up to half the host's RAM (charged to the sandbox's memory cgroup).
        for tmp in ("/tmp", "/var/tmp"):  # noqa: S108
            size = ["--size", str(self.tmp_mb * 1024 * 1024)] if self.tmp_mb else []
            args += [*size, "--tmpfs", tmp]
        args += ["--proc", "/proc", "--dev", "/dev"]
        args += ["--chdir", f"/workspace/{cwd}" if cwd else "/workspace", "--clearenv"]
        etc, fds = _etc(self.resolv)
        try:
            env_fd = _env_args(inner)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        fds.append(env_fd)
        args += ["--args", str(env_fd)]
        return Launch([*args, *etc, "--", *argv], {"PATH": SAFE_PATH, "LANG": "C.UTF-8"}, None, fds)


def _env_args(env: Mapping[str, str]) -> int:
    """A descriptor holding ``--setenv KEY VALUE`` for every variable, NUL-separated, for
    bwrap's ``--args``: values are secrets, and an argv is readable by every user of the host
    (``ps``, /proc/PID/cmdline). Not bwrap's own environment either: bwrap runs on the host
    before it sandboxes anything, so a user's LD_PRELOAD must not reach it. A memfd rather
    than a pipe, so no size of environment can block the writer before bwrap reads it.
    """
    fd = os.memfd_create("qai-env", os.MFD_CLOEXEC)
    try:
        data = b"".join(
            b"--setenv\0%s\0%s\0" % (key.encode(), value.encode()) for key, value in env.items()
        )
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _etc(resolv: Path | None = None) -> tuple[list[str], list[int]]:
    """bwrap arguments for the sandbox's /etc: the allowlist on a tmpfs, read-only once filled.

    A bind mount costs bwrap two mount calls and a parse of its mount table, which grows with
    every bind: the 30-odd per-file binds of the allowlist were a third of a sandbox's start.
    So regular files are copied in from descriptors opened here (``--file``, no mount), links
    into /usr or /opt stay links, and only directories are bound. A copy is taken at start, like
    a bind of a file that the host later replaces by rename (how /etc files are updated).
    ``resolv`` replaces the host's resolv.conf (a sandbox in its own namespace has its own).
    """
    args = ["--tmpfs", "/etc"]
    dirs: list[str] = []
    fds: list[int] = []
    try:
        for name in ETC_ALLOWLIST:
            path = f"/etc/{name}"
            try:
                if name == "resolv.conf" and resolv is not None:
                    fd = os.open(resolv, os.O_RDONLY | os.O_CLOEXEC)
                    fds.append(fd)
                    args += ["--perms", "644", "--file", str(fd), path]
                    continue
                if os.path.islink(path):
                    real = os.path.realpath(path)
                    if real.startswith(SHARED_TREES):
                        args += ["--symlink", real, path]
                        continue
                info = os.stat(path)
                if stat.S_ISDIR(info.st_mode):
                    dirs += ["--ro-bind-try", path, path]
                    continue
                if not stat.S_ISREG(info.st_mode):
                    continue
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue  # absent on this host, as --ro-bind-try would skip it
            fds.append(fd)
            args += ["--perms", f"{stat.S_IMODE(os.fstat(fd).st_mode):o}", "--file", str(fd), path]
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    args += dirs
    if os.path.isdir("/etc/ssl/private"):
        args += ["--tmpfs", "/etc/ssl/private"]
    # Not recursive: the directory binds are read-only already, the private-key mask stays empty.
    args += ["--remount-ro", "/etc"]
    return args, fds


_SETPRIV = shutil.which("setpriv", path=SAFE_PATH)  # util-linux, on every Debian


def check_env(env: Mapping[str, str]) -> None:
    for key, value in env.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise PermanentError(
                f"invalid environment variable name {key!r}", code=ErrorCode.INVALID_ENV
            )


def resolve_program(program: str, env: Mapping[str, str], cwd: Path | None) -> str:
    """The program to exec, looked up as Popen would: a missing one is an error of the action,
    not exit code 127 from the confining shell that would otherwise look it up."""
    if "/" in program:
        found = shutil.which(os.path.join(cwd or "", program))
    else:
        found = shutil.which(program, path=env.get("PATH", os.defpath))
    if found is None:
        raise PermanentError(f"cannot start {program!r}: not found", code=ErrorCode.EXEC_FAILED)
    return program if "/" in program else found
