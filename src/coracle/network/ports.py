"""Published ports: the `-p` syntax, Docker's PortBindings shape, host port choice.

A published port is one DNAT map element in the firewall (see firewall/), not a
proxy process, so publishing costs nothing per packet in user space and the
container sees the real client address (except an IPv6 host address for a
container without IPv6: see portproxy.py). This module only decides *which*
(protocol, host address, host port) -> (container port) mappings a container
gets; the manager reserves them in the store and hands them to the firewall.

Input shapes:
- the CLI's `-p [ip:][hostPort[-range]:]containerPort[-range][/tcp|udp]`:
  `parse_publish(["8080:80", "127.0.0.1::53/udp"])` returns Docker's
  `(ExposedPorts, PortBindings)` pair, ready for the create body;
- the Engine API's `HostConfig.PortBindings` (`{"80/tcp": [{"HostIp": "",
  "HostPort": "8080"}]}`), `PublishAllPorts` and `Config.ExposedPorts`:
  `requests(...)` turns them into `PortRequest`s, with host port 0 meaning
  "any free ephemeral port" and a host range meaning "the first free one in it".

IPv6: a binding without HostIp is `dual`: published on 0.0.0.0 and, when the
host can listen on IPv6, on :: with the same host port (two mappings, as Docker
shows them). An IPv6 host address reaches the container's IPv6 address, or its
IPv4 address through the port proxy when it has none.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections import abc
from dataclasses import dataclass, field
from typing import Any

from coracle import rootless
from coracle.errors import InvalidParameter

PROTOCOLS = ("tcp", "udp")
_SPEC = re.compile(r"^(?:(?P<ip>\[[0-9a-fA-F:.]+\]|[0-9.]*):)??(?:(?P<host>[0-9-]*):)?"
                   r"(?P<cont>[0-9-]+)(?:/(?P<proto>\w+))?$")


@dataclass(frozen=True)
class PortRequest:
    """One container port to publish; host_port 0 = ephemeral; host_end > host_port = pick in range.

    `dual`: no HostIp was given, so IPv6 (::) is published too when the host can listen on IPv6."""

    proto: str
    container_port: int
    host_ip: str = "0.0.0.0"
    host_port: int = 0
    host_end: int = 0
    dual: bool = field(default=True, compare=False)

    @property
    def key(self) -> str:
        return f"{self.container_port}/{self.proto}"


@dataclass(frozen=True)
class Mapping:
    """A reserved mapping: host side chosen, container side resolved to an address."""

    proto: str
    host_ip: str
    host_port: int
    container_ip: str
    container_port: int

    @property
    def key(self) -> str:
        return f"{self.container_port}/{self.proto}"


def _port(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise InvalidParameter(f"invalid {what}: {text!r}") from None
    if not 0 < value < 65536:
        raise InvalidParameter(f"invalid {what}: {text} (must be 1-65535)")
    return value


def _range(text: str, what: str) -> tuple[int, int]:
    first, _, last = text.partition("-")
    start = _port(first, what)
    end = _port(last, what) if last else start
    if end < start:
        raise InvalidParameter(f"invalid {what} range: {text}")
    return start, end


def _proto(text: str | None) -> str:
    proto = (text or "tcp").lower()
    if proto not in PROTOCOLS:
        raise InvalidParameter(f"invalid proto: {text} (tcp and udp are supported)")
    return proto


def _host_ip(text: str | None) -> str:
    if not text:
        return "0.0.0.0"
    text = text.strip("[]")
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise InvalidParameter(f"invalid host IP address: {text!r}") from None
    return str(addr)


def parse_port_key(key: str) -> tuple[int, str]:
    """"80/tcp" -> (80, "tcp"): the keys of ExposedPorts and PortBindings."""
    port, _, proto = str(key).partition("/")
    return _port(port, "container port"), _proto(proto or None)


def parse_publish(specs: list[str]) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, str]]]]:
    """The CLI's `-p` values -> (ExposedPorts, PortBindings) as the create body carries them."""
    exposed: dict[str, dict[str, Any]] = {}
    bindings: dict[str, list[dict[str, str]]] = {}
    for spec in specs:
        match = _SPEC.match(spec.strip())
        if not match:
            raise InvalidParameter(f"invalid port specification: {spec!r}")
        proto = _proto(match["proto"])
        ip = "" if not match["ip"] else _host_ip(match["ip"])
        c_start, c_end = _range(match["cont"], "containerPort")
        host = match["host"] or ""
        if host:
            h_start, h_end = _range(host, "hostPort")
            if h_end - h_start != c_end - c_start and c_end != c_start:
                raise InvalidParameter(f"invalid ranges specified for container and host Ports: {spec}")
        for offset, c_port in enumerate(range(c_start, c_end + 1)):
            key = f"{c_port}/{proto}"
            exposed[key] = {}
            if not host:
                host_port = ""
            elif c_end == c_start:
                host_port = host  # one container port, a host range to pick from
            else:
                host_port = str(h_start + offset)
            bindings.setdefault(key, []).append({"HostIp": ip, "HostPort": host_port})
    return exposed, bindings


