"""What runs in the freshly forked, single-threaded children of the monitor.

Container: the child unshares the new namespaces, forks so that the grandchild
is PID 1 of the new PID namespace, reports the grandchild's PID and exits. The
grandchild waits on the sync pipe until the daemon has put it into its cgroups
and wired its network; only then does it build its rootfs and exec user code.
Exec: the child joins the container's cgroups and namespaces, forks so that
the grandchild lands inside the PID namespace, reports it and exits.

Any failure before exec is written as JSON to the error pipe (which is
close-on-exec: a successful exec shows up as EOF), then the process exits.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import socket
import termios
from typing import NoReturn

# Everything the child needs is imported here: after pivot_root the host's files are gone.
from coracle import rootless
from coracle.runtime import join, keeper, limits, process_security, rootfs, terminal, userns
from coracle.runtime.sealed import scrub_process_strings
from coracle.runtime import syscalls as sc
from coracle.runtime.identity import assume, resolve
from coracle.runtime.spec import Spec


class ChildFds:
    """The pipe ends a child keeps: sync (read), ready (write), error (write), stdio.

    A process with a terminal gets the terminal socket instead of stdio: it
    opens its terminal itself, in the container (see coracle.runtime.terminal)."""

    def __init__(self, sync: int, ready: int, error: int, stdin: int = -1, stdout: int = -1, stderr: int = -1,
                 terminal: int = -1) -> None:
        self.sync, self.ready, self.error = sync, ready, error
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.terminal = terminal

    def keep(self) -> set[int]:
        return {self.sync, self.ready, self.error, self.stdin, self.stdout, self.stderr, self.terminal}

    def roles(self) -> list[tuple[str, int]]:
        """(name, descriptor) of each end the child has: how they travel to a spare child."""
        return [(name, fd) for name, fd in vars(self).items() if fd >= 0]


def _close_others(keep: set[int]) -> None:
    """Drop every inherited descriptor (other containers' pipes, the monitor's sockets)."""
    low = 3
    for fd in sorted(k for k in keep if k >= 3) + [1 << 20]:
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1


def _reset_signals() -> None:
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _fail(fds: ChildFds, message: str, code: int = 127) -> NoReturn:
    try:
        os.write(fds.error, json.dumps({"error": message, "code": code}).encode())
    finally:
        os._exit(code)


def _report_pid(fds: ChildFds, pid: int) -> None:
    os.write(fds.ready, f"{pid}\n".encode())


def _wait_release(fds: ChildFds) -> None:
    """Block until the monitor says go; EOF means the start was abandoned."""
    if os.read(fds.sync, 1) != b"g":
        os._exit(1)
    os.close(fds.sync)


def _open_terminal(spec: Spec, fds: ChildFds, console: bool) -> None:
    """Open the process's terminal from the container's devpts, send the master to the monitor
    and take the slave as stdio; a container's terminal is its /dev/console too."""
    try:
        master, slave, number = terminal.open_pair()
        if spec.process.console_size:
            terminal.set_size(master, *spec.process.console_size)
        if console:
            terminal.bind_console(number)
        terminal.send_master(fds.terminal, master)
    except OSError as exc:
        _fail(fds, f"cannot open a terminal in the container: {exc}", 126 if not console else 128)
    os.close(master)
    fds.terminal = -1
    fds.stdin = fds.stdout = fds.stderr = slave


def _stdio(fds: ChildFds, tty: bool) -> None:
    if tty:
        os.setsid()
        fcntl.ioctl(fds.stdout, termios.TIOCSCTTY, 0)
    else:
        os.setsid()
    os.dup2(fds.stdin, 0)
    os.dup2(fds.stdout, 1)
    os.dup2(fds.stderr, 2)


def _exec(spec: Spec, fds: ChildFds) -> NoReturn:
    """Assume the identity, enter the working dir and replace ourselves with the program."""
    proc = spec.process
    env = {key: value for key, _, value in (e.partition("=") for e in proc.env)}
    try:
        uid, gid, groups, home = resolve(proc.user, proc.additional_groups)
    except (LookupError, ValueError) as exc:
        _fail(fds, str(exc), 126)
    env.setdefault("HOME", home or "/")
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    cwd = proc.cwd or "/"
    try:
        os.makedirs(cwd, exist_ok=True)
        os.chdir(cwd)
    except OSError as exc:
        _fail(fds, f"cannot use working directory {cwd}: {exc.strerror}", 126)
    try:
        if proc.tty:
            os.fchown(fds.stdout, uid, -1)  # the terminal is the user's, as runc hands it over
        process_security.prepare(proc)
        assume(uid, gid, groups)
        process_security.finish(proc)
    except (OSError, ValueError) as exc:
        _fail(fds, f"cannot set up process security: {exc}", 126)
    _stdio(fds, proc.tty)
    args = proc.args
    if spec.init_binary and spec.kind == "container":
        args = ["/sbin/docker-init", "--", *args]
    try:
        os.execvpe(args[0], args, env)
    except FileNotFoundError:
        _fail(fds, f'exec: "{args[0]}": executable file not found in $PATH', 127)
    except PermissionError:
        _fail(fds, f'exec: "{args[0]}": permission denied', 126)
    except OSError as exc:
        _fail(fds, f'exec: "{args[0]}": {exc.strerror}', 126)


