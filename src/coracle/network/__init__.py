"""Container networking: networks, endpoints, published ports, name resolution.

The engine talks to one `NetworkManager` (manager.py, whose docstring is the
engine-facing contract); everything else here is its plumbing: `ipam`,
`bridge` (netlink), `firewall/` (nftables), `ports`, `dns` and `files`.
"""

from coracle.network.manager import NetworkManager

__all__ = ["NetworkManager"]
