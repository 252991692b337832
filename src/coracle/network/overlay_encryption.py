"""Encrypted overlay networks (`--opt encrypted`): their VXLAN packets between hosts inside IPsec ESP.

What the kernel holds on each host, for each encrypted network and each other
host of the cluster (added when either appears, removed when either goes):

- two security associations (xfrm states), ESP in transport mode with
  AES-GCM (`rfc4106(gcm(aes))`, 128-bit key): this host -> the other and the
  other -> this host. The network's secret (random, made at create, kept in
  its etcd record) is the only shared material: each direction's key and SPI
  are derived from it and the two addresses (HMAC-SHA256), so both ends
  compute the same SA without talking to each other, no two directions or
  networks share a key, and a host that comes back re-makes exactly the SAs
  its peers still have.
- one outbound policy: UDP to the other host's VXLAN port carrying the
  network's mark -> ESP with the network's SAs (reqid = VNI).

and one more outbound policy per network, below the others, blocking its
marked VXLAN packets to any other destination: a peer that left the
membership (its policy gone) or is not programmed yet gets nothing rather than
cleartext.

Which packets are the network's is decided by table `ip coracle_overlay`
(ours alone): its `output` chain marks outgoing VXLAN packets by their VNI
(map `encrypted`; the re-route after the mark takes the policy), and its
`input` chain drops incoming VXLAN packets of an encrypted VNI that did not
arrive inside ESP, so nobody on the underlay can inject cleartext frames into
an encrypted network. A peer's policy without its SA yet drops too.

Anti-replay is off (replay window 0, as Docker's encrypted overlay): a host
whose kernel state was lost restarts its sequence numbers, which a peer's
window would otherwise drop until both re-keyed. Keys are not rotated: a
network keeps its secret until it is removed (re-create it to change it).
On kernels without ESP or GCM (CONFIG_INET_ESP, CONFIG_CRYPTO_GCM)
`unsupported_reason()` says why, and such networks are refused.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import subprocess
from collections.abc import Iterable

from coracle.network import vxlan

__all__ = ["Encryption", "unsupported_reason"]

ALGORITHM = "rfc4106(gcm(aes))"
ICV_BITS = 128
KEY_BYTES = 20  # AES-128 key + 4-byte salt
MARK_BASE = 0x0C000000  # mark = base | VNI: the policy's selector; 24-bit VNIs never reach the base bits
TABLE = "coracle_overlay"
PEER_PRIORITY, BLOCK_PRIORITY = 10, 100  # xfrm prefers the lower: a peer's policy, else the network's block
_STATE = re.compile(r"^src (\S+) dst (\S+)\n\s+proto esp spi (0x[0-9a-f]+) reqid (\d+)", re.M)
_POLICY = re.compile(rf"^src (\S+)/32 dst (\S+)/32 proto udp dport {vxlan.PORT} \n"
                     r"\s+dir out[^\n]*\n\s+mark (0x[0-9a-f]+)/", re.M)


@functools.cache
def unsupported_reason() -> str | None:
    """Why this kernel cannot carry encrypted overlays (None: it can). Probed once, in a namespace of its
    own (unshare), with the SA this module would add."""
    probe = subprocess.run(["unshare", "--net", "ip", "xfrm", "state", "add", "src", "192.0.2.1", "dst",
                            "192.0.2.2", "proto", "esp", "spi", "0x100", "mode", "transport", "aead", ALGORITHM,
                            "0x" + "00" * KEY_BYTES, str(ICV_BITS)], capture_output=True, text=True)
    if probe.returncode == 0:
        return None
    return (f"encrypted overlay networks need the kernel's IPsec ESP with AES-GCM ({ALGORITHM}; "
            f"CONFIG_INET_ESP and CONFIG_CRYPTO_GCM), which this kernel refused: "
            f"{probe.stderr.strip() or probe.returncode}")


def _derive(secret: str, label: str) -> bytes:
    return hmac.new(bytes.fromhex(secret), label.encode(), hashlib.sha256).digest()


def direction(secret: str, vni: int, src: str, dst: str) -> tuple[int, str]:
    """(SPI, key as hex) of the SA carrying network `vni` from host `src` to host `dst`."""
    label = f"{vni} {src}>{dst}"
    spi = 0x100 + int.from_bytes(_derive(secret, "spi " + label)[:4], "big") % (0xFFFFFFFF - 0x100)
    return spi, _derive(secret, "key " + label)[:KEY_BYTES].hex()


class Encryption:
    """The xfrm states and policies and the marking table of one host (see the module docstring)."""

    def __init__(self, host_netns: str, local: str) -> None:
        self.host_netns = host_netns
        self.local = local

    def _run(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["nsenter", f"--net={self.host_netns}", *args], input=stdin, capture_output=True,
                              text=True)
        if check and done.returncode != 0:
            raise OSError(f"{' '.join(args[:3])}: {done.stderr.strip()}")
        return done

    def _table(self) -> None:
        """Table `ip coracle_overlay` (made once; `add` leaves an existing one as it is)."""
        self._run("nft", "-f", "-", stdin=f"""
