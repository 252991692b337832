"""Route tables read from /proc, in namespaces as bare as a fresh host's."""

from __future__ import annotations

import socket
import subprocess
import uuid

import pytest

from coracle.network import netlink
from coracle.netns import netns

# makes network namespaces: the root tier
pytestmark = pytest.mark.root


def test_a_namespace_without_any_route_reads_as_empty() -> None:
    """A daemon started in a brand-new network namespace (lo down, no route at all) must come up:
    the kernel then prints not even the header of /proc/net/route (it used to end start-up with
    StopIteration)."""
    name = f"bare-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        with netns(f"/run/netns/{name}"):
            assert netlink.routes() == []
            assert all(dst == "::" for dst, _, _ in netlink.routes(socket.AF_INET6))  # only the kernel's rejects
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
