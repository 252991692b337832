"""The holder: the process that keeps a user's rootless namespaces alive.

`python -m coracle.rootless.holder EXEC_ROOT`, started by the first rootless
coracled of a user, in a session of its own so that it outlives that daemon.
Three processes make up the set, each with one job:

    holder (the user, host namespaces)       maps ids with newuidmap/newgidmap,
    |                                          runs pasta, supervises the others
    +- pasta -f (the user)                    the network namespace's uplink
    +- keeper of the user and mount namespaces (root inside, host network):
       |                                       the published ports' listeners and
       |                                       the containers' outbound TCP relay
       +- keeper of the network namespace     holds the bridges; does nothing

pasta is run from outside because, started as root in a user namespace, it
switches to `nobody` and can no longer open the namespace it is asked to join.
The namespaces keeper stays in the host's network namespace: that is the only
place a rootless process can listen on the user's host ports (ports.py), and
from there it opens the containers' TCP connections to the outside, which
would otherwise all be copied through pasta (outbound.py).

When any of them ends, the holder ends the others and exits: the namespaces
go with them, and so does every container, which is what a reboot does too
(the next daemon ends what is left of them before it makes a new set:
namespace.py).
Daemons find the set through `<exec-root>/rootless/holder.json`.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import threading
import time

from coracle.runtime import syscalls as sc
from coracle.runtime.userns import SUBGID, SUBUID, subordinate_ranges

READY_TIMEOUT = 10.0  # seconds for pasta to configure the namespace
UPLINK_QUEUE = 10_000  # frames queued on pasta's tap (the kernel's default is 1000)


def id_map(uid: int, ranges: list[tuple[int, int]]) -> list[str]:
    """newuidmap's arguments: the user is root inside, its subordinate ids follow from 1."""
    args, inside = ["0", str(uid), "1"], 1
    for start, count in ranges:
        args += [str(inside), str(start), str(count)]
        inside += count
    return args


def _map_ids(pid: int) -> None:
    """Write the child's maps through Debian's setuid helpers: they check /etc/subuid and /etc/subgid."""
    user = pwd.getpwuid(os.getuid())
    names = {user.pw_name, str(user.pw_uid)}
    for tool, path, own in (("newuidmap", SUBUID, os.getuid()), ("newgidmap", SUBGID, os.getgid())):
        ranges = subordinate_ranges(path, names)
        if not ranges:
            raise SystemExit(f"no subordinate ids for {user.pw_name} in {path}: as root, run "
                             f"usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user.pw_name}")
        done = subprocess.run([tool, str(pid), *id_map(own, ranges)], capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{tool} failed: {done.stderr.strip()}")


def _network_keeper(ready: int) -> None:
    """Child of the namespaces keeper: the rootless network namespace lives as long as it does."""
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
    sc.unshare(sc.CLONE_NEWNET)
    os.write(ready, b"n")
    os.close(ready)
    while True:
        signal.pause()


def _namespaces_keeper(to_holder: int, from_holder: int, exec_root: str) -> None:
    """The user and mount namespaces, and the published ports' listeners."""
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
    sc.unshare(sc.CLONE_NEWUSER)
    os.write(to_holder, b"u")
    if os.read(from_holder, 1) != b"m":
        os._exit(1)
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    sc.unshare(sc.CLONE_NEWNS)
    r, w = os.pipe()
    net_pid = os.fork()
    if net_pid == 0:
        os.close(r)
        _network_keeper(w)
    os.close(w)
    if os.read(r, 1) != b"n":
        os._exit(1)
    os.write(to_holder, f"{net_pid}\n".encode())
    os.close(to_holder)
    if os.read(from_holder, 1) != b"p":
        os._exit(1)
    netns = f"/proc/{net_pid}/ns/net"
    uplink = _tune_uplink(netns)
    from coracle.rootless import outbound
    from coracle.rootless.ports import Inside, serve

    if uplink:
        outbound.start(Inside(netns), uplink)
    serve(os.path.join(exec_root, "rootless", "ports.sock"), netns)


def _start_pasta(ns_pid: int, net_pid: int, log: int) -> subprocess.Popen[bytes]:
    """pasta in the foreground, configured like the host; it ends with the holder.

    No mapping of the host's loopback (--no-map-gw) and no forwarding from the
    namespace's ports to the host's (-T/-U none): containers reach the host's
    network as any outside machine does, never the user's localhost services."""
    argv = ["pasta", "-f", "--config-net", "--no-map-gw", "-t", "none", "-u", "none", "-T", "none", "-U", "none",
            "--userns", f"/proc/{ns_pid}/ns/user", "--netns", f"/proc/{net_pid}/ns/net"]
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            preexec_fn=lambda: sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL))


