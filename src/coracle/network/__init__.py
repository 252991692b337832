"""Container networking: networks, endpoints, published ports, name resolution.

The engine talks to one `NetworkManager` (manager.py, whose docstring is the
engine-facing contract); everything else here is its plumbing: `ipam`,
`bridge` (netlink), `firewall/` (nftables), `ports`, `dns` and `files`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["NetworkManager"]


def __getattr__(name: str) -> Any:
    """NetworkManager on first use: the resolver's own process imports this package too, and needs
    neither the manager nor pyroute2 and nftables behind it."""
    if name == "NetworkManager":
        from coracle.network.manager import NetworkManager

        return NetworkManager
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
