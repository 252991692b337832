"""The container record: what the engine knows about one container, as typed fields.

Why: the store keeps each container in Docker's inspect shape (that shape is
also what rebuilds a record from the file beside the container), and handing
that JSON between layers made every reader know Docker's key names. Readers of
the engine get this record instead; the Docker JSON of inspect, list and df is
rendered from it at the API edge (coracle.api.render). `from_stored` and
`stored` convert without loss, so nothing about the stored shape changes.

Config and host config stay Docker-shaped inside (the client's request, sent
back verbatim); the fields the engine decides on are typed properties over them.
The mounts (`MountPoint`) and the networks a container is on (`NetworkAttachment`
under `NetworkSettings`) are typed; each record part converts itself to and from
its stored keys (`from_stored`/`stored`), the one place that knows them.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from coracle.clock import ZERO
from coracle.network.driver import Endpoint, EndpointOptions
from coracle.network.mode import NetworkMode

# The stored keys this module turns into typed fields; any other stored key rides along in `extra`.
_TYPED = {"Id", "Name", "Created", "Path", "Args", "Image", "State", "Config", "HostConfig", "NetworkingConfig",
          "NetworkSettings", "Mounts", "ResolvConfPath", "HostnamePath", "HostsPath", "LogPath", "RestartCount",
          "GraphDriver", "Coracle"}


@dataclass
class Health:
    """State.Health: the healthcheck's verdict and its last results."""

    status: str
    failing_streak: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_stored(cls, doc: dict[str, Any] | None) -> Health | None:
        if not doc:
            return None
        return cls(doc.get("Status") or "", int(doc.get("FailingStreak") or 0), list(doc.get("Log") or []))

    def stored(self) -> dict[str, Any]:
        return {"Status": self.status, "FailingStreak": self.failing_streak, "Log": self.log}


@dataclass
class State:
    """The lifecycle state: Docker's State object."""

    status: str = "created"
    running: bool = False
    paused: bool = False
    restarting: bool = False
    oom_killed: bool = False
    dead: bool = False
    pid: int = 0
    exit_code: int = 0
    error: str = ""
    started_at: str = ZERO
    finished_at: str = ZERO
    health: Health | None = None

    @classmethod
    def from_stored(cls, doc: dict[str, Any]) -> State:
        return cls(status=doc["Status"], running=bool(doc["Running"]), paused=bool(doc.get("Paused")),
                   restarting=bool(doc.get("Restarting")), oom_killed=bool(doc.get("OOMKilled")),
                   dead=bool(doc.get("Dead")), pid=int(doc.get("Pid") or 0), exit_code=int(doc.get("ExitCode") or 0),
                   error=doc.get("Error") or "", started_at=doc.get("StartedAt") or ZERO,
                   finished_at=doc.get("FinishedAt") or ZERO, health=Health.from_stored(doc.get("Health")))

    def stored(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "Status": self.status, "Running": self.running, "Paused": self.paused, "Restarting": self.restarting,
            "OOMKilled": self.oom_killed, "Dead": self.dead, "Pid": self.pid, "ExitCode": self.exit_code,
            "Error": self.error, "StartedAt": self.started_at, "FinishedAt": self.finished_at,
        }
        if self.health is not None:
            out["Health"] = self.health.stored()
        return out

    @property
    def ever_started(self) -> bool:
        return self.started_at[:4] != ZERO[:4]

    @property
    def ever_finished(self) -> bool:
        return self.finished_at[:4] != ZERO[:4]

    def run(self, started_at: str) -> None:
        """Its PID 1 (already in `pid`) was released: running, with the last run's outcome cleared."""
        self.status, self.running, self.paused, self.restarting = "running", True, False, False
        self.oom_killed = self.dead = False
        self.exit_code, self.error = 0, ""
        self.started_at, self.finished_at = started_at, ZERO

    def follow(self, pid: int) -> None:
        """The process the monitor runs for it, found after a save was lost: running, as that PID."""
        self.status, self.running, self.paused, self.restarting = "running", True, False, False
        self.pid, self.exit_code, self.error = pid, 0, ""

    def failed_start(self, exit_code: int, error: str) -> None:
        """A start that did not get to release the process: back where it was, with the error."""
        self.status = "exited" if self.ever_started else "created"
        self.running = self.restarting = False
        self.pid, self.exit_code, self.error = 0, exit_code, error

    def exit(self, exit_code: int, oom_killed: bool, finished_at: str) -> None:
        """Its PID 1 ended."""
        self.status, self.running, self.paused, self.pid = "exited", False, False, 0
        self.exit_code, self.oom_killed, self.finished_at = exit_code, oom_killed, finished_at

    def await_restart(self) -> None:
        """Exited, with its restart policy's timer running."""
        self.restarting, self.status = True, "restarting"

    def cancel_restart(self) -> None:
        """A stop while the restart timer ran: it stays exited."""
        self.restarting, self.status = False, "exited"

    def freeze(self, paused: bool) -> None:
        self.paused, self.status = paused, "paused" if paused else "running"

    @property
    def active(self) -> bool:
        """Running, or about to run again under its restart policy: what a wait for "not-running" waits out."""
        return self.running or self.restarting


