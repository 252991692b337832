"""Legacy container links (`--link NAME[:ALIAS]`), as Docker keeps them for old compose files.

A link gives the linking container the target's address under the alias in
/etc/hosts and the target's coordinates as environment variables
(`ALIAS_PORT_80_TCP_ADDR`, `ALIAS_NAME`, `ALIAS_ENV_*`...), computed when the
linking container starts, from the target as it runs then. They are stored
the way Docker stores them: "/target:/linker/alias".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from coracle.engine.container import Container
from coracle.errors import Conflict, InvalidParameter, NotFound
from coracle.network.mode import NetworkMode

if TYPE_CHECKING:
    from coracle.engine.engine import Engine

# The target's variables Docker leaves out of ALIAS_ENV_*.
_NOT_EXPORTED = {"HOME", "HOSTNAME", "PATH"}


@dataclass(frozen=True)
class Link:
    alias: str
    name: str            # the target's name, without the leading /
    short_id: str
    address: str
    ports: list[tuple[int, str]]
    env: list[str]
    linker: str          # the linking container's name, without the leading /


def parse(specs: list[str] | None, mode: NetworkMode) -> list[tuple[str, str]]:
    """`--link` values -> (target, alias) pairs; Docker's refusals for modes that cannot have links."""
    if not specs:
        return []
    if mode.is_host:
        raise InvalidParameter("conflicting options: host type networking can't be used with links. "
                               "This would result in undefined behavior")
    if mode.is_container:
        raise InvalidParameter("conflicting options: container type network can't be used with links. "
                               "This would result in undefined behavior")
    pairs = []
    for spec in specs:
        if not isinstance(spec, str) or not spec.strip(":"):
            raise InvalidParameter(f"invalid link format: {spec!r}")
        target, _, alias = spec.partition(":")
        target = target.lstrip("/")
        alias = (alias or target).rsplit("/", 1)[-1]  # "/web/db" (inspect's form) or "db"
        pairs.append((target, alias))
    return pairs


def stored(pairs: list[tuple[str, str]], targets: list[Container], linker: str) -> list[str]:
    """Docker's HostConfig.Links: "/target:/linker/alias"."""
    return [f"{t.name}:{linker}/{alias}" for (_, alias), t in zip(pairs, targets, strict=True)]


def resolve(engine: Engine, c: Container) -> list[Link]:
    """The links of a container about to start; each target must be running (as Docker insists)."""
    out = []
    for entry in c.host_config.links:
        target_name, _, link_path = entry.partition(":")
        alias = link_path.rsplit("/", 1)[-1]
        try:
            target = engine.container(target_name)
        except NotFound:
            raise NotFound(f"could not get container for {target_name.lstrip('/')}") from None
        if not target.state.running:
            raise Conflict(f"Cannot link to a non running container: {target.name} AS {link_path}")
        networks = target.networks
        endpoint = networks.get(c.host_config.mode.name) or next(iter(networks.values()), None)
        address = endpoint.address if endpoint else ""
        ports = sorted((int(p.partition("/")[0]), p.partition("/")[2] or "tcp")
                       for p in target.config.get("ExposedPorts") or {})
        out.append(Link(alias=alias, name=target.short_name, short_id=target.id[:12],
                        address=address, ports=ports, env=target.config.get("Env") or [], linker=c.short_name))
    return out


def environment(links: list[Link]) -> list[str]:
    """The variables Docker sets for each link, in its order."""
    env: list[str] = []
    for link in links:
        prefix = link.alias.upper().replace("-", "_").replace(".", "_")
        if link.ports:
            port, proto = link.ports[0]
            env.append(f"{prefix}_PORT={proto}://{link.address}:{port}")
        for port, proto in link.ports:
            key = f"{prefix}_PORT_{port}_{proto.upper()}"
            env += [f"{key}={proto}://{link.address}:{port}", f"{key}_ADDR={link.address}",
                    f"{key}_PORT={port}", f"{key}_PROTO={proto}"]
        env.append(f"{prefix}_NAME=/{link.linker}/{link.alias}")
        for item in link.env:
            key, _, value = item.partition("=")
            if key and key not in _NOT_EXPORTED:
                env.append(f"{prefix}_ENV_{key}={value}")
    return env


def hosts_lines(links: list[Link]) -> str:
    """/etc/hosts lines: the target's address under the alias, its short id and its name."""
    lines = []
    for link in links:
        if link.address:
            names = dict.fromkeys([link.alias, link.short_id, link.name])
            lines.append(f"{link.address}\t{' '.join(names)}\n")
    return "".join(lines)


def remove(engine: Engine, path: str) -> Container:
    """`docker rm --link /linker/alias`: drop one link from the linking container; returns its record."""
    linker, _, alias = path.strip("/").rpartition("/")
    if not linker or not alias:
        raise InvalidParameter(f"Conflict, cannot remove the default link name of the container {path}")
    c = engine.container(linker)
    links = c.host_config.links
    kept = [e for e in links if e.partition(":")[2].rsplit("/", 1)[-1] != alias]
    if len(kept) == len(links):
        raise NotFound(f"Could not find link {path}")
    c.host_config.links = kept
    return c