add table ip {TABLE}
add map ip {TABLE} encrypted {{ typeof @th,96,32 : meta mark; }}
add chain ip {TABLE} output {{ type route hook output priority mangle; }}
add chain ip {TABLE} input {{ type filter hook input priority filter; }}
flush chain ip {TABLE} output
flush chain ip {TABLE} input
add rule ip {TABLE} output udp dport {vxlan.PORT} meta mark set @th,96,32 & 0xffffff00 map @encrypted
add rule ip {TABLE} input udp dport {vxlan.PORT} meta ipsec missing @th,96,32 & 0xffffff00 @encrypted drop
""")

    def sync(self, vni: int, secret: str, peers: Iterable[str]) -> None:
        """Network `vni` encrypted towards exactly `peers` (underlay addresses of the other hosts)."""
        self._table()
        word, mark = f"{vni << 8:#x}", f"{MARK_BASE | vni:#x}"
        self._run("nft", "add", "element", "ip", TABLE, "encrypted", f"{{ {word} : {mark} }}")
        self._run("ip", "xfrm", "policy", "update", *self._selector("0.0.0.0/0", mark), "priority", str(BLOCK_PRIORITY),
                  "action", "block")
        wanted = set(peers) - {self.local}
        for peer in wanted:
            self._pair(vni, secret, peer, mark)
        self._drop_states(vni, keep=wanted)
        for peer in self._policy_peers(mark) - wanted:
            self._drop_policy(peer, mark)

    def remove(self, vni: int) -> None:
        """Everything of network `vni`: its policies, its SAs and its map element."""
        mark = f"{MARK_BASE | vni:#x}"
        for peer in self._policy_peers(mark):
            self._drop_policy(peer, mark)
        self._run("ip", "xfrm", "policy", "delete", *self._selector("0.0.0.0/0", mark), check=False)
        self._drop_states(vni, keep=set())
        self._run("nft", "delete", "element", "ip", TABLE, "encrypted", f"{{ {vni << 8:#x} }}", check=False)

    def _pair(self, vni: int, secret: str, peer: str, mark: str) -> None:
        for src, dst in ((self.local, peer), (peer, self.local)):
            spi, key = direction(secret, vni, src, dst)
            if self._run("ip", "xfrm", "state", "get", "src", src, "dst", dst, "proto", "esp", "spi", hex(spi),
                         check=False).returncode != 0:
                self._run("ip", "xfrm", "state", "add", "src", src, "dst", dst, "proto", "esp", "spi", hex(spi),
                          "reqid", str(vni), "mode", "transport", "replay-window", "0",
                          "aead", ALGORITHM, "0x" + key, str(ICV_BITS))
        self._run("ip", "xfrm", "policy", "update", *self._selector(f"{peer}/32", mark), "priority", str(PEER_PRIORITY),
                  "tmpl", "src", self.local, "dst", peer, "proto", "esp", "reqid", str(vni), "mode", "transport")

    def _selector(self, dst: str, mark: str) -> list[str]:
        """An outbound policy's selector: this host's VXLAN packets to `dst` carrying `mark`."""
        return ["src", f"{self.local}/32", "dst", dst, "proto", "udp", "dport", str(vxlan.PORT), "dir", "out",
                "mark", mark, "mask", "0xffffffff"]

    def _drop_states(self, vni: int, keep: set[str]) -> None:
        listing = self._run("ip", "xfrm", "state", "list", "reqid", str(vni), check=False).stdout
        for src, dst, spi, reqid in _STATE.findall(listing):
            if int(reqid) == vni and ({src, dst} - {self.local}).isdisjoint(keep):
                self._run("ip", "xfrm", "state", "delete", "src", src, "dst", dst, "proto", "esp", "spi", spi,
                          check=False)

    def _policy_peers(self, mark: str) -> set[str]:
        listing = self._run("ip", "xfrm", "policy", "list", "dir", "out", check=False).stdout
        return {dst for src, dst, marked in _POLICY.findall(listing)
                if src == self.local and int(marked, 16) == int(mark, 16)}

    def _drop_policy(self, peer: str, mark: str) -> None:
        self._run("ip", "xfrm", "policy", "delete", *self._selector(f"{peer}/32", mark), check=False)