def _tune_uplink(netns_path: str) -> int:
    """Give pasta's tap a queue long enough for what the bridges forward into it; returns the
    tap's interface index (0 if it could not be found).

    A container's traffic reaches the tap forwarded, so when pasta falls behind
    the tap's queue (1000 frames of up to 64 KiB) overflows and drops: the
    container's TCP retransmits and halves its window, where a socket of the
    namespace itself would just have waited. UPLINK_QUEUE frames absorb those
    bursts (bench/rootless.py measures it)."""
    from pyroute2 import IPRoute

    found: list[int] = []

    def inside() -> None:  # a thread: the keeper could not setns back into the host's network namespace
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            sc.setns(fd, sc.CLONE_NEWNET)
            with IPRoute() as ipr:
                for route in ipr.get_default_routes(family=socket.AF_INET):
                    found.append(route.get_attr("RTA_OIF"))
                    ipr.link("set", index=found[-1], txqlen=UPLINK_QUEUE)
        except Exception as exc:  # a slower uplink, not a broken one
            print(f"pasta's tap keeps its default queue: {exc}", file=sys.stderr, flush=True)
        finally:
            os.close(fd)

    t = threading.Thread(target=inside)
    t.start()
    t.join()
    return found[0] if found else 0


def _has_default_route(net_pid: int) -> bool:
    with open(f"/proc/{net_pid}/net/route") as f:
        return any(line.split()[1] == "00000000" for line in list(f)[1:])


def start_ticks(pid: int) -> int:
    """The start time of a process in clock ticks: a PID reused later has another."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[19])


def main() -> None:
    exec_root = sys.argv[1]
    state_dir = os.path.join(exec_root, "rootless")
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    log = os.open(os.path.join(state_dir, "holder.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    to_holder_r, to_holder_w = os.pipe()
    from_holder_r, from_holder_w = os.pipe()
    ns_pid = os.fork()
    if ns_pid == 0:
        os.close(to_holder_r)
        os.close(from_holder_w)
        os.dup2(log, 1)  # what the keeper has to say goes to the log: the daemon stops reading the holder's
        os.dup2(log, 2)
        try:
            _namespaces_keeper(to_holder_w, from_holder_r, exec_root)
        finally:
            os._exit(1)
    os.close(to_holder_w)
    os.close(from_holder_r)
    if os.read(to_holder_r, 1) != b"u":
        raise SystemExit("could not create the user namespace (is kernel.unprivileged_userns_clone 0?)")
    _map_ids(ns_pid)
    os.write(from_holder_w, b"m")
    with os.fdopen(to_holder_r) as f:
        net_pid = int(f.readline() or 0)
    if not net_pid:
        raise SystemExit("could not create the network namespace")
    pasta = _start_pasta(ns_pid, net_pid, log)
    deadline = time.monotonic() + READY_TIMEOUT
    while not _has_default_route(net_pid):
        if pasta.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"pasta did not configure the network namespace (see {state_dir}/holder.log)")
        time.sleep(0.01)
    os.write(from_holder_w, b"p")
    ports_sock = os.path.join(state_dir, "ports.sock")
    while not os.path.exists(ports_sock):
        if os.waitpid(ns_pid, os.WNOHANG)[0]:
            raise SystemExit(f"the namespaces keeper ended while starting (see {state_dir}/holder.log)")
        time.sleep(0.01)
    state = {"holder": os.getpid(), "ticks": start_ticks(os.getpid()), "namespaces": ns_pid, "network": net_pid,
             "pasta": pasta.pid}
    path = os.path.join(state_dir, "holder.json")
    with open(path + ".tmp", "w") as f:
        json.dump(state, f)
    os.rename(path + ".tmp", path)
    print("ready", flush=True)
    os.close(1)
    os.dup2(log, 1)
    os.dup2(log, 2)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(0))
    try:
        pid, status = os.wait()
        print(f"coracle rootless holder: process {pid} ended ({status}); ending the namespaces", flush=True)
    finally:
        for pid in (pasta.pid, ns_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
