"""What a container finds in /etc/hosts, /etc/resolv.conf and /etc/hostname.

The runtime bind-mounts the files; this module only decides their contents,
following Docker:

- host mode: copies of the host's hosts and resolv.conf (plus --add-host,
  and --dns* if given);
- user-defined networks: `nameserver 127.0.0.11` (the embedded resolver, which
  forwards to --dns servers or the host's) and `options ndots:0` (or the
  --dns-option ndots:N given), keeping the host's search domains and options
  unless --dns-search / --dns-option say otherwise;
- default bridge and none: the host's resolv.conf without loopback nameservers
  (unreachable from another namespace); Google's public resolvers if none
  remain, as Docker does.
"""

from __future__ import annotations

import ipaddress

from coracle.errors import InvalidParameter

HOSTS_HEADER = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "ff00::0\tip6-mcastprefix\n"
    "ff02::1\tip6-allnodes\n"
    "ff02::2\tip6-allrouters\n"
)
FALLBACK_NAMESERVERS = ["8.8.8.8", "8.8.4.4"]


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def extra_hosts(entries: list[str] | None, host_gateway: str) -> list[tuple[str, str]]:
    """--add-host values ("name:ip" or "name=ip", ip may be host-gateway) -> (ip, name)."""
    out = []
    for entry in entries or []:
        sep = "=" if "=" in entry else ":"
        name, _, ip = entry.partition(sep)
        if not name or not ip:
            raise InvalidParameter(f"invalid extra host {entry!r}: expected name:ip")
        if ip == "host-gateway":
            ip = host_gateway
        try:
            ipaddress.ip_address(ip.strip("[]"))
        except ValueError:
            raise InvalidParameter(f"invalid IP address in add-host: {ip!r}") from None
        out.append((ip.strip("[]"), name))
    return out


def hosts(own: list[tuple[str, str]], extra: list[tuple[str, str]], host_file: str | None = None) -> str:
    """/etc/hosts: the host's copy (host mode) or the standard header, then --add-host, then own names."""
    text = _read(host_file) if host_file else HOSTS_HEADER
    if text and not text.endswith("\n"):
        text += "\n"
    for ip, name in extra + own:
        text += f"{ip}\t{name}\n"
    return text


def resolv_conf(host_text: str, *, embedded: bool, keep_loopback: bool, dns: list[str] | None,
                search: list[str] | None, options: list[str] | None) -> str:
    """/etc/resolv.conf from the host's text and the container's --dns* flags."""
    servers, host_search, host_options = [], [], []
    for line in host_text.splitlines():
        parts = line.split()
        if len(parts) < 2 or parts[0].startswith(("#", ";")):
            continue
        if parts[0] == "nameserver":
            servers.append(parts[1])
        elif parts[0] in ("search", "domain"):
            host_search = parts[1:]
        elif parts[0] == "options":
            host_options += parts[1:]
    if embedded:
        servers = ["127.0.0.11"]
        # Docker's rule: ndots:0 unless the container asked for its own (--dns-option ndots:N); the
        # host's ndots is meant for the host's search domains, not for container names
        ndots = [o for o in options or [] if o.startswith("ndots:")][-1:] or ["ndots:0"]
        opts = ndots + [o for o in (options or host_options) if not o.startswith("ndots:")]
    else:
        if dns:
            servers = list(dns)
        elif not keep_loopback:
            servers = [s for s in servers if not _loopback(s)] or FALLBACK_NAMESERVERS
        opts = list(options or host_options)
    lines = [f"nameserver {s}" for s in servers]
    if search or host_search:
        lines.append("search " + " ".join(search or host_search))
    if opts:
        lines.append("options " + " ".join(opts))
    return "\n".join(lines) + "\n"


def _loopback(server: str) -> bool:
    try:
        return ipaddress.ip_address(server.split("%")[0]).is_loopback
    except ValueError:
        return False
