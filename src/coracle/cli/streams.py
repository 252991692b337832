"""The terminal end of attach/exec: raw TTY, stdin forwarding with half-close, frame demultiplexing."""

from __future__ import annotations

import os
import struct
import sys
import threading
from contextlib import contextmanager, suppress

import _socket as socket  # what coracle.cli.client's sockets are (see there)

TYPE_CHECKING = False  # typing is for checkers only: it costs start-up time
if TYPE_CHECKING:
    from typing import Any
    from collections.abc import Callable, Iterator


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
                  on_detach: Callable[[], Any] | None = None) -> threading.Thread:
    """Send our stdin to the daemon; at EOF half-close so the container sees EOF and output keeps coming.

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
                sock.sendall(data)
                if watch:
                    recent = (recent + data)[-len(watch):]
                    if recent == watch:
                        if on_detach is not None:
                            on_detach()
                        return
        except OSError:
            pass
        with suppress(OSError):
            sock.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=run, daemon=True, name="stdin")
    thread.start()
    return thread


def terminal_size(fd: int = 1) -> tuple[int, int] | None:
    """(height, width) of our terminal, or None when not on one."""
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return None
    return size.lines, size.columns


@contextmanager
def raw_terminal(fd: int = 0) -> Iterator[None]:
    """Raw mode for `-it` (keystrokes go to the container as typed); restored on the way out."""
    import termios
    import tty

    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextmanager
def follow_resizes(resize: Callable[[int, int], Any]) -> Iterator[None]:
    """Send our terminal size now and on every SIGWINCH."""
    def send(*_: Any) -> None:
        size = terminal_size(1) or terminal_size(0)
        if size:
            with suppress(Exception):  # a resize racing the container's exit is harmless
                resize(*size)

    send()
    import signal  # a terminal's verbs only: signal builds its enums at import

    previous = signal.signal(signal.SIGWINCH, send) if threading.current_thread() is threading.main_thread() else None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGWINCH, previous)


def stdin_is_tty() -> bool:
    return sys.stdin is not None and os.isatty(0)