@dataclass
class RestartPolicy:
    name: str = "no"
    maximum_retry_count: int = 0


@dataclass
class HostSettings:
    """HostConfig, Docker-shaped (sent back verbatim), with the fields the engine decides on typed."""

    raw: dict[str, Any]

    @property
    def network_mode(self) -> str:
        return str(self.raw.get("NetworkMode") or "")

    @property
    def mode(self) -> NetworkMode:
        return NetworkMode.parse(self.raw.get("NetworkMode"))

    @property
    def auto_remove(self) -> bool:
        return bool(self.raw.get("AutoRemove"))

    @auto_remove.setter
    def auto_remove(self, value: bool) -> None:
        self.raw["AutoRemove"] = value

    @property
    def links(self) -> list[str]:
        """HostConfig.Links: "/target:/linker/alias" entries."""
        return list(self.raw.get("Links") or [])

    @links.setter
    def links(self, value: list[str]) -> None:
        self.raw["Links"] = value or None

    @property
    def privileged(self) -> bool:
        return bool(self.raw.get("Privileged"))

    @property
    def restart_policy(self) -> RestartPolicy:
        doc = self.raw.get("RestartPolicy") or {}
        return RestartPolicy(doc.get("Name") or "no", int(doc.get("MaximumRetryCount") or 0))

    @property
    def log_driver(self) -> str:
        return str((self.raw.get("LogConfig") or {}).get("Type") or "json-file")

    @property
    def cgroup_parent(self) -> str:
        return str(self.raw.get("CgroupParent") or "")


@dataclass(frozen=True)
class MountPoint:
    """One entry of Mounts: a bind, a volume or a tmpfs at a destination inside the container."""

    type: str  # "bind", "volume" or "tmpfs"
    source: str  # the host path (a volume's _data directory); "" for a tmpfs
    destination: str
    mode: str  # "ro" for read-only binds and volumes, "nocopy" for volumes, a tmpfs's mount options
    rw: bool
    propagation: str = ""  # a bind's ("rprivate" unless asked)
    name: str = ""  # a volume's
    driver: str = ""  # a volume's

    @property
    def is_volume(self) -> bool:
        return self.type == "volume"

    @property
    def anonymous(self) -> bool:
        """A volume the container did not name (`-v /dst`, an image's VOLUME): its name is a random id."""
        return self.is_volume and bool(re.fullmatch(r"[0-9a-f]{64}", self.name))

    @property
    def copies_up(self) -> bool:
        """A volume filled from the image at its destination on first use (unless `nocopy`)."""
        return self.is_volume and "nocopy" not in self.mode.split(",")

    def with_access(self, rw: bool) -> MountPoint:
        """The same mount, read-write or read-only (--volumes-from ctr:ro|rw)."""
        return replace(self, rw=rw, mode="" if rw else "ro")

    @classmethod
    def from_stored(cls, doc: Mapping[str, Any]) -> MountPoint:
        return cls(type=doc["Type"], source=doc.get("Source") or "", destination=doc["Destination"],
                   mode=doc.get("Mode") or "", rw=bool(doc["RW"]), propagation=doc.get("Propagation") or "",
                   name=doc.get("Name") or "", driver=doc.get("Driver") or "")

    def stored(self) -> dict[str, Any]:
        """Docker's MountPoint; Name and Driver are a volume's only."""
        out: dict[str, Any] = {"Type": self.type, "Source": self.source, "Destination": self.destination,
                               "Mode": self.mode, "RW": self.rw, "Propagation": self.propagation}
        if self.is_volume:
            out.update(Name=self.name, Driver=self.driver)
        return out


