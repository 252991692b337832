"""System routes: /version, /info, /events, /system/df, and coracle's /coracle/check."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from coracle import __version__, rootless
from coracle.api import render
from coracle.api.disabled import SWARM_INACTIVE
from coracle.api.filters import parse as parse_filters, values
from coracle.api.http import API_VERSION, DOCKER_COMPAT, MIN_API_VERSION, Request, Response, Router
from coracle.engine import config as cfg
from coracle.errors import InvalidParameter
from coracle.api.containers import sizes
from coracle.api.backend import BuildCacheBackend, ContainerListing, EventSource, ImageBackend, VolumeBackend
from coracle.engine.logs import parse_time
# Docker's registry settings with no daemon options: docker.io is the official, secure index, and
# loopback registries may speak plain HTTP (the rule coracle's registry client applies too).
REGISTRY_CONFIG: dict[str, Any] = {
    "AllowNondistributableArtifactsCIDRs": None, "AllowNondistributableArtifactsHostnames": None,
    "InsecureRegistryCIDRs": ["::1/128", "127.0.0.0/8"],
    "IndexConfigs": {"docker.io": {"Name": "docker.io", "Mirrors": [], "Secure": True, "Official": True}},
    "Mirrors": None,
}


def _sysctl_on(name: str) -> bool:
    """Whether bridged traffic passes the host's iptables (br_netfilter's switch; off when not loaded)."""
    try:
        with open(f"/proc/sys/net/bridge/{name}") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def _proxy(name: str) -> str:
    """The daemon's proxy setting from its environment, credentials masked as Docker masks them."""
    value = os.environ.get(name) or os.environ.get(name.lower()) or ""
    parts = urlsplit(value)
    if parts.username is None:
        return value
    host = parts.hostname or ""
    netloc = "xxxxx:xxxxx@" + host + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def version_info() -> dict[str, Any]:
    uname = os.uname()
    details = {
        "ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION, "GitCommit": "coracle",
        "GoVersion": "python" + platform.python_version(), "Os": "linux",
        "Arch": "amd64" if uname.machine == "x86_64" else uname.machine, "KernelVersion": uname.release,
        "BuildTime": "", "Experimental": "false",
    }
    return {
        "Platform": {"Name": f"coracle {__version__}"},
        # One version everywhere (info's ServerVersion too): the Docker release whose API we serve;
        # coracle's own version is the platform's name and a component of its own.
        "Components": [{"Name": "Engine", "Version": DOCKER_COMPAT, "Details": details},
                       {"Name": "coracle", "Version": __version__, "Details": {"GitCommit": "coracle"}}],
        "Version": DOCKER_COMPAT, **{k: v for k, v in details.items() if k != "Experimental"},
        "Experimental": False,
    }


