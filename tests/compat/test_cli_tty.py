"""Interactive use of the docker CLI on a real pseudo-terminal: run -it, attach, exec -it.

The CLI puts its terminal in raw mode and hijacks the API connection; these
tests type at that terminal like a user and read what the screen shows.
"""

from __future__ import annotations

import docker
import json
import time

import pytest

from compat_helpers import Docker, Terminal
from harness import Daemon, unique


CLIS = pytest.mark.parametrize("program", ["docker", "coracle"])


@CLIS
def test_run_it_shell_answers_and_exits_with_its_code(daemon: Daemon, program: str) -> None:
    term = Terminal(daemon, "run", "-it", "--rm", "busybox", "sh", rows=31, cols=97, program=program)
    try:
        term.read_until(b"# ")
        term.type(b"stty size; tty; echo $((6*7))\r")
        shown = term.read_until(b"42")
        assert b"31 97" in shown  # the window size reached the container's TTY
        assert b"/dev/" in shown and b"not a tty" not in shown
        term.type(b"exit 5\r")
        assert term.wait() == 5
    finally:
        term.close()


@CLIS
def test_tty_resize_reaches_the_container(daemon: Daemon, program: str) -> None:
    term = Terminal(daemon, "run", "-it", "--rm", "busybox", "sh", rows=24, cols=80, program=program)
    try:
        term.read_until(b"# ")
        deadline = time.monotonic() + 10
        while b"40 120" not in term.output:
            assert time.monotonic() < deadline, term.output[-500:]
            term.resize(40, 120)  # again until seen: the CLI watches SIGWINCH only once started
            term.type(b"stty size\r")
            term.read_until(b"# ")
            time.sleep(0.1)
        term.type(b"exit\r")
        assert term.wait() == 0
    finally:
        term.close()


def test_ctrl_c_reaches_the_process_in_the_tty(daemon: Daemon) -> None:
    term = Terminal(daemon, "run", "-it", "--rm", "busybox", "sh")
    try:
        term.read_until(b"# ")
        term.type(b"sleep 30; echo after-sleep-$((1+1))\r")
        time.sleep(0.5)
        term.type(b"\x03")  # ctrl-c: the TTY's line discipline interrupts the command line
        term.type(b"echo alive-$((2+2))\r")
        term.read_until(b"alive-4", timeout=15)  # long before sleep 30 could have ended
        assert b"after-sleep-2" not in term.output  # interrupted, as at any shell
        term.type(b"exit\r")
        assert term.wait() == 0
    finally:
        term.close()


@CLIS
def test_attach_and_detach_keys(daemon: Daemon, docker: Docker, program: str) -> None:
    name = unique("at")
    docker("run", "-dit", "--name", name, "busybox", "sh")
    term = Terminal(daemon, "attach", name, program=program)
    try:
        term.type(b"\r")
        term.read_until(b"# ")
        term.type(b"echo attached-$((3*3))\r")
        term.read_until(b"attached-9")
        term.type(b"\x10\x11")  # ctrl-p ctrl-q: detach, the container goes on
        term.wait()
    finally:
        term.close()
    assert json.loads(docker("inspect", name).stdout)[0]["State"]["Running"]
    term = Terminal(daemon, "attach", "--detach-keys", "ctrl-x", name, program=program)
    try:
        term.type(b"echo again-$((4*4))\r")
        term.read_until(b"again-16")
        term.type(b"\x18")
        term.wait()
    finally:
        term.close()
    assert json.loads(docker("inspect", name).stdout)[0]["State"]["Running"]


@CLIS
def test_exec_it(daemon: Daemon, docker: Docker, program: str) -> None:
    name = unique("ei")
    docker("run", "-d", "--name", name, "busybox", "sleep", "60")
    term = Terminal(daemon, "exec", "-it", "-e", "WHO=tester", name, "sh", rows=33, cols=111, program=program)
    try:
        term.read_until(b"# ")
        term.type(b"echo $WHO; stty size; exit 6\r")
        assert term.wait() == 6
        assert b"tester" in term.output and b"33 111" in term.output
    finally:
        term.close()


def test_run_it_with_piped_program_exit(daemon: Daemon) -> None:
    """A TTY container whose command ends by itself: docker returns when the output ends."""
    term = Terminal(daemon, "run", "-it", "--rm", "busybox", "sh", "-c", "echo tty-$((5+5)); exit 9")
    try:
        assert term.wait() == 9
        assert b"tty-10\r\n" in term.output  # ONLCR: the container's TTY turned \n into \r\n
    finally:
        term.close()


