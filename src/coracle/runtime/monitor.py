"""The monitor: one supervisor process for every container on the host.

Why it exists: the API daemon must be free to stop, crash or be upgraded
without touching running containers, and must never block on a container's
output. So the daemon never parents containers: the monitor forks every
container (and every exec) and owns their stdio: it writes the json-file log
and fans output out to attach streams, so logs keep flowing while the daemon
is away.

It is the child of the keeper (runtime/keeper.py), which outlives it: the
processes the monitor forks are reparented to the keeper, which reaps them
and passes each exit on (the monitor drains the last output, then records the
exit in `exits/`), and the keeper holds a copy of every stdio descriptor.
When the monitor dies the keeper starts a new one and hands it every live
process back (`adopt`), so logging and attaching resume where they
were. Without a keeper (it was killed) the monitor becomes the subreaper
itself and records exits as the keeper would.

It is single-threaded (forking is safe) and never blocks on a client: every
connection has a bounded queue of outgoing packets; a client that lets its
queue overflow is dropped and resynchronises from the exit records.

Protocol: SOCK_SEQPACKET on `<exec-root>/monitor/monitor.sock`, one JSON
object per packet; only root or the monitor's own uid may connect. Requests:
spawn, release, abandon, attach, resize, close_stdin, list, subscribe, ping.
After `attach` the connection carries output packets to the daemon, each
b"o" + data (Docker multiplexed frames unless TTY), and b"e" once the process
has ended (EOF without it means the stream was cut); input packets prefixed
b"d" (data) or b"c" (close stdin) come from it.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import json
import os
import select
import selectors
import signal
import socket
import struct
import sys
import time
import traceback
from dataclasses import dataclass, field
from functools import partial
from typing import Any, BinaryIO
from collections.abc import Callable

from coracle.runtime import (exits, init, keeper, limits, logformat, process_security, sealed, seccomp, syscalls,
                             terminal)
from coracle.runtime.spec import Spec

MAX_PACKET = 1 << 20
LINE_MAX = 16 * 1024
SUBSCRIBER_BUFFER = 4 << 20
REPLY_QUEUE = 4096  # packets queued for a client (replies, exit events) before it is dropped
STDIN_BUFFER = 8 << 20  # stdin held for a process that reads slowly; beyond it input is dropped
STDIN_RETRY = 0.02  # seconds between attempts to hand buffered stdin over
LOG_LOOK_EVERY = 1.0  # seconds between looks at a log's filesystem and file (deleted? room left?)
LOG_LOOK_BYTES = 1 << 20  # ... or bytes written since the last look, whichever comes first
LOG_FLOOR = 8 << 20  # logs stop while fewer bytes are free: the rest is the daemon's (state, its space reserve)
SPARE_READY_WAIT = 0.5  # seconds the monitor waits for a spare child to have closed what it inherited
LOG_RESUME_FREE = 16 << 20  # bytes free before a log that stopped is written again


class JsonLog:
    """Docker's json-file and local log drivers (runtime/logformat.py), with rotation.

    A log never takes its supervisor down nor fills the disk: when fewer than
    LOG_FLOOR bytes are left on its filesystem, or a write fails, it says so
    once on the monitor's stderr and drops output until LOG_RESUME_FREE bytes
    are free again (looked at once a second or once a MiB), so a flooding
    container leaves the daemon room to record state, and cannot eat the space
    reserve the daemon frees on a full disk. A log file deleted behind our back
    (its container directory removed, then re-made by `system check`) is opened
    again at its path.
    """

    def __init__(self, path: str, max_size: int, max_file: int, attrs: dict[str, str] | None = None,
                 driver: str = "json-file", compress: bool = False) -> None:
        self.path, self.max_size, self.max_file = path, max_size, max(1, max_file)
        self.attrs = attrs or {}  # json-file's "attrs" of every line (--log-opt labels/env)
        self.driver, self.compress = driver, compress  # the format (runtime/logformat.py); gzip rotated files
        self.f: BinaryIO | None = open(path, "ab", buffering=0)  # noqa: SIM115  (the log's file, kept open)
        self.partial: dict[str, bytes] = {"stdout": b"", "stderr": b""}
        self.failure = ""  # why writing stopped; empty while it works
        self.dropped = 0
        self.looked, self.since_look = time.monotonic(), 0

    def write(self, stream: str, data: bytes, final: bool = False) -> None:
        """Log complete lines; keep a partial one until its newline, 16 KiB, or the end."""
        self.since_look += len(data)
        if self.since_look >= LOG_LOOK_BYTES or time.monotonic() - self.looked >= LOG_LOOK_EVERY:
            self._look()
        if self.failure or self.f is None:
            self.dropped += len(data)
            return
        *lines, tail = (self.partial[stream] + data).split(b"\n")
        records = [line + b"\n" for line in lines]
        if tail and (final or len(tail) >= LINE_MAX):
            records.append(tail)
            tail = b""
        self.partial[stream] = tail
        try:
            for r in records:
                entry = logformat.encode(self.driver, stream, r, time.time_ns(), self.attrs)
                if self.max_size and self.f.tell() and self.f.tell() + len(entry) > self.max_size:
                    self._rotate()
                self.f.write(entry)
        except OSError as exc:
            self._stop(exc.strerror or str(exc))

    def _stop(self, why: str) -> None:
        self.failure = why
        self.partial = {"stdout": b"", "stderr": b""}
        print(f"{self.path}: cannot write the log ({why}); output is dropped until "
              f"{LOG_RESUME_FREE >> 20} MiB are free", file=sys.stderr)

    def _look(self) -> None:
        """Stop short of a full disk, resume once there is room; reopen a file deleted under us."""
        self.looked, self.since_look = time.monotonic(), 0
        try:
            st = os.statvfs(os.path.dirname(self.path))
            free = st.f_bavail * st.f_frsize
            if self.failure:
                if free < LOG_RESUME_FREE:
                    return
                self._reopen()
                print(f"{self.path}: writing again; {self.dropped} bytes of output were dropped", file=sys.stderr)
                self.failure, self.dropped = "", 0
            elif free < LOG_FLOOR:
                self._stop(f"fewer than {LOG_FLOOR >> 20} MiB free on its filesystem")
            elif self.f is None or os.fstat(self.f.fileno()).st_nlink == 0:
                self._reopen()
        except OSError:
            pass  # still no room, or the directory is still gone: look again later

    def _reopen(self) -> None:
        f = open(self.path, "ab", buffering=0)  # noqa: SIM115  (becomes the log's file)
        if self.f is not None:
            self.f.close()
        self.f = f

    def _rotate(self) -> None:
        """Shift name.1[.gz] -> name.2[.gz] ... and start a fresh file; at most max_file files
        in all. With `compress`, name.1 is gzipped here, at the fastest level: a pause of
        the monitor's loop of well under a second per 20 MB rotated."""
        assert self.f is not None
        self.f.close()
        self.f = None
        for i in range(self.max_file - 1, 0, -1):
            src = self.path if i == 1 else f"{self.path}.{i - 1}"
            for suffix in ("", ".gz"):
                if os.path.exists(src + suffix):
                    os.rename(src + suffix, f"{self.path}.{i}{suffix}")
        if self.compress and self.max_file > 1:
            logformat.compress(f"{self.path}.1")
        self.f = open(self.path, "wb", buffering=0)  # noqa: SIM115  (the log's file, kept open)

    def close(self) -> None:
        for stream in ("stdout", "stderr"):
            if self.partial[stream]:
                self.write(stream, b"", final=True)
        if self.f is not None:
            self.f.close()


