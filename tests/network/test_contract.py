"""The engine<->network records: a network mode parsed once, records that round-trip through the store."""

from __future__ import annotations

import pytest

from coracle.errors import InvalidParameter
from coracle.network.driver import Endpoint, EndpointOptions, NetworkRecord, NetworkSpec, Subnet, SubnetRequest
from coracle.network.mode import NetworkMode


@pytest.mark.parametrize("raw", [None, "", "default", "bridge"])
def test_default_means_the_default_bridge(raw: str | None) -> None:
    mode = NetworkMode.parse(raw)
    assert mode.is_bridge and not mode.is_user_defined and mode.has_endpoints and mode.is_private
    assert str(mode) == "bridge" == mode.name


def test_modes_answer_what_docker_asks() -> None:
    host, none = NetworkMode.parse("host"), NetworkMode.parse("none")
    donor = NetworkMode.parse("container:web")
    user = NetworkMode.parse("front")
    assert host.is_host and host.shares_namespace and not host.is_private and not host.has_endpoints
    assert none.is_none and none.is_private and not none.has_endpoints and not none.is_user_defined
    assert donor.is_container and donor.container == "web" and donor.name == "" and donor.shares_namespace
    assert NetworkMode.of_container("abc").container == "abc"
    assert user.is_user_defined and user.name == "front" and user.has_endpoints


def test_a_container_mode_without_a_container_is_refused() -> None:
    with pytest.raises(InvalidParameter, match="container: needs"):
        NetworkMode.parse("container:")


def test_network_records_round_trip_through_their_document() -> None:
    doc = {"Name": "front", "Id": "f" * 64, "Created": "2026-01-01T00:00:00.000000Z", "Scope": "local",
           "Driver": "macvlan", "EnableIPv4": True, "EnableIPv6": True,
           "IPAM": {"Driver": "default", "Options": {},
                    "Config": [{"Subnet": "10.9.0.0/24", "Gateway": "10.9.0.1", "IPRange": "10.9.0.128/25",
                                "AuxiliaryAddresses": {"router": "10.9.0.2"}},
                               {"Subnet": "fd00:9::/64", "Gateway": "fd00:9::1"}]},
           "Internal": False, "Attachable": False, "Ingress": False, "ConfigFrom": {"Network": ""},
           "ConfigOnly": False, "Options": {"parent": "lan0.10"}, "Labels": {"a": "b"},
           "Coracle": {"Builtin": False, "Bridge": "lan0.10", "ICC": True, "Masquerade": True, "MTU": 1500,
                       "CreatedParent": True}}
    rec = NetworkRecord.from_document(doc)
    assert rec.document() == doc
    assert rec.subnet4.reserved >= {rec.subnet4.gateway, *rec.subnet4.aux_addresses.values()}
    assert rec.subnet6 is not None and str(rec.subnet6.gateway) == "fd00:9::1"
    assert rec.driver_state == {"CreatedParent": True}


def test_endpoints_round_trip_through_the_stored_body() -> None:
    ep = Endpoint("e" * 64, "n" * 64, "front", "c" * 64, "web", "02:00:00:00:00:01", "10.9.0.3", 24, "10.9.0.1",
                  aliases=("api",), dns_names=("web", "cccccccccccc", "api"), ipam_config={"IPv4Address": "10.9.0.3"},
                  interface="eth0", host_interface="veth0123")
    assert Endpoint.from_body(ep.body()) == ep
    assert ep.settings()["Aliases"] == ["api"] and ep.settings()["IPAddress"] == "10.9.0.3"


def test_requests_parse_docker_shapes() -> None:
    opts = EndpointOptions.from_docker("front", {"Aliases": ["api"], "IPAMConfig": {"IPv4Address": "10.9.0.3"}})
    assert opts.ipv4_address == "10.9.0.3" and opts.ipv6_address == "" and not opts.empty
    assert EndpointOptions.from_docker("bridge", None).empty
    spec = NetworkSpec("n", subnets=(SubnetRequest("10.0.0.0/24"), SubnetRequest("10.1.0.0/24")))
    with pytest.raises(InvalidParameter, match="only one IPv4 subnet"):
        spec.subnet(4)
    assert SubnetRequest.from_docker({"Subnet": "fd00::/64"}).version == 6
    assert Subnet.from_document({"Subnet": "10.0.0.0/24", "Gateway": "10.0.0.1"}).ip_range is None
