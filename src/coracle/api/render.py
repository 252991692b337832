"""Docker's JSON for containers, rendered from the engine's records at the API edge.

Why here: the engine works on typed records (coracle.engine.container); which
keys Docker's clients expect, with which defaults and for which API version, is
the API's business. inspect (GET /containers/{id}/json), list (docker ps) and
the containers of `system df` are rendered by this module only.
"""

from __future__ import annotations

import json
import time
from json.encoder import encode_basestring_ascii  # what json.dumps does with a str, without its overhead
from typing import Any

from coracle import clock
from coracle.engine.container import Container, State

# What Docker shows of the masking of a container's /proc and /sys when the
# request left them unset (moby's oci.DefaultSpec; null for privileged ones).
DEFAULT_MASKED_PATHS = [
    "/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
    "/sys/devices/virtual/powercap",
]
DEFAULT_READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
RUNTIME = "runc"  # the OCI runtime name Docker's clients know; coracle's monitor plays its part

# NetworkSettings of a container with no live endpoint, as Docker shows it.
_UNWIRED = {
    "Bridge": "", "SandboxID": "", "SandboxKey": "", "Ports": {}, "HairpinMode": False,
    "LinkLocalIPv6Address": "", "LinkLocalIPv6PrefixLen": 0, "SecondaryIPAddresses": None,
    "SecondaryIPv6Addresses": None, "EndpointID": "", "Gateway": "", "GlobalIPv6Address": "",
    "GlobalIPv6PrefixLen": 0, "IPAddress": "", "IPPrefixLen": 0, "IPv6Gateway": "", "MacAddress": "",
}
_UNWIRED_ENDPOINT = {
    "IPAMConfig": None, "Links": None, "Aliases": None, "MacAddress": "", "DriverOpts": None, "NetworkID": "",
    "EndpointID": "", "Gateway": "", "IPAddress": "", "IPPrefixLen": 0, "IPv6Gateway": "", "GlobalIPv6Address": "",
    "GlobalIPv6PrefixLen": 0, "DNSNames": None,
}


def older_than(version: str, wanted: tuple[int, int]) -> bool:
    """The client's API version (empty: the newest) is below `wanted`."""
    if not version:
        return False
    major, _, minor = version.partition(".")
    return (int(major), int(minor or 0)) < wanted


def inspect(c: Container, exec_ids: list[str], version: str = "") -> dict[str, Any]:
    """GET /containers/{id}/json."""
    return {
        "Id": c.id, "Created": c.created, "Path": c.path, "Args": c.args, "State": c.state.stored(),
        "Image": c.image_id, "ResolvConfPath": c.resolv_conf_path, "HostnamePath": c.hostname_path,
        "HostsPath": c.hosts_path, "LogPath": c.log_path, "Name": c.name, "RestartCount": c.restart_count,
        "Driver": "overlay2", "Platform": "linux", "MountLabel": "", "ProcessLabel": "", "AppArmorProfile": "",
        **{k: v for k, v in c.extra.items() if k not in ("Driver", "Platform")},
        "ExecIDs": exec_ids or None, "HostConfig": host_config(c), "GraphDriver": c.layers.stored(),
        "Mounts": mounts(c), "Config": c.config, "NetworkSettings": network_settings(c, version),
    }


def host_config(c: Container) -> dict[str, Any]:
    hc = dict(c.host_config.raw)
    hc["Runtime"] = hc.get("Runtime") or RUNTIME
    privileged = c.host_config.privileged
    for key, default in (("MaskedPaths", DEFAULT_MASKED_PATHS), ("ReadonlyPaths", DEFAULT_READONLY_PATHS)):
        if hc.get(key) is None:
            hc[key] = None if privileged else list(default)
    return hc


def mounts(c: Container) -> list[dict[str, Any]]:
    """Mounts: Docker's MountPoint for each (the stored shape is Docker's)."""
    return [m.stored() for m in c.mounts]


def endpoints(c: Container) -> dict[str, dict[str, Any]]:
    """NetworkSettings.Networks as stored: each network's EndpointSettings, only the asked options
    of a network not joined yet."""
    return {name: a.stored() for name, a in c.networks.items()}


def network_settings(c: Container, version: str = "") -> dict[str, Any]:
    """NetworkSettings: as the network layer wired it, or, before any start, the networks it will join."""
    settings = {**_UNWIRED, **c.network_settings.sandbox}
    networks = {name: {**_UNWIRED_ENDPOINT, **ep} for name, ep in endpoints(c).items()}
    if older_than(version, (1, 45)):  # before 1.45 the aliases on user networks had the short id and hostname
        extra = [c.id[:12], c.config.get("Hostname") or ""]
        for name, ep in networks.items():
            if name not in ("default", "bridge", "host", "none"):
                ep["Aliases"] = list(dict.fromkeys(a for a in [*(ep.get("Aliases") or []), *extra] if a))
    settings["Networks"] = networks
    return settings