def requests(port_bindings: abc.Mapping[str, Any] | None, exposed: abc.Mapping[str, Any] | None,
             publish_all: bool) -> list[PortRequest]:
    """Docker's PortBindings (+ -P over ExposedPorts) -> the list of mappings to make."""
    out: list[PortRequest] = []
    for key, binds in (port_bindings or {}).items():
        c_port, proto = parse_port_key(key)
        for bind in binds or [{}]:
            bind = bind or {}
            ip = _host_ip(bind.get("HostIp"))
            host = str(bind.get("HostPort") or "")
            start, end = _range(host, "hostPort") if host else (0, 0)
            out.append(PortRequest(proto, c_port, ip, start, end if end != start else 0,
                                   dual=not bind.get("HostIp")))
    rootless.check_publish((r.proto, r.host_port) for r in out)
    if publish_all:
        bound = {r.key for r in out}
        for key in exposed or {}:
            c_port, proto = parse_port_key(key)
            if f"{c_port}/{proto}" not in bound:
                out.append(PortRequest(proto, c_port))
    return out


WILDCARD = {4: "0.0.0.0", 6: "::"}


def version(ip: str) -> int:
    return 6 if ":" in ip else 4


def shown(ip: str) -> str:
    """An address as it is written before ":port" in messages ([::] for IPv6)."""
    return f"[{ip}]" if ":" in ip else ip


def overlaps(a_ip: str, b_ip: str) -> bool:
    """Two bindings of one port clash when of one family and either is its wildcard or both are the same."""
    return version(a_ip) == version(b_ip) and (a_ip == b_ip or WILDCARD[version(a_ip)] in (a_ip, b_ip))


def host_port_free(proto: str, ip: str, port: int) -> bool:
    """Whether a process of the host (this thread's netns) could bind the port right now.

    Binding briefly is the only reliable way to see a listener we do not know
    about. SO_REUSEADDR for TCP so that sockets in TIME_WAIT do not count.
    """
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    family = socket.AF_INET6 if version(ip) == 6 else socket.AF_INET
    with socket.socket(family, kind) as sock:
        if proto == "tcp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:  # a listener on 0.0.0.0 does not hold the IPv6 port
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind((ip, port))
            if proto == "tcp":
                sock.listen(1)
        except OSError as exc:
            if exc.errno == 99:  # EADDRNOTAVAIL
                raise InvalidParameter(f"Bind for {shown(ip)}:{port} failed: {ip} is not an address of this host"
                                       ) from None
            return False
    return True


def ephemeral_range() -> tuple[int, int]:
    """The kernel's ip_local_port_range (of the calling thread's netns), where -P picks from."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999