class SystemRouter:
    """/version, /info, /events and /system/df."""

    def __init__(self, containers: ContainerListing, images: ImageBackend, bus: EventSource,
                 volumes: VolumeBackend, data_root: str, build_cache: BuildCacheBackend | None = None) -> None:
        self.containers, self.images, self.bus, self.volumes = containers, images, bus, volumes
        self.data_root, self.build_cache = data_root, build_cache

    def register(self, router: Router) -> None:
        router.add("GET", "/version", self.version)
        router.add("GET", "/info", self.info)
        router.add("GET", "/events", self.events)
        router.add("GET", "/system/df", self.df)

    async def version(self, req: Request) -> Response:
        return Response.json(version_info())

    async def info(self, req: Request) -> Response:
        records = self.containers.containers()
        running = sum(1 for c in records if c.state.running and not c.state.paused)
        paused = sum(1 for c in records if c.state.paused)
        uname = os.uname()
        from coracle import cgroups

        cgroup_version = "2" if cgroups.detect().__name__ == "V2Manager" else "1"
        return Response.json({
            "ID": "coracle", "Containers": len(records), "ContainersRunning": running,
            "ContainersPaused": paused, "ContainersStopped": len(records) - running - paused,
            "Images": len(await asyncio.to_thread(self.images.list)), "Driver": "overlay2",
            "DriverStatus": [["Backing Filesystem", "extfs"]],
            "Plugins": {"Network": ["bridge", "host", "none"], "Volume": ["local"], "Log": sorted(cfg.LOG_DRIVERS)},
            "MemoryLimit": True, "SwapLimit": False, "CpuCfsPeriod": True, "CpuCfsQuota": True, "CPUShares": True,
            "CPUSet": True, "PidsLimit": True, "OomKillDisable": True, "IPv4Forwarding": True,
            "Debug": False, "NFd": len(os.listdir("/proc/self/fd")), "NGoroutines": 0,
            "SystemTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "LoggingDriver": "json-file",
            "CgroupDriver": cgroups.driver(), "CgroupVersion": cgroup_version,
            "NEventsListener": 0,
            "KernelVersion": uname.release, "OperatingSystem": _os_name(), "OSType": "linux",
            "OSVersion": "", "Architecture": uname.machine, "NCPU": os.cpu_count(),
            "MemTotal": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "IndexServerAddress": "",
            "RegistryConfig": REGISTRY_CONFIG, "BridgeNfIptables": _sysctl_on("bridge-nf-call-iptables"),
            "BridgeNfIp6tables": _sysctl_on("bridge-nf-call-ip6tables"), "HttpProxy": _proxy("HTTP_PROXY"),
            "HttpsProxy": _proxy("HTTPS_PROXY"), "NoProxy": _proxy("NO_PROXY"),
            "DockerRootDir": self.data_root, "Name": uname.nodename, "Labels": [], "ExperimentalBuild": False,
            "ServerVersion": DOCKER_COMPAT, "Runtimes": {"coracle": {"path": "coracle-monitor"}},
            "DefaultRuntime": "coracle", "LiveRestoreEnabled": True, "Isolation": "", "InitBinary": "tini",
            "SecurityOptions": ["name=seccomp,profile=builtin", *(["name=rootless"] if rootless.active() else [])],
            "Warnings": [], "Swarm": SWARM_INACTIVE,
        })

    async def events(self, req: Request) -> Any:
        # `--since 0` asks for everything still in the history (parse_time reads "0" as unset).
        since = 0.0 if req.q("since") == "0" else parse_time(req.q("since"))
        until = parse_time(req.q("until"))
        filters = parse_filters(req.qjson("filters"))

        def keep(ev: dict[str, Any]) -> bool:
            checks = {
                "type": ev["Type"], "event": ev["Action"].split(":")[0], "container": None,
                "network": None, "image": None, "volume": None,
            }
            for key in ("type", "event"):
                wanted = values(filters, key)
                if wanted and checks[key] not in wanted:
                    return False
            for key in ("container", "network", "image", "volume"):
                wanted = values(filters, key)
                if wanted and not (ev["Type"] == key and (
                        any(ev["Actor"]["ID"].startswith(w) or ev["Actor"]["Attributes"].get("name") == w
                            for w in wanted))):
                    return False
            labels = values(filters, "label")
            for item in labels:
                k, _, v = item.partition("=")
                if ev["Actor"]["Attributes"].get(k) != (v or ev["Actor"]["Attributes"].get(k)) or \
                        k not in ev["Actor"]["Attributes"]:
                    return False
            return True

        sub = self.bus.subscribe()

        async def produce(stream: Any) -> None:
            try:
                if since is not None:
                    for ev in self.bus.since(int(since * 1e9), int(until * 1e9) if until else None):
                        if keep(ev):
                            await stream.write(json.dumps(ev).encode() + b"\n")
                deadline = None if until is None else until
                while True:
                    timeout = None if deadline is None else max(0.0, deadline - time.time())
                    if timeout == 0.0:
                        return
                    try:
                        ev = await asyncio.wait_for(sub.get(), timeout)
                    except TimeoutError:
                        return
                    if keep(ev):
                        await stream.write(json.dumps(ev).encode() + b"\n")
            finally:
                sub.close()

        return Response.stream(produce, content_type="application/json")

    async def df(self, req: Request) -> Response:
        wanted = set(req.query.get("type", []))
        for kind in wanted - set(render.DISK_USAGE_TYPES):
            raise InvalidParameter(f"unknown object type: {kind}")
        every = self.containers.containers()
        listed = [render.summary(c, await asyncio.to_thread(sizes, self.containers, c.id)) for c in every]
        per_image = Counter(c.image_id for c in every)  # containers in any state, as Docker counts them
        usage = await asyncio.to_thread(self.images.disk_usage, lambda image_id: per_image[image_id])
        volumes = self.volumes
        used = await asyncio.to_thread(lambda: [volumes.inspect(v, with_usage=True) for v in volumes.all()])
        cache = await asyncio.to_thread(self.build_cache.usage) if self.build_cache else []
        return Response.json(render.disk_usage(req.version, wanted, usage.get("LayersSize", 0),
                                               usage.get("Images", []), listed, used, cache))


def _os_name() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "Linux"
