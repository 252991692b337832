"""The keeper: the small process that outlives the monitor and keeps what must not be lost.

Why it exists: the monitor does real work (forks, namespaces, logs, attach
streams, seccomp compiles) and so can crash or be killed. If it were the
parent of the containers and the only holder of their stdio, its death would
lose every exit status and make the next write of every container hit a pipe
with no reader. The keeper, one per exec root, does only what must survive:

- it is a child subreaper and the parent of the monitor; the monitor is not a
  subreaper, so each container's PID 1 and each exec'd process (forked by a
  short-lived child of the monitor) is reparented to the keeper. The keeper
  reaps them and hands the exact status to the monitor, which drains the last
  output into the log and then writes `exits/<id>.json` (so a recorded exit
  means a complete log); without a monitor the keeper writes it itself;
- it holds a duplicate of every supervised process's stdio descriptors,
  received from the monitor over SCM_RIGHTS, and never reads them: while the
  monitor is away a pipe keeps its reader, so a container blocks at worst when
  the pipe is full, and loses nothing;
- it restarts the monitor at once when it dies and hands the new one every
  live process (its descriptors and what the monitor needs to resume logging),
  then every exit that happened in between.

It never blocks on the monitor (messages wait in a queue) and never reads
container data, so there is little in it that can fail. Protocol (one JSON
object per SOCK_SEQPACKET packet on a socketpair, descriptors as SCM_RIGHTS):
monitor -> keeper `hold` (a new process and its descriptors), `terminal` (the
master of the terminal it opened once released), `close_stdin`,
`finished` (an exit is logged and recorded: let go of the process); keeper ->
monitor `adopt` (one per held process, after a restart), `ready` (end of the
adoptions), `exit`. A process is held until its `finished`, so an exit handed
to a monitor that dies before finishing it is handed to the next one.
"""

from __future__ import annotations

import array
import fcntl
import json
import os
import selectors
import signal
import socket
import sys
import time
from collections import deque
from typing import TYPE_CHECKING

from coracle.runtime import exits, limits, sealed, syscalls

if TYPE_CHECKING:  # the keeper imports as little as it can: it is one more process on every host
    from typing import Any

MAX_PACKET = 1 << 16
MAX_FDS = 8
UNCLAIMED_TTL = 60.0  # seconds an exit of a not-yet-announced process is kept
RESTART_BACKOFF = 1.0  # a monitor that dies this soon after its start is restarted after this long
RETRY = 1.0  # seconds between attempts to write exit records the disk refused


