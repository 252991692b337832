"""Rootless mode: an ordinary user runs coracled and its containers.

The design is Docker's rootlesskit model. When coracled starts without root it
joins (creating them the first time) three namespaces held for that user by a
small process, the holder (holder.py), which outlives every daemon so that
containers survive a daemon restart:

- a user namespace mapping the user to root and the user's /etc/subuid and
  /etc/subgid ranges to the ids above (written by Debian's setuid newuidmap and
  newgidmap: coracle ships no privileged helper of its own);
- a mount namespace, where image layers are mounted with overlayfs (kernel
  5.11 or later allows it in a user namespace) and nothing shows on the host;
- one network namespace holding coracle's bridges and nftables table, joined
  to the outside by pasta (holder.py), except for the containers' outbound
  TCP, which the holder's keeper relays from the host side (outbound.py).

Inside, the rest of the engine runs as "root" unchanged; what the kernel
refuses there (cgroup v1 limits) is refused up front with a clear message.
This package has no imports from the engine: the runtime and cgroups ask it
`active()`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from coracle.errors import InvalidParameter


def active() -> bool:
    """True in a process of a rootless daemon: it runs in a user namespace whose root is
    not the host's root (the initial namespace maps every id onto itself)."""
    try:
        with open("/proc/self/uid_map") as f:
            rows = [line.split() for line in f]
    except OSError:
        return False
    return rows != [["0", "0", "4294967295"]]


@functools.cache
def host_unprivileged_port_start() -> int:
    """net.ipv4.ip_unprivileged_port_start of the user's host network namespace: the daemon
    reads it once before it moves into the rootless one (where the value is its own)."""
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
        return int(f.read())


def check_publish(wanted: Iterable[tuple[str, int]]) -> None:
    """What a rootless daemon can publish on its user's host side: TCP and UDP, on ports the user may bind.

    Takes every (protocol, host port) of a request at once: `-p 20000-20999:...` asks once, not 1000 times."""
    if not active():
        return
    for proto, host_port in wanted:
        _check_one(proto, host_port)


def _check_one(proto: str, host_port: int) -> None:
    if proto not in ("tcp", "udp"):
        raise InvalidParameter(f"rootless mode publishes TCP and UDP ports only, not {proto}")
    if host_port and host_port < host_unprivileged_port_start():
        raise InvalidParameter(
            f"host port {host_port} is privileged: a rootless daemon can publish ports from "
            f"{host_unprivileged_port_start()} up (net.ipv4.ip_unprivileged_port_start); choose another port")
