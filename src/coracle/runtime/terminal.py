"""A container's terminal: a pseudo-terminal of the container's own devpts instance.

As runc does with its console socket, the pair is opened by the child that
becomes the container's process, inside the container's mount namespace
(after pivot_root, or after joining for an exec): the terminal is then
/dev/pts/N of the container, `tty` names it there and the host's ptys stay out
of sight. The child hands the master to the monitor over a socket and keeps
the slave as its stdio; the monitor never opens anything of the container.
"""

from __future__ import annotations

import array
import fcntl
import os
import socket
import stat
import termios

from coracle.runtime import syscalls as sc

PTMX = "/dev/pts/ptmx"
PTMX_DEVICE = os.makedev(5, 2)
# linux/tty.h ioctls Python's termios does not name
TIOCGPTN = 0x80045430
TIOCSPTLCK = 0x40045431
TIOCGPTPEER = 0x5441


def open_pair() -> tuple[int, int, int]:
    """Master, slave and pts number of a new terminal from the devpts mounted at /dev/pts.

    The path is resolved without following links and the master must be the
    ptmx device: a container that rearranged its /dev gets an error, never a
    file of its choosing in place of the terminal. The slave is opened from
    the master (TIOCGPTPEER), without a second lookup."""
    master = sc.openat2(-100, PTMX, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC,
                        sc.RESOLVE_NO_SYMLINKS | sc.RESOLVE_NO_MAGICLINKS)
    try:
        st = os.fstat(master)
        if not stat.S_ISCHR(st.st_mode) or st.st_rdev != PTMX_DEVICE:
            raise OSError(f"{PTMX} is not the terminal multiplexer")
        fcntl.ioctl(master, TIOCSPTLCK, array.array("i", [0]))
        number = array.array("I", [0])
        fcntl.ioctl(master, TIOCGPTN, number)
        slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except BaseException:
        os.close(master)
        raise
    os.set_blocking(master, True)
    return master, slave, number[0]


def bind_console(number: int) -> None:
    """Bind the terminal on /dev/console (made as an empty file when /dev was built)."""
    sc.mount(f"/dev/pts/{number}", "/dev/console", None, sc.MS_BIND)


def set_size(master: int, rows: int, cols: int) -> None:
    fcntl.ioctl(master, termios.TIOCSWINSZ, array.array("H", [rows, cols, 0, 0]))


def send_master(chan: int, master: int) -> None:
    """Hand the master to the monitor over the terminal socket of the spawn."""
    sock = socket.socket(fileno=chan)
    try:
        socket.send_fds(sock, [b"t"], [master])
    finally:
        sock.close()


def receive_master(chan: socket.socket) -> int:
    """The master the child sent, or -1 when it never got that far (it failed before)."""
    try:
        _data, fds, _flags, _addr = socket.recv_fds(chan, 1, 1, socket.MSG_DONTWAIT)
    except (BlockingIOError, OSError):
        return -1
    if not fds:
        return -1
    for extra in fds[1:]:
        os.close(extra)
    st = os.fstat(fds[0])
    if not stat.S_ISCHR(st.st_mode) or st.st_rdev != PTMX_DEVICE:
        os.close(fds[0])
        return -1
    return fds[0]
