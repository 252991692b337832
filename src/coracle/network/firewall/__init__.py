"""Firewall drivers: what the kernel needs so that bridge networks behave like Docker's.

Two implementations behind one interface: `nftables` (default) and `none`
(for hosts where someone else owns the firewall; then coracle makes no rule
at all and published ports, masquerade and isolation are that someone's job).

The manager describes the world in two kinds of facts and the driver turns them
into kernel state:

- `BridgeRules`: one per bridge network (device, subnet, IPv6 subnet if any,
  internal, ICC, masquerade). Isolation between networks, `internal` and
  outbound NAT (NAT66 too, as Docker does for unique local subnets) follow,
  identically for both families.
- `Mapping` (from ports.py): one per published port and family (the family of
  its container address).

Every method is idempotent for the facts it receives, and `restore()` rebuilds
the whole state from scratch in one atomic step (used at daemon start-up).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from coracle.network.ports import Mapping


@dataclass(frozen=True)
class BridgeRules:
    """What the firewall needs to know about one bridge network."""

    bridge: str
    subnet: str
    internal: bool = False
    icc: bool = True
    masquerade: bool = True
    subnet6: str | None = None


class FirewallDriver(ABC):
    """The kernel side of networks and published ports."""

    name = ""
    # Whether the host's own connections to 127.0.0.1:PORT are DNAT'd into bridges: then the
    # bridges need route_localnet=1, and the driver drops 127.0.0.0/8 arriving from outside lo.
    localhost_dnat = False

    @abstractmethod
    def restore(self, networks: list[BridgeRules], mappings: list[Mapping]) -> None:
        """Replace everything of ours with exactly these facts (start-up)."""

    @abstractmethod
    def add_network(self, net: BridgeRules) -> None: ...

    @abstractmethod
    def remove_network(self, net: BridgeRules) -> None: ...

    @abstractmethod
    def add_mappings(self, mappings: list[Mapping]) -> None:
        """Publish ports: all or none (one atomic change)."""

    @abstractmethod
    def remove_mappings(self, mappings: list[Mapping]) -> None:
        """Unpublish ports; already-gone ones are not an error."""

    @abstractmethod
    def mappings(self) -> list[Mapping]:
        """What the kernel publishes right now (reconciliation compares it with the store)."""

    @abstractmethod
    def teardown(self) -> None:
        """Remove everything of ours (uninstall, tests)."""


class NoFirewall(FirewallDriver):
    """`--firewall none`: coracle touches no firewall; ports are recorded but not published."""

    name = "none"

    def restore(self, networks: list[BridgeRules], mappings: list[Mapping]) -> None:
        pass

    def add_network(self, net: BridgeRules) -> None:
        pass

    def remove_network(self, net: BridgeRules) -> None:
        pass

    def add_mappings(self, mappings: list[Mapping]) -> None:
        pass

    def remove_mappings(self, mappings: list[Mapping]) -> None:
        pass

    def mappings(self) -> list[Mapping]:
        return []

    def teardown(self) -> None:
        pass


def driver(name: str, netns_path: str) -> FirewallDriver:
    """The driver called `name`, acting on the network namespace at `netns_path`."""
    if name == "nftables":
        from coracle.network.firewall.nftables import NftablesFirewall

        return NftablesFirewall(netns_path)
    if name == "none":
        return NoFirewall()
    from coracle.errors import InvalidParameter

    raise InvalidParameter(f"unknown firewall driver {name!r} (nftables or none)")