def send_message(sock: socket.socket, msg: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(msg).encode()
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.send(data)


def recv_message(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """One message and its descriptors (close-on-exec); (None, []) at EOF."""
    data, ancillary, _flags, _addr = sock.recvmsg(MAX_PACKET, socket.CMSG_SPACE(MAX_FDS * 4), socket.MSG_CMSG_CLOEXEC)
    fds = array.array("i")
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    return json.loads(data), list(fds)


class Held:
    """A supervised process as the keeper knows it: enough for a new monitor to resume it."""

    def __init__(self, info: dict[str, Any], fds: list[int]) -> None:
        self.info = info  # id, kind, pid, tty, log settings, and "fds": the role of each descriptor
        self.fds = fds
        self.exit: dict[str, Any] | None = None  # reaped, not yet finished by a monitor
        self.recorded = False  # the keeper wrote the exit record itself (no monitor was there)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


class Keeper:
    def __init__(self, exec_root: str) -> None:
        self.exec_root = exec_root
        self.root = os.path.join(exec_root, "monitor")
        os.makedirs(exits.folder(exec_root), exist_ok=True)
        self.sel = selectors.DefaultSelector()
        self.held: dict[int, Held] = {}
        self.unclaimed: dict[int, tuple[int, float]] = {}  # pid -> (wait status, when): reaped before announced
        self.unwritten: list[dict[str, Any]] = []
        self.monitor_pid = 0
        self.monitor_started = 0.0
        self.restart_at: float | None = None
        self.chan: socket.socket | None = None
        self.wake_r = -1
        self.outbox: deque[tuple[dict[str, Any], list[int]]] = deque()

    def serve(self) -> None:
        syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
        limits.raise_nofile()
        self.wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_IGN)  # only SIGKILL ends the keeper
        self.sel.register(self.wake_r, selectors.EVENT_READ, self._on_signal)
        exits.write_atomic(os.path.join(self.root, "keeper.pid"), str(os.getpid()).encode())
        self._start_monitor()
        while True:
            timeout = None
            if self.restart_at is not None:
                timeout = max(0.0, self.restart_at - time.monotonic())
            if self.unwritten:
                timeout = min(timeout if timeout is not None else RETRY, RETRY)
            for key, events in self.sel.select(timeout):
                try:
                    key.data(events)
                except Exception:  # a bad message must never cost the containers their keeper
                    sys.excepthook(*sys.exc_info())
            if self.restart_at is not None and time.monotonic() >= self.restart_at:
                self._start_monitor()
            for record in list(self.unwritten):
                self._persist(record, retry=True)

    # ----- the monitor ------------------------------------------------------

    def _start_monitor(self) -> None:
        self.restart_at = None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        theirs.set_inheritable(True)
        pid = os.fork()
        if pid == 0:
            try:
                sealed.execute(["-m", "coracle.runtime.monitor", "--exec-root", self.exec_root,
                                "--keeper-fd", str(theirs.fileno())])
            finally:
                os._exit(127)
        theirs.close()
        self.monitor_pid, self.monitor_started = pid, time.monotonic()
        ours.setblocking(False)
        self.chan = ours
        self.sel.register(ours, selectors.EVENT_READ, self._on_monitor)
        for held in list(self.held.values()):
            self._queue({"op": "adopt", **held.info, "exit": held.exit, "recorded": held.recorded}, held.fds)
        self._queue({"op": "ready"})

    def _monitor_gone(self) -> None:
        if self.chan is not None:
            self.sel.unregister(self.chan)
            self.chan.close()
            self.chan = None
        self.outbox.clear()  # a new monitor gets the whole picture again
        for held in self.held.values():
            if held.exit and not held.recorded:  # handed over, never finished: on record now
                held.recorded = True
                self._persist(held.exit)

    def _queue(self, msg: dict[str, Any], fds: list[int] | None = None) -> None:
        """Send in order without ever blocking (the descriptors stay ours until `finished`)."""
        if self.chan is None:
            return
        self.outbox.append((msg, list(fds or [])))
        self._flush()

    def _flush(self) -> None:
        while self.outbox and self.chan is not None:
            msg, fds = self.outbox[0]
            try:
                send_message(self.chan, msg, fds)
            except BlockingIOError:
                break
            except OSError:
                self._monitor_gone()
                return
            self.outbox.popleft()
        if self.chan is not None:
            want = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outbox else 0)
            self.sel.modify(self.chan, want, self._on_monitor)

    def _on_monitor(self, events: int) -> None:
        if events & selectors.EVENT_WRITE:
            self._flush()
        if not events & selectors.EVENT_READ or self.chan is None:
            return
        try:
            msg, fds = recv_message(self.chan)
        except BlockingIOError:
            return
        except (OSError, ValueError):
            msg, fds = None, []
        if msg is None:
            self._monitor_gone()  # it died: restarted when reaped
            return
        if msg.get("op") == "hold":
            held = Held(msg["proc"], fds)
            pid = held.info["pid"]
            self.held[pid] = held
            if pid in self.unclaimed:
                self._exited(held, self.unclaimed.pop(pid)[0])
        elif msg.get("op") == "finished":
            finished = self.held.pop(msg["pid"], None)
            if finished is not None:
                finished.close()
                if not msg.get("recorded") and not finished.recorded and finished.exit:
                    self._persist(finished.exit)  # the monitor could not write it: keep trying ourselves
        elif msg.get("op") == "terminal" and msg["pid"] in self.held:
            held = self.held[msg["pid"]]  # the terminal a process opened in its container once released
            held.fds += fds
            held.info["fds"] += ["tty"] * len(fds)
        elif msg.get("op") == "close_stdin":
            closing = self.held.get(msg["pid"])
            if closing is not None and "stdin" in closing.info["fds"]:
                i = closing.info["fds"].index("stdin")
                os.close(closing.fds.pop(i))
                closing.info["fds"].pop(i)
        else:
            for fd in fds:
                os.close(fd)

    # ----- exits ------------------------------------------------------------

    def _on_signal(self, _events: int) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass
        now = time.monotonic()
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid == self.monitor_pid:
                self._monitor_gone()
                self.monitor_pid = 0
                early = now - self.monitor_started < RESTART_BACKOFF
                self.restart_at = now + (RESTART_BACKOFF if early else 0)
                print(f"keeper: the monitor (pid {pid}) ended with {exits.exit_code(status)}; restarting it",
                      file=sys.stderr, flush=True)
            elif pid in self.held:
                self._exited(self.held[pid], status)
            else:
                self.unclaimed[pid] = (status, now)
        for pid, (_status, when) in list(self.unclaimed.items()):
            if now - when > UNCLAIMED_TTL:
                del self.unclaimed[pid]

    def _exited(self, held: Held, status: int) -> None:
        info = held.info
        held.exit = exits.record(info["id"], info["kind"], info["pid"], exits.exit_code(status))
        if self.chan is not None:
            self._queue({"op": "exit", **held.exit})  # the monitor logs the rest, records it, says `finished`
            return
        # No monitor: record it now; the descriptors stay for the next one to drain what was written last.
        held.recorded = True
        self._persist(held.exit)

    def _persist(self, record: dict[str, Any], retry: bool = False) -> None:
        try:
            exits.write(self.exec_root, record)
        except OSError as exc:
            if not retry:
                print(f"keeper: cannot record the exit of {record['id']} yet: {exc}", file=sys.stderr, flush=True)
                self.unwritten.append(record)
            return
        if retry:
            self.unwritten.remove(record)


def main(argv: list[str] | None = None) -> None:
    """`python -m coracle.runtime.keeper --exec-root DIR` (no argparse: it costs the keeper memory)."""
    sealed.name_self("coracle-keeper")
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "--exec-root":
        sys.exit("usage: python -m coracle.runtime.keeper --exec-root DIR")
    exec_root = args[1]
    lock_path = os.path.join(exec_root, "monitor", "keeper.lock")
    os.makedirs(os.path.dirname(lock_path), exist_ok=True)
    lock = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("another keeper already holds this exec root", file=sys.stderr)
        sys.exit(1)
    Keeper(exec_root).serve()


if __name__ == "__main__":
    main()
