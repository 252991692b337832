"""Leases and pools, straight against the store."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Address, IPv4Network

import pytest

from coracle.errors import Conflict, InvalidParameter
from coracle.network.ipam import IPAM, pick_subnet, span
from coracle.store import Store


@pytest.fixture
def ipam(tmp_path):
    store = Store(tmp_path / "state.db")
    try:
        yield IPAM(store)
    finally:
        store.close()


NET = IPv4Network("10.5.0.0/24")
GW = IPv4Address("10.5.0.1")


def test_first_free_address_after_the_gateway_and_reuse_after_release(ipam):
    assert str(ipam.allocate("n", NET, GW, "c1")) == "10.5.0.2"
    assert str(ipam.allocate("n", NET, GW, "c2")) == "10.5.0.3"
    ipam.release("n", "10.5.0.2")
    assert str(ipam.allocate("n", NET, GW, "c3")) == "10.5.0.2"
    assert str(ipam.allocate("other", NET, GW, "c4")) == "10.5.0.2"  # leases are per network


def test_static_addresses(ipam):
    assert str(ipam.allocate("n", NET, GW, "c1", wanted=IPv4Address("10.5.0.9"))) == "10.5.0.9"
    with pytest.raises(Conflict, match="Address already in use"):
        ipam.allocate("n", NET, GW, "c2", wanted=IPv4Address("10.5.0.9"))
    with pytest.raises(Conflict, match="gateway"):
        ipam.allocate("n", NET, GW, "c2", wanted=GW)
    with pytest.raises(InvalidParameter, match="no configured subnet"):
        ipam.allocate("n", NET, GW, "c2", wanted=IPv4Address("10.6.0.9"))


def test_exhaustion_is_a_clear_error(ipam):
    small = IPv4Network("10.5.0.0/30")  # .1 gateway, .2 the only lease
    ipam.allocate("n", small, IPv4Address("10.5.0.1"), "c1")
    with pytest.raises(Conflict, match="no available IPv4 addresses"):
        ipam.allocate("n", small, IPv4Address("10.5.0.1"), "c2")


def test_50_threads_never_share_an_address(ipam):
    with ThreadPoolExecutor(max_workers=50) as pool:
        got = list(pool.map(lambda i: ipam.allocate("n", NET, GW, f"c{i}"), range(50)))
    assert len(set(got)) == 50
    assert len(ipam.leases("n")) == 50


def test_pools_are_cut_into_many_small_networks():
    pools = [("10.200.0.0/14", 24)]
    assert str(pick_subnet(pools, [])) == "10.200.0.0/24"
    assert str(pick_subnet(pools, [span(IPv4Network("10.200.0.0/23"))])) == "10.200.2.0/24"
    taken = [span(n) for n in IPv4Network("10.200.0.0/14").subnets(new_prefix=24)]
    assert len(taken) == 1024
    with pytest.raises(InvalidParameter, match="could not find an available"):
        pick_subnet(pools, taken)


def test_the_first_free_subnet_is_found_past_runs_of_taken_ones():
    """Whatever is taken (networks, host routes of any size, overlapping each other), the pick is the
    first candidate of the pools that overlaps none of it: checked against walking every candidate."""
    rng = random.Random(7)
    pools = [("10.200.0.0/16", 24), ("10.210.0.0/20", 26)]
    for _ in range(200):
        taken = [IPv4Network((rng.randrange(0x0AC80000, 0x0AD20000) & ~((1 << (32 - p)) - 1), p))
                 for p in (rng.choice((16, 20, 22, 24, 25, 28, 32)) for _ in range(rng.randrange(1, 40)))]
        expected = next((c for base, size in pools for c in IPv4Network(base).subnets(new_prefix=size)
                         if not any(c.overlaps(t) for t in taken)), None)
        if expected is None:
            with pytest.raises(InvalidParameter):
                pick_subnet(pools, [span(t) for t in taken])
        else:
            assert pick_subnet(pools, [span(t) for t in taken]) == expected
