"""Set and map elements written straight over nfnetlink, against the kernel: what they leave in the
tables is exactly what libnftables leaves for the same facts (which the rules were tested with), a
change is all or nothing, and a refusal is said clearly."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from coracle.errors import SystemError_
from coracle.network.firewall import BridgeRules
from coracle.network.firewall.nftables import NftablesFirewall
from coracle.network.ports import Mapping

# makes network namespaces: the root tier
pytestmark = pytest.mark.root

NETWORKS = [
    BridgeRules("br-one", "10.1.0.0/24"),
    BridgeRules("br-two", "10.1.1.0/24", icc=False),  # adjacent to the first: an end meets a start
    BridgeRules("br-six", "10.2.0.0/16", subnet6="fd00:1:2::/64"),
    BridgeRules("br-inner", "10.3.0.0/24", internal=True),
    BridgeRules("br-plain", "10.4.0.0/24", masquerade=False),
    BridgeRules("br-top", "240.0.0.0/4"),  # a range up to the last address: no end element
]
MAPPINGS = [
    Mapping("tcp", "0.0.0.0", 8080, "10.1.0.2", 80),
    Mapping("udp", "127.0.0.1", 5353, "10.1.0.3", 53),
    Mapping("sctp", "0.0.0.0", 9000, "10.1.0.4", 9000),
    Mapping("tcp", "::", 8080, "fd00:1:2::2", 80),
    Mapping("tcp", "::1", 8443, "fd00:1:2::3", 443),
]


def _elements(netns: str, families: tuple[str, ...] = ("ip", "ip6")) -> dict[tuple[str, str], list[Any]]:
    """Every set's and map's elements in both tables, as libnftables lists them."""
    out = {}
    for family in families:
        listing = subprocess.run(["ip", "netns", "exec", netns, "nft", "-j", "list", "table", family, "coracle"],
                                 check=True, capture_output=True, text=True).stdout
        for obj in json.loads(listing)["nftables"]:
            for kind in ("set", "map"):
                if kind in obj:
                    out[(family, obj[kind]["name"])] = sorted(json.dumps(e) for e in obj[kind].get("elem", []))
    return out


def test_elements_written_directly_are_what_libnftables_writes(netns: str) -> None:
    fw = NftablesFirewall(f"/run/netns/{netns}")
    fw.restore(NETWORKS, MAPPINGS)  # through libnftables' JSON
    expected = _elements(netns)
    assert expected[("ip", "masq_nets")] and expected[("ip6", "any_addr")]

    fw.restore([], [])
    empty = _elements(netns)
    for net in NETWORKS:
        fw.add_network(net)
    fw.add_mappings(MAPPINGS)
    assert _elements(netns) == expected
    assert sorted(fw.mappings(), key=str) == sorted(MAPPINGS, key=str)

    for net in NETWORKS:
        fw.remove_network(net)
    fw.remove_mappings(MAPPINGS)
    assert _elements(netns) == empty


def test_removal_of_partly_gone_elements_removes_the_rest(netns: str) -> None:
    fw = NftablesFirewall(f"/run/netns/{netns}")
    fw.restore([], [])
    empty = _elements(netns)
    fw.add_network(NETWORKS[0])
    subprocess.run(["ip", "netns", "exec", netns, "nft", "delete", "element", "ip", "coracle", "intra",
                    '{ "br-one" . "br-one" }'], check=True)
    fw.remove_network(NETWORKS[0])  # one batch fails on the missing element: the others go one by one
    assert _elements(netns) == empty


def test_a_change_the_kernel_refuses_is_said_and_leaves_nothing(netns: str) -> None:
    fw = NftablesFirewall(f"/run/netns/{netns}")
    with pytest.raises(SystemError_, match="nftables refused the change to .*: No such file or directory"):
        fw.add_network(NETWORKS[0])  # no table yet
    fw.restore([], [])
    empty = _elements(netns)
    subprocess.run(["ip", "netns", "exec", netns, "nft", "delete", "table", "ip6", "coracle"], check=True)
    with pytest.raises(SystemError_, match="nftables refused"):
        fw.add_mappings(MAPPINGS)  # the IPv6 maps are missing: none of the IPv4 ones changes either
    assert _elements(netns, ("ip",)) == {key: found for key, found in empty.items() if key[0] == "ip"}
