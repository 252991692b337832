"""Fixtures of the network tests: the world of namespaces described in networld.py."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import kill_port_proxies

from coracle.network import NetworkManager
from coracle.netns import netns as enter
from coracle.store import Store
from networld import UPLINK6_HOST, UPLINK6_OUTSIDE, UPLINK_HOST, UPLINK_OUTSIDE, World, sh


@pytest.fixture(scope="session")
def unique(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """unique() of tests/conftest.py (both files are named conftest, so ask pytest for it)."""
    wanted = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conftest.py")
    for plugin in request.config.pluginmanager.get_plugins():
        if os.path.abspath(getattr(plugin, "__file__", None) or "") == wanted:
            return plugin.unique
    raise RuntimeError("tests/conftest.py is not loaded")


@pytest.fixture
def world(netns: str, unique: Callable[[str], str], tmp_path: Path) -> Iterator[World]:
    outside = unique("co")
    sh("ip", "netns", "add", outside)
    store = manager = None
    w = None
    try:
        sh("ip", "netns", "exec", outside, "ip", "link", "set", "lo", "up")
        sh("ip", "netns", "exec", netns, "ip", "link", "add", "up0", "type", "veth", "peer", "name", "lan0",
           "netns", outside)
        sh("ip", "netns", "exec", netns, "ip", "addr", "add", f"{UPLINK_HOST}/24", "dev", "up0")
        sh("ip", "netns", "exec", netns, "ip", "link", "set", "up0", "up")
        sh("ip", "netns", "exec", outside, "ip", "addr", "add", f"{UPLINK_OUTSIDE}/24", "dev", "lan0")
        sh("ip", "netns", "exec", outside, "ip", "link", "set", "lan0", "up")
        # the host's default route points at the LAN peer, as a real uplink would
        sh("ip", "netns", "exec", netns, "ip", "route", "add", "default", "via", UPLINK_OUTSIDE)
        # and the same in IPv6 (documentation addresses, no duplicate detection delay)
        sh("ip", "netns", "exec", netns, "ip", "addr", "add", f"{UPLINK6_HOST}/64", "dev", "up0", "nodad")
        sh("ip", "netns", "exec", outside, "ip", "addr", "add", f"{UPLINK6_OUTSIDE}/64", "dev", "lan0", "nodad")
        sh("ip", "netns", "exec", netns, "ip", "-6", "route", "add", "default", "via", UPLINK6_OUTSIDE)
        resolv = tmp_path / "resolv.conf"
        resolv.write_text(f"nameserver {UPLINK_OUTSIDE}\nnameserver 127.0.0.53\nsearch example.test\n")
        hosts = tmp_path / "hosts"
        hosts.write_text("127.0.0.1\tlocalhost\n198.51.100.1\thostbox\n")
        store = Store(tmp_path / "state.db")
        with enter(f"/run/netns/{netns}"):
            manager = NetworkManager(store, str(tmp_path / "exec"), resolv_conf=str(resolv), hosts_file=str(hosts))
        manager.start()
        w = World(netns, outside, store, manager, str(tmp_path), unique)
        yield w
    finally:
        if w is not None:
            for c in w.containers:
                if c.proc.poll() is None:
                    c.proc.kill()
                    c.proc.wait()
        if w is not None:
            w.net.close()  # the manager a test may have swapped in (restart)
        elif manager is not None:
            manager.close()
        if store is not None:
            store.close()
        kill_port_proxies(tmp_path)
        sh("ip", "netns", "del", outside, check=False)