# The endpoint options a client may ask for (EndpointsConfig) that a planned entry shows before the first start.
_ASKED = ("IPAMConfig", "Links", "Aliases", "MacAddress", "DriverOpts")


@dataclass
class NetworkAttachment:
    """One network of a container: an entry of NetworkSettings.Networks (Docker's EndpointSettings).

    Before its first join it is the endpoint options the client asked for, kept as
    asked (`asked`: the client's words, like Config). Once the network layer has
    answered (a join, or a `connect` while stopped) it is that answer: the network
    layer's own `Endpoint` (coracle.network.driver; the container's side and the
    interface names stay the network layer's), its addresses cleared while the
    container is stopped.
    """

    endpoint: Endpoint | None = None
    asked: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_stored(cls, doc: Mapping[str, Any]) -> NetworkAttachment:
        if "EndpointID" in doc and "NetworkID" in doc:
            return cls(endpoint=Endpoint.from_body(doc))
        return cls(asked=dict(doc))

    @classmethod
    def planned(cls, settings: Mapping[str, Any] | None) -> NetworkAttachment:
        """A network to join at the next start, with the endpoint options a client asked for."""
        return cls(asked={k: v for k, v in (settings or {}).items() if k in _ASKED})

    def stored(self) -> dict[str, Any]:
        return self.endpoint.settings() if self.endpoint is not None else dict(self.asked)

    @property
    def network_id(self) -> str:
        return self.endpoint.network_id if self.endpoint is not None else ""

    @property
    def address(self) -> str:
        """Its IPv4 address while the container runs ("" otherwise)."""
        return self.endpoint.ipv4 if self.endpoint is not None else ""

    def options(self, network: str) -> EndpointOptions:
        """What the network layer is asked for this network at the next join."""
        return EndpointOptions.from_docker(network, self.stored())

    def reassign(self, network_id: str) -> None:
        """Its network is known under a new id (a builtin network made again after the store was lost)."""
        if self.endpoint is not None:
            self.endpoint = replace(self.endpoint, network_id=network_id)

    def unwire(self) -> None:
        """Its namespace is gone: no endpoint id, address, gateway or MAC (the network, its options and
        names stay)."""
        if self.endpoint is not None:
            self.endpoint = replace(self.endpoint, id="", ipv4="", gateway="", mac_address="")
        elif "MacAddress" in self.asked:
            self.asked["MacAddress"] = ""


def planned_networks(mode: NetworkMode, networking: dict[str, Any], config: dict[str, Any]
                     ) -> dict[str, NetworkAttachment]:
    """NetworkSettings.Networks of a new container: the networks it will join, without addresses.

    As moby's updateContainerNetworkSettings: the networks of NetworkingConfig when
    it names any, otherwise the mode's network; none in container mode or with the
    network disabled. Listed at create, so that `network disconnect` of a created
    container finds them and clients (compose) see what it will join."""
    if config.get("NetworkDisabled") or mode.is_container:
        return {}
    wanted = networking.get("EndpointsConfig") or {}
    if not wanted:
        return {mode.name: NetworkAttachment.planned({})}
    return {ref: NetworkAttachment.planned(asked) for ref, asked in wanted.items()}


@dataclass
class NetworkSettings:
    """NetworkSettings: the networks the container is on, typed, and the rest as the network layer
    answered it (sandbox, published ports, the default bridge's addresses at the top level)."""

    networks: dict[str, NetworkAttachment] = field(default_factory=dict)
    sandbox: dict[str, Any] = field(default_factory=dict)  # every key but Networks, Docker-shaped

    @classmethod
    def from_stored(cls, doc: Mapping[str, Any]) -> NetworkSettings:
        return cls({name: NetworkAttachment.from_stored(ep) for name, ep in (doc.get("Networks") or {}).items()},
                   {k: v for k, v in doc.items() if k != "Networks"})

    def stored(self) -> dict[str, Any]:
        """Docker's shape: what the store keeps and what the network layer reads back (files, adoption)."""
        return {**self.sandbox, "Networks": {name: a.stored() for name, a in self.networks.items()}}

    @property
    def ports(self) -> dict[str, list[dict[str, str]] | None]:
        """Ports: "80/tcp" -> its host bindings (None when exposed but not published)."""
        return dict(self.sandbox.get("Ports") or {})