@dataclass
class Subscriber:
    """An attach stream: a daemon connection that receives this process's output."""

    sock: socket.socket
    stdin: bool
    streams: set[str]
    pending: list[bytes] = field(default_factory=list)
    pending_bytes: int = 0
    ended: bool = False  # the process is gone: close once everything pending is sent


@dataclass
class Proc:
    """One supervised process: a container's PID 1 or an exec'd process."""

    id: str
    kind: str
    tty: bool
    pid: int = 0
    state: str = "forking"  # forking -> held -> starting -> running -> exited
    outputs: dict[int, str] = field(default_factory=dict)  # fd -> "stdout"/"stderr"/"tty"
    stdin_fd: int = -1
    stdin_buf: bytearray = field(default_factory=bytearray)  # accepted, not yet taken by the process
    stdin_close: bool = False  # close stdin once the buffer is written
    master_fd: int = -1
    terminal_chan: socket.socket | None = None  # where the child sends its terminal's master, until it has
    terminal_stdin: bool = False  # the terminal, once it arrives, takes stdin
    terminal_size: tuple[int, int] | None = None  # a resize that came before the terminal
    sync_fd: int = -1
    ready_fd: int = -1
    error_fd: int = -1
    error_buf: bytes = b""
    log: JsonLog | None = None
    subscribers: list[Subscriber] = field(default_factory=list)
    waiter: socket.socket | None = None  # connection awaiting the spawn/release answer
    exit_code: int | None = None


@dataclass
class Spare:
    """The child forked ahead of the next spawn (init.serve_spare), and what it inherited."""

    pid: int
    chan: socket.socket
    compiled: int  # seccomp programs compiled in the monitor when it was forked
    staged: bool = False  # told which cgroup to move into (coracle.cgroups.spare)


