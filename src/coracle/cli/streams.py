"""The terminal end of attach/exec: raw TTY, stdin forwarding with half-close, frame demultiplexing.

Every attached `run` imports this, so it uses neither `threading` nor `contextlib`: with the
`functools` and `collections` they pull in, they were 10 of the 27 ms of imports of a
`coracle run` on this machine. `_thread` and two small context managers do the same work.
"""

from __future__ import annotations

import _thread
import os
import struct
import sys

import _socket as socket  # what coracle.cli.client's sockets are (see there)

TYPE_CHECKING = False  # typing is for checkers only: it costs start-up time
if TYPE_CHECKING:
    from typing import Any
    from collections.abc import Callable


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class Demuxer:
    """Docker's 8-byte frames (`[stream, 0, 0, 0, size BE32]` + payload) to stdout/stderr."""

    def __init__(self, out_fd: int = 1, err_fd: int = 2) -> None:
        self.fds = {0: out_fd, 1: out_fd, 2: err_fd}
        self.buf = b""

    def feed(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 8:
            stream, size = self.buf[0], struct.unpack(">I", self.buf[4:8])[0]
            if len(self.buf) < 8 + size:
                return
            write_all(self.fds.get(stream, 1), self.buf[8:8 + size])
            self.buf = self.buf[8 + size:]


def pump_output(sock: socket.socket, multiplexed: bool, first: bytes = b"", out_fd: int = 1, err_fd: int = 2) -> None:
    """Copy the daemon's output to our stdout/stderr until the daemon closes its side."""
    demux = Demuxer(out_fd, err_fd) if multiplexed else None

    def emit(data: bytes) -> None:
        if demux is not None:
            demux.feed(data)
        else:
            write_all(out_fd, data)

    if first:
        emit(first)
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return
        if not data:
            return
        emit(data)


def forward_stdin(sock: socket.socket, in_fd: int = 0, watch: bytes = b"",
                  on_detach: Callable[[], Any] | None = None) -> None:
    """Send our stdin to the daemon (in a thread); at EOF half-close so the container sees EOF and
    output keeps coming.

    `watch` is the detach sequence (TTY sessions): once typed, forwarding stops,
    `on_detach` runs and the daemon (which watches for it too) ends the stream.
    """
    def run() -> None:
        recent = b""
        try:
            while True:
                data = os.read(in_fd, 65536)
                if not data:
                    break
                if watch:
                    recent = (recent + data)[-len(watch):]
                    if recent == watch:  # told before the daemon can see the keys and end the stream
                        if on_detach is not None:
                            on_detach()
                        sock.sendall(data)
                        return
                sock.sendall(data)
        except OSError:
            pass
        try:  # noqa: SIM105 (contextlib is what this module avoids)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    _thread.start_new_thread(run, ())


def terminal_size(fd: int = 1) -> tuple[int, int] | None:
    """(height, width) of our terminal, or None when not on one."""
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return None
    return size.lines, size.columns


class raw_terminal:  # noqa: N801 (used as a function: `with raw_terminal(0, active):`)
    """Raw mode for `-it` (keystrokes go to the container as typed), when `active` and on a
    terminal; restored on the way out."""

    def __init__(self, fd: int = 0, active: bool = True) -> None:
        self.fd = fd
        self.saved: Any = None
        self.active = active and os.isatty(fd)

    def __enter__(self) -> None:
        if self.active:
            import termios
            import tty

            self.saved = termios.tcgetattr(self.fd)
            tty.setraw(self.fd, termios.TCSANOW)  # not setraw's default TCSAFLUSH: keys typed ahead go too

    def __exit__(self, *_: object) -> None:
        if self.saved is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)


class follow_resizes:  # noqa: N801 (used as a function: `with follow_resizes(resize, active):`)
    """Send our terminal size now and on every SIGWINCH, when `active`."""

    def __init__(self, resize: Callable[[int, int], Any], active: bool = True) -> None:
        self.resize, self.active = resize, active
        self.previous: Any = None

    def send(self, *_: Any) -> None:
        size = terminal_size(1) or terminal_size(0)
        if size:
            try:  # noqa: SIM105 (no contextlib here)
                self.resize(*size)
            except Exception:  # a resize racing the container's exit is harmless
                pass

    def __enter__(self) -> None:
        if not self.active:
            return
        self.send()
        import signal  # a terminal's verbs only: signal builds its enums at import

        try:
            self.previous = signal.signal(signal.SIGWINCH, self.send)
        except ValueError:  # not the main thread: sizes are sent once
            self.previous = None

    def __exit__(self, *_: object) -> None:
        if self.previous is not None:
            import signal

            signal.signal(signal.SIGWINCH, self.previous)


def stdin_is_tty() -> bool:
    return sys.stdin is not None and os.isatty(0)