def _seal() -> None:
    """Non-dumpable, the monitor's argv and environment blanked, the containers' descriptor limit.

    From the moment a child joins a container's namespaces until its `execve`, a
    container process must find nothing of the host in /proc/PID (environ,
    cmdline, exe, fd, mem). `execve` restores the normal dumpable state for the
    container's own program.
    """
    sc.prctl(sc.PR_SET_DUMPABLE, 0)
    scrub_process_strings()
    limits.lower_nofile_for_container()


def serve_spare(chan: socket.socket) -> NoReturn:
    """A child the monitor forks ahead of the next spawn, waiting on `chan` for it.

    Why: forking the monitor (a Python process, page tables and all) and sealing the
    child is a third of a spawn on a busy machine; a spare has done both while the
    monitor was idle. It keeps nothing of the monitor: every inherited descriptor is
    closed first thing; it holds host privileges in the monitor's own
    namespaces and cgroup exactly as a freshly forked child does, and from the spec on
    it runs the very same code. It says b"r" once it holds nothing else (see
    Monitor._fork_spare). A {"stage": [dir, ...]} message first moves it into a cgroup
    the daemon made for the next container (coracle.cgroups.spare), while nothing waits on
    it. The message it serves is {"spec", "fds": [role, ...]} with the child's pipe ends
    attached; EOF (the monitor let it go, or died) ends it.
    """
    try:
        _close_others({chan.fileno()})
        chan.send(b"r")
        _seal()
        _reset_signals()
        msg, received = keeper.recv_message(chan)
        if msg is not None and "stage" in msg:
            _enter_cgroup(msg["stage"])
            msg, received = keeper.recv_message(chan)
    except BaseException:
        os._exit(1)
    if msg is None:
        os._exit(0)
    try:
        chan.close()
        spec = Spec.from_json(msg["spec"])
        fds = ChildFds(**dict(zip(msg["fds"], received, strict=True)))
    except BaseException:
        os._exit(1)  # the monitor reads a failed start from the ready pipe's EOF
    _run(spec, fds)


def _enter_cgroup(dirs: list[str]) -> None:
    """Move this process into the cgroup `dirs`; a refusal leaves it where it was (the start then
    moves its PID 1, as for a spare never staged)."""
    me = str(os.getpid()).encode()
    for d in dirs:
        try:
            fd = os.open(os.path.join(d, "cgroup.procs"), os.O_WRONLY)
        except OSError:
            return
        try:
            os.write(fd, me)
        except OSError:
            return
        finally:
            os.close(fd)


def run_child(spec: Spec, fds: ChildFds) -> NoReturn:
    """Entry of the monitor's fresh child: nothing may escape back into the monitor's code."""
    try:
        _seal()
    except BaseException as exc:
        _fail(fds, f"container init failed: {type(exc).__name__}: {exc}", 128)
    _run(spec, fds)


def _run(spec: Spec, fds: ChildFds) -> NoReturn:
    try:
        if spec.kind == "container":
            _container_child(spec, fds)
        _exec_child(spec, fds)
    except BaseException as exc:  # report even a bug in the child, never fall back into the monitor
        _fail(fds, f"container init failed: {type(exc).__name__}: {exc}", 128)


def _container_child(spec: Spec, fds: ChildFds) -> NoReturn:
    """A new container: new namespaces, PID 1, rootfs, exec."""
    try:
        _reset_signals()
        _close_others(fds.keep())
        if spec.join_net:
            fd = os.open(spec.join_net, os.O_RDONLY)
            sc.setns(fd, sc.CLONE_NEWNET)
            os.close(fd)
        layers = userns.enter(spec.lower, [spec.upper, spec.work], spec.uid_map, spec.gid_map) if spec.uid_map else []
        flags = 0
        for ns in spec.namespaces:
            if ns != "cgroup":  # entered after the cgroup move, so the container sees its own root
                flags |= sc.NAMESPACES[ns]
        sc.unshare(flags)
        pid = os.fork()
    except OSError as exc:
        _fail(fds, f"cannot create namespaces: {exc}", 128)
    if pid:
        _report_pid(fds, pid)
        os._exit(0)
    deferred: BaseException | None = None
    try:
        root = rootfs.prepare(spec, spec.process.tty, layers)
    except BaseException as exc:  # said at the release: a start's failure is the answer to it
        deferred = exc
    try:
        _wait_release(fds)
        if deferred is not None:
            raise deferred
        # In a user namespace the cgroup filesystems cannot be mounted afresh, only
        # bound from the host, which needs the paths as seen before the cgroup namespace.
        own = rootfs.own_cgroups() if spec.uid_map or rootless.active() else {}
        if "cgroup" in spec.namespaces:
            sc.unshare(sc.CLONE_NEWCGROUP)
        rootfs.complete(root, spec, own)
        if "uts" in spec.namespaces and spec.hostname:
            sc.sethostname(spec.hostname)
    except OSError as exc:
        _fail(fds, f"cannot set up container: {exc}", 128)
    if spec.process.tty:
        _open_terminal(spec, fds, console=True)
    _exec(spec, fds)


def _exec_child(spec: Spec, fds: ChildFds) -> NoReturn:
    """`exec` in a running container: join its cgroups and namespaces, then exec."""
    try:
        _reset_signals()
        _close_others(fds.keep())
        join.enter(spec.target_pid, spec.cgroup_dirs)
        pid = os.fork()
    except OSError as exc:
        code = 126 if exc.errno != errno.ESRCH else 128
        _fail(fds, f"cannot join container: {exc}", code)
    if pid:
        _report_pid(fds, pid)
        os._exit(0)
    _wait_release(fds)
    if spec.process.tty:
        _open_terminal(spec, fds, console=False)
    _exec(spec, fds)
