"""The -p syntax and Docker's PortBindings shape."""

from __future__ import annotations

import pytest

from coracle.errors import InvalidParameter
from coracle.network.ports import PortRequest, parse_publish, requests


@pytest.mark.parametrize("spec, exposed, bindings", [
    ("80", ["80/tcp"], {"80/tcp": [{"HostIp": "", "HostPort": ""}]}),
    ("8080:80", ["80/tcp"], {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}),
    ("127.0.0.1:8080:80/udp", ["80/udp"], {"80/udp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]}),
    ("127.0.0.1::53/udp", ["53/udp"], {"53/udp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}),
    ("8000-8001:80-81", ["80/tcp", "81/tcp"],
     {"80/tcp": [{"HostIp": "", "HostPort": "8000"}], "81/tcp": [{"HostIp": "", "HostPort": "8001"}]}),
    ("8000-8010:80", ["80/tcp"], {"80/tcp": [{"HostIp": "", "HostPort": "8000-8010"}]}),
])
def test_parse_publish(spec, exposed, bindings):
    got_exposed, got_bindings = parse_publish([spec])
    assert sorted(got_exposed) == exposed and got_bindings == bindings


@pytest.mark.parametrize("spec, message", [
    ("0:80", "invalid hostPort"),
    ("80/sctp", "invalid proto"),
    ("8000-8002:80-81", "invalid ranges"),
    ("abc", "invalid port specification"),
    ("999.1.1.1:80:80", "invalid host IP"),
    ("70000", "invalid containerPort"),
])
def test_parse_publish_errors(spec, message):
    with pytest.raises(InvalidParameter, match=message):
        parse_publish([spec])


def test_requests_from_port_bindings_and_publish_all():
    reqs = requests({"80/tcp": [{"HostIp": "", "HostPort": "8080"}, {"HostIp": "127.0.0.1", "HostPort": ""}],
                     "53/udp": [{"HostPort": "5000-5010"}]},
                    {"80/tcp": {}, "443/tcp": {}}, publish_all=True)
    assert reqs == [PortRequest("tcp", 80, "0.0.0.0", 8080), PortRequest("tcp", 80, "127.0.0.1", 0),
                    PortRequest("udp", 53, "0.0.0.0", 5000, 5010), PortRequest("tcp", 443)]
    assert requests({}, {"80/tcp": {}}, publish_all=False) == []
