"""Confined helpers: a container's files are only ever touched by one of its own processes.

Whatever reads or writes inside a container's filesystem (cp both ways; later
export, diff, build's COPY, volume copy-up) runs in a short-lived helper that,
by the time it looks at the first file, is confined like an exec of that
container:

- running container: it joins the container's cgroups (so the device cgroup
  decides which nodes it may open) and then its user, cgroup, ipc, uts, net,
  pid and mount namespaces, and forks so that the worker is inside the PID
  namespace;
- stopped or never-started container: it makes a private mount namespace (in
  the container's user namespace when remapped), mounts the container's
  overlay there, pivots into it and detaches the old root, so nothing of the
  host stays reachable; fresh pid, net, ipc and uts namespaces come with it;
- then it keeps only the capabilities file work needs (bounding set too),
  sets no_new_privs, is non-dumpable (a container process can neither read
  its memory and environment nor open its /proc/PID/exe) and installs the
  container's seccomp filter.

Why a fresh interpreter, and why so careful about imports: a process that has
entered a container resolves every path inside it. An uncaught exception would
make Python's traceback printer open source files by their host path, honour a
`# coding:` cookie found there and import an `encodings` module from the
container's copy of the stdlib; any lazy import goes through sys.path the same
way. So the helper starts isolated (`-I -S`, no site, empty environment),
imports everything it will use (the operation's module, the codecs) before it
enters, then installs an import blocker. It never prints a traceback: every
failure, a RecursionError included, crosses back as JSON data and the process
leaves with os._exit.

Directories the operation writes outside the container (a volume being
filled by copy-up) are named in `hold`: the helper opens them on the host, as
the daemon's own directories, before it enters, and the operation gets their
descriptors as args["held"].

Protocol: the request arrives on a pipe whose fd number is argv[1] (a line
with coracle's source directory, then JSON); the helper writes one JSON line on stdout, {"answer": {...}} or {"error":
"...", "status": 4xx/5xx}, then any data the operation produces; data it
consumes comes on stdin. An operation is named "module:function" and called
as function(args, channel).
"""

from __future__ import annotations

import base64
import codecs
import errno
import importlib
import io
import json
import os
import resource
import signal
import subprocess
import sys
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO, NoReturn, cast
from collections.abc import Callable

import coracle
from coracle.errors import Conflict, InvalidParameter, NotFound, SystemError_
from coracle.runtime import capabilities, join, seccomp, userns
from coracle.runtime import syscalls as sc

# What the helper keeps: reading needs only to bypass file permissions; writing
# also needs to set owners, modes, setuid bits, device nodes and file capabilities.
READ_CAPABILITIES = ["CAP_DAC_OVERRIDE"]
WRITE_CAPABILITIES = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_MKNOD", "CAP_SETFCAP"]
_FRESH_NAMESPACES = sc.CLONE_NEWNS | sc.CLONE_NEWPID | sc.CLONE_NEWNET | sc.CLONE_NEWIPC | sc.CLONE_NEWUTS
_CODECS = ("utf-8", "ascii", "latin-1", "utf-16", "utf-32")  # looked up (and cached) before entering
_ANSWER_MAX = 1 << 20
_ERRORS = {400: InvalidParameter, 404: NotFound, 409: Conflict}
# The request (with the host paths it names) travels on a pipe, not on the command line,
# which any process of the container can read.
_BOOT = ("import sys; request = open(int(sys.argv[1]), 'rb'); sys.path.insert(0, request.readline().decode()[:-1]); "
         "from coracle.runtime.confined import helper_main; helper_main(request)")


@dataclass
class BindMount:
    """A volume or bind mount of a stopped container, to be mounted where it would be."""

    source: str
    target: str
    rw: bool = True