class Monitor:
    def __init__(self, exec_root: str, keeper_chan: socket.socket | None = None) -> None:
        self.exec_root = exec_root
        self.root = os.path.join(exec_root, "monitor")
        os.makedirs(exits.folder(exec_root), exist_ok=True)
        self.keeper = keeper_chan
        self.sel = selectors.DefaultSelector()
        self.procs: dict[str, Proc] = {}
        self.by_pid: dict[int, Proc] = {}
        self.listeners: list[socket.socket] = []
        self.attached: dict[socket.socket, tuple[Proc, Subscriber]] = {}
        self.replies: dict[socket.socket, list[bytes]] = {}  # queued packets of request connections
        self.stdin_waiting: set[str] = set()
        self.spare: Spare | None = None

    # ----- plumbing -------------------------------------------------------

    def serve(self) -> None:
        limits.raise_nofile()
        if self.keeper is None:
            syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
        else:
            self._adopt_all()
        path = os.path.join(self.root, "monitor.sock")
        if os.path.exists(path):
            os.unlink(path)
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        lsock.bind(path)
        os.chmod(path, 0o600)
        lsock.listen(128)
        lsock.setblocking(False)
        self.sel.register(lsock, selectors.EVENT_READ, self._accept)
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only an explicit shutdown request or SIGKILL ends us
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        self.sel.register(wake_r, selectors.EVENT_READ, self._on_signal)
        if self.keeper is not None:
            self.keeper.setblocking(False)
            self.sel.register(self.keeper, selectors.EVENT_READ, self._on_keeper)
        exits.write_atomic(os.path.join(self.root, "monitor.pid"), str(os.getpid()).encode())
        self._reap()
        self._fork_spare()
        while True:
            for key, events in self.sel.select(STDIN_RETRY if self.stdin_waiting else None):
                if key.fd not in self.sel.get_map() or self.sel.get_map()[key.fd] is not key:
                    continue  # stale: an earlier event of this batch closed (or reused) the descriptor
                try:
                    key.data(key.fileobj, events)
                except Exception:  # one broken stream must never take every container's supervisor down
                    traceback.print_exc()
            for pid in list(self.stdin_waiting):
                if pid in self.procs:
                    self._feed_stdin(self.procs[pid])
                else:
                    self.stdin_waiting.discard(pid)

    def _accept(self, lsock: socket.socket, _events: int) -> None:
        conn, _ = lsock.accept()
        _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        if uid not in (0, os.getuid()):
            conn.close()  # only root and our own user may run processes through us
            return
        conn.setblocking(False)
        self.sel.register(conn, selectors.EVENT_READ, self._on_request)

    def _send(self, conn: socket.socket, obj: dict[str, Any]) -> None:
        """Queue a packet for a request connection; never wait for the client to read."""
        queue = self.replies.setdefault(conn, [])
        queue.append(json.dumps(obj).encode())
        if len(queue) > REPLY_QUEUE:
            print(f"a client fell {len(queue)} packets behind; dropped (it resynchronises)", file=sys.stderr)
            self._drop(conn)
            return
        self._flush_replies(conn)

    def _flush_replies(self, conn: socket.socket) -> None:
        queue = self.replies.get(conn, [])
        while queue:
            try:
                conn.send(queue[0])
            except BlockingIOError:
                break
            except OSError:
                self._drop(conn)
                return
            queue.pop(0)
        if conn in self.attached:
            return  # the attach stream's own flushing watches writability
        try:
            want = selectors.EVENT_READ | (selectors.EVENT_WRITE if queue else 0)
            self.sel.modify(conn, want, self._on_request)
        except (KeyError, ValueError):
            pass

    def _drop(self, conn: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(conn)
        self.replies.pop(conn, None)
        if conn in self.listeners:
            self.listeners.remove(conn)
        entry = self.attached.pop(conn, None)
        if entry:
            proc, sub = entry
            if sub in proc.subscribers:
                proc.subscribers.remove(sub)
        for proc in self.procs.values():
            if proc.waiter is conn:
                proc.waiter = None
        conn.close()

    def _on_signal(self, fd: int, _events: int) -> None:
        try:
            while os.read(fd, 512):
                pass
        except BlockingIOError:
            pass
        self._reap()

    # ----- the keeper -------------------------------------------------------

    def _adopt_all(self) -> None:
        """At start under a keeper: take back every process it holds, before serving anyone."""
        assert self.keeper is not None
        self.keeper.setblocking(True)
        while True:
            msg, fds = keeper.recv_message(self.keeper)
            if msg is None:
                raise SystemExit("the keeper went away during start-up")
            if msg["op"] == "ready":
                return
            if msg["op"] == "adopt":
                self._adopt(msg, fds)

    def _adopt(self, info: dict[str, Any], fds: list[int]) -> None:
        """Resume a process the previous monitor supervised: its output, log and stdin."""
        proc = Proc(id=info["id"], kind=info["kind"], tty=info["tty"], pid=info["pid"], state="running")
        for role, fd in zip(info["fds"], fds, strict=False):
            if role == "stdin":
                proc.stdin_fd = fd
                continue
            proc.outputs[fd] = role
            if role == "tty":
                proc.master_fd = fd
                proc.stdin_fd = fd if info.get("stdin") else -1
            os.set_blocking(fd, False)
            self.sel.register(fd, selectors.EVENT_READ, partial(self._on_output, proc))
        if info.get("log_path"):
            try:
                proc.log = JsonLog(info["log_path"], info["log_max_size"], info["log_max_file"], info.get("log_attrs"),
                                   info.get("log_driver", "json-file"), info.get("log_compress", False))
            except OSError as exc:  # its directory is gone: supervise it all the same
                print(f"{proc.id}: cannot reopen its log: {exc}", file=sys.stderr)
        self.procs[proc.id] = proc
        self.by_pid[proc.pid] = proc
        if info.get("exit"):  # it ended while no monitor ran: log what it wrote last, then record it
            self._finish_for_keeper(proc.pid, info["exit"], recorded=info.get("recorded", False))

    def _hold(self, proc: Proc) -> None:
        """Give the keeper copies of the new process's stdio and what a new monitor would need."""
        if self.keeper is None:
            return
        roles = list(proc.outputs.values())
        fds = list(proc.outputs)
        if proc.stdin_fd >= 0 and proc.stdin_fd != proc.master_fd:
            roles.append("stdin")
            fds.append(proc.stdin_fd)
        info = {"id": proc.id, "kind": proc.kind, "pid": proc.pid, "tty": proc.tty, "fds": roles,
                "stdin": proc.stdin_fd >= 0 or proc.terminal_stdin, "log_path": proc.log.path if proc.log else "",
                "log_max_size": proc.log.max_size if proc.log else 0,
                "log_max_file": proc.log.max_file if proc.log else 1, "log_attrs": proc.log.attrs if proc.log else {},
                "log_driver": proc.log.driver if proc.log else "", "log_compress": bool(proc.log and proc.log.compress)}
        self._tell_keeper({"op": "hold", "proc": info}, fds)

    def _tell_keeper(self, msg: dict[str, Any], fds: list[int] | None = None) -> None:
        if self.keeper is None:
            return
        try:
            self.keeper.setblocking(True)
            keeper.send_message(self.keeper, msg, fds)
            self.keeper.setblocking(False)
        except OSError:
            self._keeper_lost()

    def _on_keeper(self, chan: socket.socket, _events: int) -> None:
        try:
            msg, fds = keeper.recv_message(chan)
        except BlockingIOError:
            return
        except (OSError, ValueError):
            msg, fds = None, []
        if msg is None:
            self._keeper_lost()
            return
        for fd in fds:
            os.close(fd)
        if msg["op"] == "exit":
            self._finish_for_keeper(msg["pid"], msg, recorded=False)

    def _finish_for_keeper(self, pid: int, record: dict[str, Any], recorded: bool) -> None:
        """An exit the keeper reaped: finish it, then let the keeper let go of its descriptors."""
        proc = self.by_pid.pop(pid, None)
        ok = self._finish(proc, record, write=not recorded) if proc is not None else False
        self._tell_keeper({"op": "finished", "pid": pid, "recorded": recorded or ok})

    def _keeper_lost(self) -> None:
        """The keeper died: reap and record exits ourselves from now on (see docs/architecture.md)."""
        if self.keeper is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(self.keeper)
        self.keeper.close()
        self.keeper = None
        syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
        print("the keeper is gone: this monitor reaps new processes itself; the exit codes of "
              "processes started before are lost", file=sys.stderr, flush=True)
        for proc in list(self.by_pid.values()):
            try:
                pidfd = os.pidfd_open(proc.pid)
            except ProcessLookupError:
                self._lost_exit(proc, -1, 0)
                continue
            self.sel.register(pidfd, selectors.EVENT_READ, partial(self._lost_exit, proc))

    def _lost_exit(self, proc: Proc, pidfd: int, _events: int) -> None:
        """A process reparented away from us when the keeper died has ended; its status went with it."""
        if pidfd >= 0:
            self.sel.unregister(pidfd)
            os.close(pidfd)
        if self.by_pid.pop(proc.pid, None) is not None:
            self._reaped_here(proc, None)

    def _reaped_here(self, proc: Proc, code: int | None) -> None:
        """An exit seen without a keeper."""
        self._finish(proc, exits.record(proc.id, proc.kind, proc.pid, code))

    # ----- requests -------------------------------------------------------

    def _on_request(self, conn: socket.socket, events: int) -> None:
        if events & selectors.EVENT_WRITE:
            self._flush_replies(conn)
        if not events & selectors.EVENT_READ or conn.fileno() < 0:
            return  # only writable, or dropped while flushing
        try:
            raw = conn.recv(MAX_PACKET)
        except OSError:
            raw = b""
        if not raw:
            self._drop(conn)
            return
        try:
            req = json.loads(raw)
            handler: Callable[[socket.socket, dict[str, Any]], None] = getattr(self, "op_" + req["op"])
        except (ValueError, KeyError, AttributeError, TypeError):
            self._send(conn, {"error": "bad request"})
            return
        try:
            handler(conn, req)
        except Exception as exc:  # a bad request must never take the supervisor down
            self._send(conn, {"error": f"{type(exc).__name__}: {exc}"})

    def op_ping(self, conn: socket.socket, req: dict[str, Any]) -> None:
        self._send(conn, {"ok": True, "pid": os.getpid(), "spare": self.spare.pid if self.spare else 0})

    def op_stage(self, conn: socket.socket, req: dict[str, Any]) -> None:
        """Pass the spare child the cgroup the daemon made for it; it moves itself there, so the next
        container's PID 1 is born in it (coracle.cgroups.spare). Once per spare; no dirs only asks
        whether the spare wants one."""
        spare = self.spare
        if spare is None or spare.staged or not req["dirs"]:
            self._send(conn, {"ok": spare is not None and not spare.staged})
            return
        try:
            keeper.send_message(spare.chan, {"stage": [str(d) for d in req["dirs"]]}, [])
        except OSError:
            self._send(conn, {"ok": False})
            return
        spare.staged = True
        self._send(conn, {"ok": True})

    def op_subscribe(self, conn: socket.socket, req: dict[str, Any]) -> None:
        self.listeners.append(conn)
        self._send(conn, {"ok": True})

    def op_list(self, conn: socket.socket, req: dict[str, Any]) -> None:
        self._send(conn, {"procs": [
            {"id": p.id, "kind": p.kind, "pid": p.pid, "state": p.state} for p in self.procs.values()
        ]})

    def op_spawn(self, conn: socket.socket, req: dict[str, Any]) -> None:
        spec = Spec.from_json(req["spec"])
        if spec.id in self.procs:
            self._send(conn, {"error": f"{spec.id} is already supervised"})
            return
        proc = Proc(id=spec.id, kind=spec.kind, tty=spec.process.tty)
        if spec.kind == "container" and spec.log_path:  # first: if it fails, nothing is forked nor leaked
            proc.log = JsonLog(spec.log_path, spec.log_max_size, spec.log_max_file, spec.log_attrs, spec.log_driver,
                               spec.log_compress)
        sync_r, sync_w = os.pipe2(os.O_CLOEXEC)
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        child_side: list[int] = [sync_r, ready_w, err_w]
        if spec.process.tty:
            proc.terminal_chan, child_chan = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            fds = init.ChildFds(sync_r, ready_w, err_w, terminal=child_chan.detach())
            child_side.append(fds.terminal)
            proc.terminal_stdin = spec.process.stdin
        else:
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            e_r, e_w = os.pipe2(os.O_CLOEXEC)
            if spec.process.stdin:
                in_r, in_w = os.pipe2(os.O_CLOEXEC)
                proc.stdin_fd = in_w
            else:
                in_r = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
            child_side += [in_r, out_w, e_w]
            proc.outputs[out_r] = "stdout"
            proc.outputs[e_r] = "stderr"
            fds = init.ChildFds(sync_r, ready_w, err_w, in_r, out_w, e_w)
        with contextlib.suppress(OSError, ValueError):  # the child compiles (and reports the error) itself
            process_security.precompile(spec.process)
        if not self._hand_to_spare(req["spec"], fds) and os.fork() == 0:
            init.run_child(spec, fds)
        for fd in child_side:
            os.close(fd)
        proc.sync_fd, proc.ready_fd, proc.error_fd = sync_w, ready_r, err_r
        proc.waiter = conn
        self.procs[spec.id] = proc
        for fd in proc.outputs:
            os.set_blocking(fd, False)
            self.sel.register(fd, selectors.EVENT_READ, partial(self._on_output, proc))
        self.sel.register(ready_r, selectors.EVENT_READ, partial(self._on_ready, proc))

    def _fork_spare(self) -> None:
        """Fork the child the next spawn hands its work to (see init.serve_spare).

        Until it has closed what it inherited, a child holds the monitor's listening socket
        and lock: were the monitor to die then, a client's connection would queue on a socket
        nobody accepts, and the next monitor would find the lock taken. So the monitor waits
        for the spare's word that it holds nothing more (a fresh child's window, once per
        start, as before), while the daemon is busy wiring the container it just spawned.
        """
        if self.spare is not None:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = os.fork()
        except OSError as exc:  # no spare: the next spawn forks afresh and tries again
            print(f"cannot fork a spare child: {exc}", file=sys.stderr)
            ours.close()
            theirs.close()
            return
        if pid == 0:
            init.serve_spare(theirs)
        theirs.close()
        try:
            ours.settimeout(SPARE_READY_WAIT)
            ready = ours.recv(1) == b"r"
            ours.settimeout(None)
        except OSError:
            ready = False
        if not ready:  # it died, or is too slow to be worth waiting for: it ends at EOF
            ours.close()
            return
        self.spare = Spare(pid, ours, seccomp.compiled_count())

    def _hand_to_spare(self, spec: dict[str, Any], fds: init.ChildFds) -> bool:
        """Give the spawn to the spare child; False: fork afresh (no spare, it died, or it was
        forked before this spec's seccomp program was compiled and would compile it again)."""
        spare, self.spare = self.spare, None
        if spare is None:
            return False
        try:
            if spare.compiled != seccomp.compiled_count():
                return False
            roles = fds.roles()
            keeper.send_message(spare.chan, {"spec": spec, "fds": [name for name, _ in roles]},
                                [fd for _, fd in roles])
            return True
        except OSError:
            return False
        finally:
            spare.chan.close()  # a spare let go reads EOF and exits

    def _on_ready(self, proc: Proc, fd: int, _events: int) -> None:
        if proc.ready_fd != fd:
            return
        data = os.read(fd, 64)
        self.sel.unregister(fd)
        os.close(fd)
        proc.ready_fd = -1
        if data.strip().isdigit():
            proc.pid = int(data)
            proc.state = "held"
            self.by_pid[proc.pid] = proc
            self._hold(proc)
            if proc.waiter:
                self._send(proc.waiter, {"pid": proc.pid})
        else:  # the intermediate child failed before forking: its error is on the error pipe
            error = self._read_error(proc)
            if proc.waiter:
                self._send(proc.waiter, error or {"error": "container process failed to start", "code": 128})
            self._forget(proc)
        self._fork_spare()  # while the daemon wires the held process, before the next spawn

    def _read_error(self, proc: Proc) -> dict[str, Any] | None:
        os.set_blocking(proc.error_fd, True)
        data = proc.error_buf
        while chunk := os.read(proc.error_fd, 65536):
            data += chunk
        return json.loads(data) if data else None

    def op_release(self, conn: socket.socket, req: dict[str, Any]) -> None:
        proc = self.procs.get(req["id"])
        if proc is None or proc.state != "held":
            self._send(conn, {"error": f"no held process {req['id']}"})
            return
        proc.waiter = conn
        proc.state = "starting"
        os.write(proc.sync_fd, b"g")
        os.close(proc.sync_fd)
        proc.sync_fd = -1
        os.set_blocking(proc.error_fd, False)
        self.sel.register(proc.error_fd, selectors.EVENT_READ, partial(self._on_error_pipe, proc))

    def _on_error_pipe(self, proc: Proc, fd: int, _events: int) -> None:
        if proc.error_fd != fd:
            return
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        if chunk:
            proc.error_buf += chunk
            return
        self._complete_start(proc)

    def _complete_start(self, proc: Proc) -> None:
        """The error pipe closed: exec happened (empty) or the child said why it failed."""
        os.set_blocking(proc.error_fd, True)
        while chunk := os.read(proc.error_fd, 65536):
            proc.error_buf += chunk
        self.sel.unregister(proc.error_fd)
        os.close(proc.error_fd)
        proc.error_fd = -1
        self._take_terminal(proc)
        if proc.error_buf:
            answer = json.loads(proc.error_buf)
        else:
            answer = {"ok": True, "pid": proc.pid}
            if proc.state == "starting":
                proc.state = "running"
        if proc.waiter:
            self._send(proc.waiter, answer)
            proc.waiter = None

    def _take_terminal(self, proc: Proc) -> None:
        """Receive the master of the terminal the child opened in the container (sent before
        its execve, so here by the time the error pipe closed), supervise it and let the
        keeper hold a copy."""
        if proc.terminal_chan is None:
            return
        master = terminal.receive_master(proc.terminal_chan)
        proc.terminal_chan.close()
        proc.terminal_chan = None
        if master < 0:
            return
        os.set_inheritable(master, False)
        proc.master_fd = master
        proc.outputs[master] = "tty"
        os.set_blocking(master, False)
        self.sel.register(master, selectors.EVENT_READ, partial(self._on_output, proc))
        if proc.terminal_size:
            terminal.set_size(master, *proc.terminal_size)
        self._tell_keeper({"op": "terminal", "pid": proc.pid}, [master])
        if proc.terminal_stdin:
            proc.stdin_fd, proc.terminal_stdin = master, False
            self._feed_stdin(proc)

    def op_abandon(self, conn: socket.socket, req: dict[str, Any]) -> None:
        """Kill a process that was never released (its start failed in the daemon)."""
        proc = self.procs.get(req["id"])
        if proc is not None and proc.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        self._send(conn, {"ok": True})

    def op_attach(self, conn: socket.socket, req: dict[str, Any]) -> None:
        proc = self.procs.get(req["id"])
        if proc is None or proc.state == "exited":
            self._send(conn, {"error": f"{req['id']} is not running"})
            return
        streams = {s for s in ("stdout", "stderr") if req.get(s, True)}
        sub = Subscriber(conn, bool(req.get("stdin")) and (proc.stdin_fd >= 0 or proc.terminal_stdin), streams)
        proc.subscribers.append(sub)
        self.attached[conn] = (proc, sub)
        self.replies.pop(conn, None)
        sub.pending.append(json.dumps({"ok": True, "tty": proc.tty}).encode())
        self._flush(sub)

    def _on_attach_input(self, conn: socket.socket, events: int) -> None:
        if conn not in self.attached:
            return
        proc, sub = self.attached[conn]
        if events & selectors.EVENT_WRITE:
            self._flush(sub)
        if not events & selectors.EVENT_READ:
            return
        try:
            data = conn.recv(MAX_PACKET)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        if not sub.stdin or proc.stdin_fd < 0:
            return
        if data[:1] == b"c":
            proc.stdin_close = True
        elif data[:1] == b"d":
            if len(proc.stdin_buf) + len(data) - 1 > STDIN_BUFFER:
                print(f"{proc.id}: stdin is not being read; {len(data) - 1} bytes dropped", file=sys.stderr)
            else:
                proc.stdin_buf += data[1:]
        self._feed_stdin(proc)

    def _feed_stdin(self, proc: Proc) -> None:
        """Write what the container will take now; never wait for a process that does not read."""
        if proc.terminal_chan is not None:
            return  # kept until the terminal arrives
        while proc.stdin_buf and proc.stdin_fd >= 0:
            try:
                os.set_blocking(proc.stdin_fd, False)
                written = os.write(proc.stdin_fd, proc.stdin_buf[:65536])
            except BlockingIOError:
                break
            except OSError:
                proc.stdin_buf.clear()
                break
            del proc.stdin_buf[:written]
        if proc.stdin_buf and proc.stdin_fd >= 0:
            self.stdin_waiting.add(proc.id)  # retried from the main loop
            return
        self.stdin_waiting.discard(proc.id)
        if proc.stdin_close:
            self._close_stdin(proc)

    def _close_stdin(self, proc: Proc) -> None:
        proc.stdin_buf.clear()
        if proc.stdin_fd >= 0 and proc.stdin_fd != proc.master_fd:
            os.close(proc.stdin_fd)
            self._tell_keeper({"op": "close_stdin", "pid": proc.pid})  # or its copy keeps the pipe open
        elif proc.stdin_fd >= 0:
            os.write(proc.master_fd, b"\x04")  # EOF on a terminal is ^D
        proc.stdin_fd = -1

    def op_close_stdin(self, conn: socket.socket, req: dict[str, Any]) -> None:
        proc = self.procs.get(req["id"])
        if proc is not None:
            proc.stdin_close = True
            self._feed_stdin(proc)
        self._send(conn, {"ok": True})

    def op_resize(self, conn: socket.socket, req: dict[str, Any]) -> None:
        proc = self.procs.get(req["id"])
        if proc is not None and proc.terminal_chan is not None:
            proc.terminal_size = (int(req["h"]), int(req["w"]))  # applied when the terminal arrives
        elif proc is None or proc.master_fd < 0:
            self._send(conn, {"error": "no terminal to resize"})
            return
        else:
            terminal.set_size(proc.master_fd, int(req["h"]), int(req["w"]))
        self._send(conn, {"ok": True})

    # ----- output ---------------------------------------------------------

    def _on_output(self, proc: Proc, fd: int, _events: int) -> None:
        if fd not in proc.outputs:
            return
        self._pump(proc, fd)

    def _pump(self, proc: Proc, fd: int) -> bool:
        """Move what is readable on `fd` to the log and the attach streams; False at EOF."""
        stream = proc.outputs[fd]
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return True
        except OSError as exc:
            if exc.errno != errno.EIO:  # EIO: the terminal's last writer is gone
                raise
            data = b""
        if not data:
            self.sel.unregister(fd)
            os.close(fd)
            del proc.outputs[fd]
            if fd == proc.master_fd:
                proc.master_fd = -1
                proc.stdin_fd = -1
            return False
        name = "stdout" if stream == "tty" else stream
        if proc.log:
            proc.log.write(name, data)
        for sub in list(proc.subscribers):
            if name not in sub.streams:
                continue
            frame = b"o" + (data if proc.tty else struct.pack(">BxxxI", 1 if name == "stdout" else 2, len(data)) + data)
            sub.pending.append(frame)
            sub.pending_bytes += len(frame)
            self._flush(sub)
        return True

    def _flush(self, sub: Subscriber) -> None:
        while sub.pending:
            try:
                sub.sock.send(sub.pending[0])
            except BlockingIOError:
                break
            except OSError:
                self._drop(sub.sock)
                return
            sub.pending_bytes -= len(sub.pending.pop(0))
        if sub.pending_bytes > SUBSCRIBER_BUFFER:
            self._drop(sub.sock)  # a reader that does not keep up loses its stream, never the container
            return
        if sub.ended and not sub.pending:
            self._drop(sub.sock)
            return
        if sub.sock in self.attached:
            want = selectors.EVENT_READ | (selectors.EVENT_WRITE if sub.pending else 0)
            self.sel.modify(sub.sock, want, self._on_attach_input)

    # ----- exits ----------------------------------------------------------

    def _reap(self) -> None:
        """Our own children: the short-lived forking children, and, without a keeper, the processes."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            proc = self.by_pid.pop(pid, None)
            if proc is not None:
                self._reaped_here(proc, exits.exit_code(status))

    def _finish(self, proc: Proc, record: dict[str, Any], write: bool = True) -> bool:
        """The process was reaped: drain its output, then record the exit, end its streams, tell listeners.

        In this order, so that an exit on record means its log is complete. Returns
        whether the record was written (False: the disk refused it).
        """
        proc.exit_code = record["exit_code"]
        if proc.error_fd >= 0 and proc.state == "starting":
            self._complete_start(proc)
        proc.state = "exited"
        for fd in list(proc.outputs):
            # Writers are gone once PID 1 is reaped (the PID namespace died with it):
            # take what is left, but never wait on a descendant that escaped.
            while fd in proc.outputs and self._readable(fd) and self._pump(proc, fd):
                pass
        if proc.log:
            proc.log.close()
        record = {k: record[k] for k in ("id", "kind", "pid", "exit_code", "finished_at")}
        written = True
        if write:
            try:
                exits.write(self.exec_root, record)
            except OSError as exc:
                print(f"{proc.id}: cannot record its exit: {exc}", file=sys.stderr)
                written = False
        for sub in list(proc.subscribers):
            sub.pending.append(b"e")
            sub.ended = True
            self._flush(sub)
        if proc.waiter:
            self._send(proc.waiter, {"error": "process exited during start", "code": proc.exit_code})
        for listener in list(self.listeners):
            self._send(listener, {"event": "exit", **record})
        self._forget(proc)
        return written

    @staticmethod
    def _readable(fd: int) -> bool:
        poller = select.poll()  # not select(): descriptors go beyond 1024 with a raised limit
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))

    def _forget(self, proc: Proc) -> None:
        for fd in list(proc.outputs):
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(fd)
            os.close(fd)
        proc.outputs.clear()
        if proc.terminal_chan is not None:
            proc.terminal_chan.close()
            proc.terminal_chan = None
        for attr in ("stdin_fd", "sync_fd", "ready_fd", "error_fd"):
            fd = getattr(proc, attr)
            if fd >= 0 and fd != proc.master_fd:
                with contextlib.suppress(KeyError, ValueError):
                    self.sel.unregister(fd)
                with contextlib.suppress(OSError):
                    os.close(fd)
            setattr(proc, attr, -1)
        self.procs.pop(proc.id, None)
        if proc.pid:
            self.by_pid.pop(proc.pid, None)


def main(argv: list[str] | None = None) -> None:
    sealed.name_self("coracle-monitor")
    parser = argparse.ArgumentParser(prog="coracle-monitor")
    parser.add_argument("--exec-root", required=True)
    parser.add_argument("--keeper-fd", type=int, default=None, help="the socket to the keeper that started us")
    args = parser.parse_args(argv)
    lock_path = os.path.join(args.exec_root, "monitor", "monitor.lock")
    os.makedirs(os.path.dirname(lock_path), exist_ok=True)
    lock = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("another monitor already supervises this exec root", file=sys.stderr)
        sys.exit(1)
    chan = socket.socket(fileno=args.keeper_fd) if args.keeper_fd is not None else None
    if chan is not None:
        chan.set_inheritable(False)  # ours alone: nothing the monitor runs may hold the keeper's line
    Monitor(args.exec_root, chan).serve()


if __name__ == "__main__":
    main()