def command_line(path: str, args: list[str]) -> str:
    """The list's Command as Docker writes it: arguments holding a space in single quotes."""
    return " ".join([path, *(f"'{a}'" if " " in a else a for a in args)])


def summary(c: Container, sizes: dict[str, int] | None = None) -> dict[str, Any]:
    """One element of GET /containers/json (docker ps)."""
    ports = []
    for key, bindings in c.network_settings.ports.items():
        number, _, proto = key.partition("/")
        for b in bindings or [{}]:
            entry: dict[str, Any] = {"PrivatePort": int(number), "Type": proto or "tcp"}
            if b.get("HostPort"):
                entry.update({"IP": b.get("HostIp") or "0.0.0.0", "PublicPort": int(b["HostPort"])})
            ports.append(entry)
    out = {
        "Id": c.id, "Names": [c.name], "Image": c.image_ref, "ImageID": c.image_id,
        "Command": command_line(c.path, c.args), "Created": _epoch(c.created),
        "Ports": ports, "Labels": c.labels, "State": c.state.status,
        "Status": status_text(c.state), "HostConfig": {"NetworkMode": c.host_config.network_mode},
        "NetworkSettings": {"Networks": endpoints(c)}, "Mounts": mounts(c),
    }
    if sizes is not None:
        out.update(sizes)
    return out


class SummaryRows:
    """`ps` rows kept encoded, one per container record, so that listing 200 containers is a join of
    bytes rather than 200 summaries built and encoded (most of a list's cost). Only Status, which
    moves with the clock, is made at each call. A record is typed once per save (the engine's
    index), so identity says whether a row is still right."""

    def __init__(self) -> None:
        self._rows: dict[str, tuple[Container, bytes]] = {}

    def encoded(self, c: Container) -> bytes:
        hit = self._rows.get(c.id)
        if hit is None or hit[0] is not c:
            fields = summary(c)
            del fields["Status"]
            hit = (c, json.dumps(fields).encode()[:-1] + b', "Status": ')
            self._rows[c.id] = hit
        return hit[1] + encode_basestring_ascii(status_text(c.state)).encode() + b"}"

    def listing(self, shown: list[Container], every: list[Container]) -> bytes:
        """The JSON array of `shown`; rows of containers no longer in `every` are dropped."""
        body = b"[" + b", ".join(self.encoded(c) for c in shown) + b"]\n"
        if len(self._rows) > len(every):
            alive = {c.id for c in every}
            self._rows = {cid: row for cid, row in self._rows.items() if cid in alive}
        return body


DISK_USAGE_TYPES = ("container", "image", "volume", "build-cache")


def disk_usage(version: str, wanted: set[str], layers_size: int, images: list[dict[str, Any]],
               containers: list[dict[str, Any]], volumes: list[dict[str, Any]],
               build_cache: list[dict[str, Any]]) -> dict[str, Any]:
    """GET /system/df as moby's router shapes it for the client's API version: the kinds not asked
    for (`type`, from 1.42) are null; an image row's VirtualSize is gone from 1.44 (before it, equal
    to Size); before 1.42 every kind is there and BuilderSize sums the build cache (omitted at 0)."""
    old = older_than(version, (1, 42))
    wanted = set(DISK_USAGE_TYPES) if old or not wanted else wanted
    if older_than(version, (1, 44)):
        images = [{**i, "VirtualSize": i["Size"]} for i in images]
    else:
        images = [{k: v for k, v in i.items() if k != "VirtualSize"} for i in images]
    out: dict[str, Any] = {
        "LayersSize": layers_size if "image" in wanted else 0,
        "Images": images if "image" in wanted else None,
        "Containers": containers if "container" in wanted else None,
        "Volumes": volumes if "volume" in wanted else None,
        "BuildCache": build_cache if "build-cache" in wanted else None,
    }
    if old and sum(b.get("Size", 0) for b in build_cache):
        out["BuilderSize"] = sum(b.get("Size", 0) for b in build_cache)
    return out


def _epoch(stamp: str) -> int:
    return int(clock.epoch(stamp))


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 1:
        return "Less than a second"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size * (2 if unit != "day" else 1):
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    if seconds >= 60:
        return "About a minute"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


def status_text(state: State) -> str:
    """Docker's human status: "Up 3 seconds", "Exited (0) 2 minutes ago", "Created"."""
    now = time.time()
    if state.restarting:
        return f"Restarting ({state.exit_code}) {_ago(now - _epoch(state.finished_at))} ago"
    if state.running:
        text = f"Up {_ago(now - _epoch(state.started_at))}"
        if state.paused:
            return text + " (Paused)"
        health = state.health.status if state.health else ""
        if health:
            return f"{text} ({'health: starting' if health == 'starting' else health})"
        return text
    if state.status == "created":
        return "Created"
    if state.status == "removing":
        return "Removal In Progress"
    return f"Exited ({state.exit_code}) {_ago(now - _epoch(state.finished_at))} ago"