@dataclass
class Layers:
    """GraphDriver.Data: the overlay directories of the container's root filesystem."""

    upper: str
    work: str
    merged: str
    lower: str = ""  # the image's layer directories, ":"-joined as overlayfs takes them

    @classmethod
    def from_stored(cls, doc: dict[str, Any]) -> Layers:
        data = doc.get("Data") or {}
        return cls(data.get("UpperDir", ""), data.get("WorkDir", ""), data.get("MergedDir", ""),
                   data.get("LowerDir", ""))

    def stored(self) -> dict[str, Any]:
        data = {"UpperDir": self.upper, "WorkDir": self.work, "MergedDir": self.merged}
        if self.lower:
            data = {"LowerDir": self.lower, **data}
        return {"Name": "overlay2", "Data": data}


@dataclass
class Private:
    """What the engine keeps about a container that Docker's inspect does not show."""

    log_file: str = ""
    log_max_size: int | None = None
    log_max_file: int | None = None
    log_attrs: dict[str, str] = field(default_factory=dict)
    log_compress: bool = False
    manual_stop: bool = False
    start_ticks: int | None = None
    cgroup_path: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    _KEYS = ("LogFile", "LogMaxSize", "LogMaxFile", "LogAttrs", "LogCompress", "ManualStop", "StartTicks",
             "CgroupPath")

    @classmethod
    def from_stored(cls, doc: dict[str, Any]) -> Private:
        return cls(log_file=doc.get("LogFile", ""), log_max_size=doc.get("LogMaxSize"),
                   log_max_file=doc.get("LogMaxFile"), log_attrs=dict(doc.get("LogAttrs") or {}),
                   log_compress=bool(doc.get("LogCompress")), manual_stop=bool(doc.get("ManualStop")),
                   start_ticks=doc.get("StartTicks"), cgroup_path=doc.get("CgroupPath") or "",
                   extra={k: v for k, v in doc.items() if k not in cls._KEYS})

    def stored(self) -> dict[str, Any]:
        out: dict[str, Any] = {"LogMaxSize": self.log_max_size, "LogMaxFile": self.log_max_file,
                               "ManualStop": self.manual_stop, "LogAttrs": self.log_attrs, "LogFile": self.log_file,
                               "LogCompress": self.log_compress, **self.extra}
        if self.start_ticks is not None:
            out["StartTicks"] = self.start_ticks
        if self.cgroup_path:
            out["CgroupPath"] = self.cgroup_path
        return out