@dataclass
class Overlay:
    """A stopped container's filesystem: its image layers (lowest first) and its own layer."""

    lower: list[str]
    upper: str
    work: str
    mountpoint: str
    readonly_rootfs: bool = False
    mounts: list[BindMount] = field(default_factory=list)
    # "merged": the helper's root is the container's filesystem; "layers": its root holds
    # /upper (the container's own layer as stored), /lower (the image) and /merged, all
    # read-only, for comparing them (docker diff).
    view: str = "merged"


@dataclass
class Confinement:
    """Where a helper runs: in the running container `pid`, or over `overlay` when stopped."""

    writable: bool
    pid: int = 0
    start_ticks: int | None = None  # of `pid`: a PID reused by another process is refused
    cgroup_dirs: list[str] = field(default_factory=list)
    overlay: Overlay | None = None
    uid_map: list[list[int]] = field(default_factory=list)  # a stopped container's user namespace
    gid_map: list[list[int]] = field(default_factory=list)
    seccomp_bpf: bytes = b""  # the container's filter compiled for `capabilities`; empty: none

    @property
    def capabilities(self) -> list[str]:
        return WRITE_CAPABILITIES if self.writable else READ_CAPABILITIES

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["seccomp_bpf"] = base64.b64encode(self.seccomp_bpf).decode()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Confinement:
        data = dict(data, seccomp_bpf=base64.b64decode(data["seccomp_bpf"]))
        if data["overlay"] is not None:
            ov = dict(data["overlay"])
            ov["mounts"] = [BindMount(**m) for m in ov["mounts"]]
            data["overlay"] = Overlay(**ov)
        return cls(**data)


class Refused(Exception):
    """Raised by an operation for a clear error with Docker's HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# ----- the daemon's side ------------------------------------------------------


class Helper:
    """A helper that has answered; `stdout` carries whatever data follows the answer."""

    def __init__(self, proc: subprocess.Popen[bytes], answer: dict[str, Any]) -> None:
        self.proc, self.answer = proc, answer

    @property
    def stdout(self) -> io.BufferedReader:
        return _output(self.proc)

    def close(self) -> int:
        """Reap the helper; one still working (its reader gave up) is killed, with its worker."""
        self.stdout.close()
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait()


def _output(proc: subprocess.Popen[bytes]) -> io.BufferedReader:
    """The helper's stdout: Popen(stdout=PIPE) with default buffering always makes it a BufferedReader."""
    return cast(io.BufferedReader, proc.stdout)


def start(confinement: Confinement, operation: str, args: dict[str, Any],
          stdin: BinaryIO | None = None, hold: list[str] | None = None) -> Helper:
    """Launch a helper for `operation` and wait for its answer; an error answer is raised
    as the matching CoracleError, so a helper that is returned has succeeded so far."""
    src = os.path.dirname(os.path.dirname(os.path.abspath(coracle.__file__)))
    request = src.encode() + b"\n" + json.dumps(
        {"confinement": confinement.to_json(), "operation": operation, "args": args, "hold": hold or []}).encode()
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _BOOT, str(read_end)],
            stdin=stdin if stdin is not None else subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, pass_fds=(read_end,), env={}, cwd="/")
    finally:
        os.close(read_end)
    try:
        with open(write_end, "wb") as pipe:
            pipe.write(request)
    except BrokenPipeError:
        pass  # the helper died early: its exit status tells below
    out = _output(proc)
    line = out.readline(_ANSWER_MAX)
    try:
        reply = json.loads(line) if line else None
    except ValueError:
        reply = None
    if not isinstance(reply, dict) or not ("answer" in reply or "error" in reply):
        proc.kill()
        code = proc.wait()
        out.close()
        raise SystemError_(f"the container file helper failed without an answer (exit status {code})")
    if "error" in reply:
        out.close()
        proc.wait()
        raise _ERRORS.get(reply.get("status", 0), SystemError_)(str(reply["error"]))
    return Helper(proc, reply["answer"])


def run(confinement: Confinement, operation: str, args: dict[str, Any],
        stdin: BinaryIO | None = None, hold: list[str] | None = None) -> dict[str, Any]:
    """An operation that answers once and produces no data: its answer."""
    helper = start(confinement, operation, args, stdin, hold)
    helper.close()
    return helper.answer