def test_exec_t_gets_a_terminal_of_the_container(daemon: Daemon, docker: Docker) -> None:
    """Docker: `exec -t` runs on a new pty of the container's devpts, /dev/pts/N as seen inside."""
    name = unique("et")
    docker("run", "-d", "--name", name, "busybox", "sleep", "60")
    assert docker("exec", "-t", name, "tty").stdout.strip() == "/dev/pts/0"
    shown = docker("exec", "-t", name, "sh", "-c", "test -t 0 && test -t 1 && test -t 2 && echo all-terminals")
    assert shown.stdout.strip() == "all-terminals"
    assert docker("exec", name, "tty", check=False).stdout.strip() == "not a tty"  # without -t: pipes


def test_run_t_console_is_its_terminal_and_the_hosts_ptys_are_out_of_sight(daemon: Daemon, docker: Docker) -> None:
    """runc binds the container's terminal on /dev/console; /dev/pts is the container's own instance."""
    name = unique("rt")
    shown = docker("run", "-t", "--name", name, "busybox", "sh", "-c",
                   "tty; stat -L -c %t:%T /dev/console; stat -L -c %t:%T $(tty); ls /dev/pts").stdout.split()
    assert shown[0] == "/dev/pts/0"
    assert shown[1] == shown[2]  # /dev/console is the same device as the terminal
    assert shown[3:] == ["0", "ptmx"]  # only the container's pty, whatever the host has open
    docker("rm", name)
    docker("run", "-dt", "--name", name, "busybox", "sh")
    assert docker("exec", "-t", name, "tty").stdout.strip() == "/dev/pts/1"  # the same instance as PID 1's
    assert docker("exec", name, "ls", "/dev/pts").stdout.split() == ["0", "ptmx"]  # the exec's pty went with it


def test_exec_t_terminal_belongs_to_the_user(daemon: Daemon, docker: Docker) -> None:
    """As runc: the terminal of a process run as a user is that user's, so it can reopen /dev/tty."""
    name = unique("eu")
    docker("run", "-d", "--name", name, "busybox", "sleep", "60")
    shown = docker("exec", "-t", "-u", "1000", name, "sh", "-c", "stat -c %u $(tty); echo hi > /dev/tty")
    assert shown.stdout.split() == ["1000", "hi"]


def test_exec_it_is_interactive_and_resizable(daemon: Daemon, docker: Docker) -> None:
    name = unique("er")
    docker("run", "-d", "--name", name, "busybox", "sleep", "60")
    term = Terminal(daemon, "exec", "-it", name, "sh", rows=24, cols=80)
    try:
        term.read_until(b"# ")
        term.type(b"tty; echo typed-$((7*8))\r")
        shown = term.read_until(b"typed-56")
        assert b"/dev/pts/0" in shown
        deadline = time.monotonic() + 10
        while b"45 132" not in term.output:
            assert time.monotonic() < deadline, term.output[-500:]
            term.resize(45, 132)  # again until seen: the CLI watches SIGWINCH only once started
            term.type(b"stty size\r")
            term.read_until(b"# ")
            time.sleep(0.1)
        term.type(b"exit 3\r")
        assert term.wait() == 3
    finally:
        term.close()


def test_sdk_exec_run_with_tty(daemon: Daemon, client: docker.DockerClient) -> None:
    container = client.containers.run("busybox", "sleep 60", detach=True, name=unique("sx"))
    try:
        code, out = container.exec_run("sh -c 'tty; exit 4'", tty=True)
        assert (code, out) == (4, b"/dev/pts/0\r\n")
    finally:
        container.remove(force=True)


def test_the_terminal_has_its_console_size_from_the_start(daemon: Daemon, docker: Docker) -> None:
    """Docker sends the CLI's terminal size as ConsoleSize: the program finds it at once, no resize needed."""
    name = unique("cs")
    term = Terminal(daemon, "run", "-t", "--name", name, "busybox", "stty", "size", rows=29, cols=101)
    try:
        assert term.wait() == 0
        assert b"29 101" in term.output
    finally:
        term.close()
    docker("rm", name)
    docker("run", "-d", "--name", name, "busybox", "sleep", "60")
    term = Terminal(daemon, "exec", "-t", name, "stty", "size", rows=37, cols=93)
    try:
        assert term.wait() == 0
        assert b"37 93" in term.output
    finally:
        term.close()


def test_a_bad_console_size_is_refused(daemon: Daemon, docker: Docker) -> None:
    status, body = daemon.api("POST", "/containers/create", {"Image": "busybox", "Tty": True,
                                                              "HostConfig": {"ConsoleSize": [-1, 80]}})
    assert status == 400 and "ConsoleSize" in str(body)
    name = unique("bs")
    docker("run", "-d", "--name", name, "busybox", "sleep", "60")
    status, body = daemon.api("POST", f"/containers/{name}/exec", {"Cmd": ["true"], "Tty": True,
                                                                    "ConsoleSize": [24, 80, 1]})
    assert status == 400 and "ConsoleSize" in str(body)