@dataclass
class Container:
    """One container: identity, configuration, state, network settings, mounts and files."""

    id: str
    name: str  # with Docker's leading "/"
    created: str
    path: str
    args: list[str]
    image_id: str
    state: State
    config: dict[str, Any]
    host_config: HostSettings
    networking_config: dict[str, Any]
    network_settings: NetworkSettings
    mounts: list[MountPoint]
    resolv_conf_path: str
    hostname_path: str
    hosts_path: str
    log_path: str  # shown only for json-file, as Docker does
    restart_count: int
    layers: Layers
    private: Private
    extra: dict[str, Any] = field(default_factory=dict)  # other stored keys, kept as they are

    @classmethod
    def from_stored(cls, doc: dict[str, Any]) -> Container:
        """The record from the store's shape (a deep copy: the result shares nothing with `doc`)."""
        return cls._owning(copy.deepcopy(doc))

    @classmethod
    def decode(cls, text: str) -> Container:
        """The record from its stored JSON text (freshly decoded, so nothing to copy)."""
        return cls._owning(json.loads(text))

    @classmethod
    def _owning(cls, doc: dict[str, Any]) -> Container:
        """The record made from `doc`, which it takes over: nobody else may hold or change it."""
        return cls(
            id=doc["Id"], name=doc["Name"], created=doc["Created"], path=doc.get("Path") or "",
            args=list(doc.get("Args") or []), image_id=doc["Image"], state=State.from_stored(doc["State"]),
            config=doc["Config"], host_config=HostSettings(doc["HostConfig"]),
            networking_config=doc.get("NetworkingConfig") or {},
            network_settings=NetworkSettings.from_stored(doc.get("NetworkSettings") or {}),
            mounts=[MountPoint.from_stored(m) for m in doc.get("Mounts") or []],
            resolv_conf_path=doc.get("ResolvConfPath") or "", hostname_path=doc.get("HostnamePath") or "",
            hosts_path=doc.get("HostsPath") or "",
            log_path=doc.get("LogPath") or "", restart_count=int(doc.get("RestartCount") or 0),
            layers=Layers.from_stored(doc.get("GraphDriver") or {}),
            private=Private.from_stored(doc.get("Coracle") or {}),
            extra={k: v for k, v in doc.items() if k not in _TYPED},
        )

    def stored(self) -> dict[str, Any]:
        """The store's shape (Docker's inspect keys, plus the private part under "Coracle"): the caller's own."""
        return copy.deepcopy(self._shape())

    def encoded(self) -> str:
        """The store's shape as JSON text: what a save writes (encoded once, nothing copied)."""
        return json.dumps(self._shape(), separators=(",", ":"))

    def _shape(self) -> dict[str, Any]:
        """The store's shape, sharing this record's lists and dicts: to encode at once, never to keep."""
        return {
            "Id": self.id, "Created": self.created, "Path": self.path, "Args": self.args,
            "State": self.state.stored(), "Image": self.image_id, "ResolvConfPath": self.resolv_conf_path,
            "HostnamePath": self.hostname_path, "HostsPath": self.hosts_path, "LogPath": self.log_path,
            "Name": self.name, "RestartCount": self.restart_count, **self.extra,
            "HostConfig": self.host_config.raw, "Config": self.config, "GraphDriver": self.layers.stored(),
            "Mounts": [m.stored() for m in self.mounts], "NetworkingConfig": self.networking_config,
            "NetworkSettings": self.network_settings.stored(), "Coracle": self.private.stored(),
        }

    @property
    def short_name(self) -> str:
        return self.name.lstrip("/")

    @property
    def image_ref(self) -> str:
        """The image as the user named it (Config.Image); `image_id` is what it resolved to."""
        return str(self.config.get("Image") or "")

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.config.get("Labels") or {})

    @property
    def tty(self) -> bool:
        return bool(self.config.get("Tty"))

    @property
    def open_stdin(self) -> bool:
        return bool(self.config.get("OpenStdin"))

    @property
    def stdin_once(self) -> bool:
        return bool(self.config.get("StdinOnce"))

    @property
    def log_file(self) -> str:
        """The file the monitor writes this container's output to (any driver's)."""
        return self.private.log_file or self.log_path

    @property
    def networks(self) -> dict[str, NetworkAttachment]:
        """The networks it is on (or will join at its next start), by name."""
        return self.network_settings.networks

    @property
    def wanted_networks(self) -> dict[str, dict[str, Any]]:
        """NetworkingConfig.EndpointsConfig: the networks (and endpoint options) asked for at create, as asked."""
        return self.networking_config.get("EndpointsConfig") or {}

    def join(self, network_name: str, settings: Mapping[str, Any]) -> None:
        """A network connected (live, or as a wish while it is stopped): listed under its name, with the
        EndpointSettings the network layer answered."""
        self.networks[network_name] = NetworkAttachment.from_stored(settings)

    def leave(self, refs: tuple[str, ...], settings: Mapping[str, Any]) -> None:
        """A network disconnected: forgotten under every name it was listed or asked for by, so that the
        next start does not bring it back; `settings` are the top-level keys that change."""
        wanted = self.wanted_networks
        for ref in refs:
            self.networks.pop(ref, None)
            wanted.pop(ref, None)
        self.network_settings.sandbox.update(settings)

    def unwire(self) -> None:
        """Its namespace is gone: every network stays listed (it joins them again), without addresses."""
        for attachment in self.networks.values():
            attachment.unwire()
        self.network_settings.sandbox.update({"Ports": {}, "IPAddress": "", "Gateway": "", "MacAddress": ""})

    def rename_in_networks(self, dns_names: dict[str, list[str]]) -> None:
        """The names each listed network now resolves to this container by (after a rename)."""
        for network_name, names in dns_names.items():
            joined = self.networks.get(network_name)
            if joined is not None and joined.endpoint is not None:  # only a joined network has names
                joined.endpoint = replace(joined.endpoint, dns_names=tuple(names))