# ----- the helper's side ------------------------------------------------------


class Channel:
    """The operation's pipes: one answer line, then data out (stdout) or in (stdin)."""

    def __init__(self) -> None:
        self.input: BinaryIO = open(0, "rb", closefd=False)  # noqa: SIM115  (the channel's own pipes)
        self.output: BinaryIO = open(1, "wb", closefd=False)  # noqa: SIM115
        self.answered = False

    def answer(self, data: dict[str, Any]) -> None:
        self._line({"answer": data})

    def fail(self, status: int, message: str) -> None:
        self._line({"error": message, "status": status})

    def _line(self, data: dict[str, Any]) -> None:
        if self.answered:
            return  # data already follows the answer: the truncated stream is the error
        self.answered = True
        self.output.write(json.dumps(data).encode() + b"\n")
        self.output.flush()


class _ImportBlocker:
    """First on sys.meta_path once inside: any import would resolve in the container's files."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> None:
        raise ImportError(f"no module may be imported inside a container (wanted {name})")


def _quiet(*_: object) -> None:
    """sys.excepthook / unraisablehook: print nothing, open no source file."""


def helper_main(pipe: BinaryIO) -> NoReturn:
    """Entry of the helper interpreter, `pipe` at the request (see the module docstring)."""
    sys.excepthook = _quiet
    sys.unraisablehook = _quiet
    warnings.simplefilter("ignore")  # showing a warning would read its source line from the container
    channel = None
    try:
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
        channel = Channel()
        with pipe:
            request = json.loads(pipe.read())
        confinement = Confinement.from_json(request["confinement"])
        module, _, name = request["operation"].partition(":")
        operation: Callable[[dict[str, Any], Channel], dict[str, Any] | None] = getattr(
            importlib.import_module(module), name)
        for codec in _CODECS:
            codecs.lookup(codec)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        if request["hold"]:
            request["args"]["held"] = [os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
                                       for path in request["hold"]]
        _enter(confinement)
        _confine(confinement)
        _block_imports()
        result = operation(request["args"], channel)
        channel.answer(result or {})
        channel.output.flush()
    except BaseException as exc:  # every failure is data; a traceback would read the container's files
        _report(channel, exc)
        os._exit(1)
    os._exit(0)


def _report(channel: Channel | None, exc: BaseException) -> None:
    try:
        if channel is None:
            return
        if isinstance(exc, Refused):
            channel.fail(exc.status, str(exc))
        elif isinstance(exc, OSError) and exc.errno == errno.EROFS:
            channel.fail(400, "container rootfs is marked read-only")
        elif isinstance(exc, OSError) and exc.errno in (errno.ENOTDIR, errno.EISDIR, errno.ENOTEMPTY,
                                                        errno.ENAMETOOLONG, errno.ELOOP):
            channel.fail(400, str(exc))
        else:
            channel.fail(500, f"{type(exc).__name__}: {exc}")
    except BaseException:
        pass


def _enter(c: Confinement) -> None:
    """Become a process of the container (returns in the forked worker only)."""
    if c.pid:
        _join(c)
    else:
        _mount_overlay(c)
    pid = os.fork()
    if pid:  # outside the PID namespace: only wait for the worker and pass on its status
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        os._exit(code if code >= 0 else 1)
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)  # killing the helper kills its worker


def _join(c: Confinement) -> None:
    """A running container: entered as an exec enters it (runtime/join.py)."""
    try:
        join.enter(c.pid, c.cgroup_dirs, c.start_ticks)
    except join.Gone:
        raise Refused(409, "the container is not running") from None


def _mount_overlay(c: Confinement) -> None:
    """A stopped container: its overlay in namespaces of our own, then nothing else."""
    from coracle.runtime import rootfs  # only this path needs it (and the cgroups code it brings): still on the host

    ov = c.overlay
    assert ov is not None
    layers = userns.enter(ov.lower, [ov.upper, ov.work] if c.writable else [], c.uid_map, c.gid_map) \
        if c.uid_map else []
    sc.unshare(_FRESH_NAMESPACES)
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    root = ov.mountpoint
    lower = ":".join(reversed(rootfs.stage_layers(root, layers) if layers else ov.lower))
    if ov.view == "layers":
        _mount_layers(ov, root, lower, bool(layers), rootfs.remount_readonly)
    elif c.writable:
        sc.mount("overlay", root, "overlay", sc.MS_RDONLY if ov.readonly_rootfs else 0,
                 f"lowerdir={lower},upperdir={ov.upper},workdir={ov.work}")
    else:  # the container's own layer as the top lower one: whiteouts apply, nothing can change
        sc.mount("overlay", root, "overlay", sc.MS_RDONLY, f"lowerdir={ov.upper}:{lower}")
    top = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for m in ov.mounts:
            _bind(top, m, c.writable, rootfs.remount_readonly)
        os.fchdir(top)
    finally:
        os.close(top)
    sc.pivot_root(".", ".")
    sc.umount2(".", sc.MNT_DETACH)
    os.chdir("/")


def _mount_layers(ov: Overlay, root: str, lower: str, staged: bool,
                  remount_readonly: Callable[..., None]) -> None:
    """The "layers" view: a private tmpfs at `root` (the staging one when the layers were
    staged there) with the upper dir, the image alone and the merged view, all read-only."""
    if not staged:
        sc.mount("tmpfs", root, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=700")
    for name in ("upper", "lower", "merged"):
        os.mkdir(os.path.join(root, name), 0o700)
    sc.mount(ov.upper, f"{root}/upper", None, sc.MS_BIND)
    remount_readonly(f"{root}/upper")
    if ":" in lower:
        sc.mount("overlay", f"{root}/lower", "overlay", sc.MS_RDONLY, f"lowerdir={lower}")
    else:  # an overlay needs two layers when it has no upper dir
        sc.mount(lower, f"{root}/lower", None, sc.MS_BIND)
        remount_readonly(f"{root}/lower")
    sc.mount("overlay", f"{root}/merged", "overlay", sc.MS_RDONLY, f"lowerdir={ov.upper}:{lower}")
    sc.mount(None, root, None, sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV)


def _bind(top: int, m: BindMount, writable: bool, remount_readonly: Callable[..., None]) -> None:
    """Mount a volume where the container would see it, resolved inside its root by fd."""
    resolve = sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS
    try:
        target = sc.openat2(top, m.target, os.O_PATH, resolve)
    except (FileNotFoundError, NotADirectoryError):
        return  # the container made no mount point: nothing to copy through
    try:
        if os.path.isdir(m.source) != os.path.isdir(f"/proc/self/fd/{target}"):
            return
        sc.mount(m.source, f"/proc/self/fd/{target}", None, sc.MS_BIND | sc.MS_REC)
    finally:
        os.close(target)
    if not m.rw or not writable:
        mounted = sc.openat2(top, m.target, os.O_PATH, resolve)
        try:
            remount_readonly(f"/proc/self/fd/{mounted}", recursive=True)
        finally:
            os.close(mounted)


def _confine(c: Confinement) -> None:
    """Inside: fewest capabilities, no_new_privs, non-dumpable, the container's seccomp filter."""
    os.umask(0)  # modes come from the archive, exactly
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a deep tree holds one fd per level
    capabilities.limit_bounding(c.capabilities)
    sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
    capabilities.set_process(c.capabilities)
    sc.prctl(sc.PR_SET_DUMPABLE, 0)  # again: an identity change may have reset it
    if c.seccomp_bpf:
        seccomp.install(c.seccomp_bpf)


def _block_imports() -> None:
    sys.meta_path.insert(0, _ImportBlocker)
    sys.path.clear()
    sys.path_hooks.clear()
    sys.path_importer_cache.clear()
