"""Container lifecycle: create, start, stop, kill, pause, remove, exec, and exits.

The engine owns container records (Docker's inspect shape, persisted in the
store) and drives the runtime, cgroups, network and image layers. Every public
method is synchronous and thread-safe; the API calls them from worker threads.

Start order (the heart of it): the monitor forks the container's first process
and holds it; the engine puts it into its cgroups and sets the limits, wires
its network, and only then releases it to build its rootfs and exec user code.
Any failure undoes what was made, in reverse, and leaves a clear error.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import sqlite3
import threading
import time
from typing import Any
from collections.abc import Callable

from coracle import cgroups, trace
from coracle.clock import timestamp as utc_now
from coracle.cgroups import Resources
from coracle.cgroups.devices import DeviceRule
from coracle.engine import config as cfg
from coracle.engine import file_access, health, links, logs, security_options
from coracle.engine.container import Container
from coracle.events import EventBus
from coracle.engine.execs import Execs
from coracle.engine.names import random_name
from coracle.engine.netrequest import network_request
from coracle.engine.records import RecordIndex
from coracle.engine.restart import RestartTracker
from coracle.engine.top import network_counters, processes, ps
from coracle.engine.volumes import Volumes
from coracle.errors import (
    Conflict,
    CoracleError,
    InvalidParameter,
    NotFound,
    NotModified,
    SystemError_,
)
from coracle.disk import usage as disk_usage
from coracle.faults import fault
from coracle.images import Image, ImageStore
from coracle.images.changes import commit_config
from coracle.network.driver import ContainerFiles, EndpointOptions
from coracle.network.mode import NetworkMode
from coracle.runtime.client import MonitorClient, StartError
from coracle.runtime.fdtree import Trash, remove_tree
from coracle.runtime.spec import Mount, Process, Spec
from coracle.runtime.userns import Remap
from coracle.store import Store
from coracle.undo import Undo

log = logging.getLogger("coracle.engine")

KIND = "container"
ORPHAN_POLL = 0.2  # seconds between checks of a container whose monitor is gone


def proc_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks: with the PID, a name that never gets reused."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


class Engine:
    userns_remap: Remap | None = None  # --userns-remap: the id maps of containers' user namespaces
    log_defaults: dict[str, str] = cfg.LOG_DEFAULTS  # --log-opt: json-file options a container does not set

    def __init__(
        self, *, store: Store, images: ImageStore, network: Any, monitor: MonitorClient, events: EventBus,
        data_root: str, exec_root: str, cgroup_parent: str = "coracle", init_binary: str | None = None,
        no_new_privileges: bool = False,
    ) -> None:
        self.store, self.images, self.network, self.monitor, self.events = store, images, network, monitor, events
        self.data_root, self.exec_root = data_root, exec_root
        self._trash = Trash(os.path.join(data_root, "trash"))  # removed containers' directories, going
        self.cgroup_parent = cgroup_parent.strip("/")
        self.init_binary = init_binary or shutil.which("tini-static") or ""
        self.no_new_privileges = no_new_privileges
        self.containers_dir = os.path.join(data_root, "containers")
        self.volumes_dir = os.path.join(data_root, "volumes")
        os.makedirs(self.containers_dir, exist_ok=True)
        self.volumes = Volumes(store, self.volumes_dir, events, self.records)
        store.validate(KIND, cfg.check_record)  # a damaged record is quarantined, never fatal
        self.index = RecordIndex()
        self._saving = threading.Lock()  # taken last, around one store write and one index update
        self.reload()
        self._lock = threading.RLock()  # names and the id index
        self._locks: dict[str, threading.RLock] = {}
        self._exited: dict[str, threading.Event] = {}
        self._starting: dict[str, dict[str, Any] | None] = {}  # exits that arrive while start() still runs
        self._starting_lock = threading.Lock()  # hand-off of those exits between the exit pump and start()
        self.execs = Execs(self)
        self.restarts = RestartTracker(self._restart_later)
        self.health = health.HealthChecker(self)
        self._orphans: set[str] = set()

    # ----- records -------------------------------------------------------

    def _lock_for(self, cid: str) -> threading.RLock:
        with self._lock:
            return self._locks.setdefault(cid, threading.RLock())

    def records(self) -> list[dict[str, Any]]:
        """Every record, oldest first, as copies the caller may modify."""
        return self.index.copies()

    def views(self) -> list[dict[str, Any]]:
        """Every record, oldest first, shared and read-only: for list answers."""
        return self.index.views()

    def reload(self) -> None:
        """Take the records from the store again, after something wrote them there directly."""
        self.index.load(self.store.all(KIND))

    def get(self, ref: str) -> dict[str, Any]:
        """By full id, name (with or without /), or unique id prefix, like Docker: a copy to modify."""
        rec = self.index.copy(self._resolve(ref))
        if rec is None:
            raise NotFound(f"No such container: {ref}")  # removed meanwhile
        return rec

    def view(self, ref: str) -> dict[str, Any]:
        """Like get, but the shared read-only record: for answers built and sent at once."""
        rec = self.index.view(self._resolve(ref))
        if rec is None:
            raise NotFound(f"No such container: {ref}")
        return rec

    def container(self, ref: str) -> Container:
        """The record of a container (by id, name or unique id prefix): the caller's own copy.

        From memory, without a thread: answers while lifecycle work holds the store."""
        return Container.from_stored(self.view(ref))

    def containers(self) -> list[Container]:
        """Every container's record, oldest first: shared and read-only (made once per save, not per call)."""
        return self.index.typed()

    def exec_ids(self, cid: str) -> list[str]:
        """The execs of a container that can still be inspected (inspect's ExecIDs)."""
        return self.execs.of_container(cid)

    def _lower_dirs(self, image: Image) -> str:
        """The image's layer directories as overlayfs takes them (topmost first): GraphDriver.Data.LowerDir."""
        return ":".join(str(self.images.layer_path(diff_id)) for diff_id in reversed(image.layers))

    def _resolve(self, ref: str) -> str:
        if not ref:
            raise NotFound("No such container: ")
        if self.index.view(ref) is not None:
            return ref
        cid = self.index.id_of_name("/" + ref.lstrip("/"))
        if cid is not None:
            return cid
        matches = self.index.ids_with_prefix(ref)
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidParameter(f"multiple IDs found with provided prefix: {ref}")
        raise NotFound(f"No such container: {ref}")

    def save(self, rec: dict[str, Any]) -> None:
        with self._saving:  # store and index see concurrent saves and removals in one order
            self.store.put(KIND, rec["Id"], rec)
            self.index.put(rec)
        cfg.write_record_file(self._dir(rec["Id"]), rec)  # what rebuilds the record if the database is lost

    def _dir(self, cid: str, *parts: str) -> str:
        return os.path.join(self.containers_dir, cid, *parts)

    def record(self, cid: str) -> dict[str, Any] | None:
        """The stored record of a container by full id (None when it is gone), to read or change and save."""
        return self.store.get(KIND, cid)

    def announce(self, rec: dict[str, Any], action: str, **extra: str) -> None:
        """Docker's container event for `rec`: its name, image and labels as attributes."""
        attrs = {"name": rec["Name"].lstrip("/"), "image": rec["Config"].get("Image", ""),
                 **(rec["Config"].get("Labels") or {}), **extra}
        self.events.publish("container", action, rec["Id"], attrs)

    # ----- create --------------------------------------------------------

    def create(self, body: dict[str, Any], name: str | None = None) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise InvalidParameter("the container config must be a JSON object")
        config = {k: v for k, v in body.items() if k not in ("HostConfig", "NetworkingConfig")}
        host_config = body.get("HostConfig") or {}
        networking = body.get("NetworkingConfig") or {}
        if not isinstance(host_config, dict) or not isinstance(networking, dict):
            raise InvalidParameter("HostConfig and NetworkingConfig must be objects")
        image_ref = config.get("Image")
        if not image_ref or not isinstance(image_ref, str):
            raise InvalidParameter("Config.Image is required")
        image = self.images.resolve(image_ref)
        image_config = image.config or {}
        argv = cfg.command(config, image_config)
        Resources.from_host_config(host_config)  # validates limits now, not at start
        cfg.restart_policy(host_config)
        cfg.console_size(host_config.get("ConsoleSize"))
        mounts = cfg.binds(host_config, self.volumes_dir) + cfg.tmpfs(host_config)
        mounts += cfg.volumes_from(host_config, mounts, self.get)
        mounts += cfg.anonymous_volumes([*(image_config.get("Volumes") or {}), *(config.get("Volumes") or {})],
                                        mounts, self.volumes_dir)
        log_opts, log_size, log_files = cfg.log_config(host_config, self.log_defaults)
        mode = NetworkMode.parse(host_config.get("NetworkMode"))
        host_config["NetworkMode"] = str(mode)
        if mode.is_container:
            donor = self.get(mode.container)
            if config.get("Hostname"):
                raise InvalidParameter("conflicting options: hostname and the network mode")
            host_config["NetworkMode"] = str(NetworkMode.of_container(donor["Id"]))
        self.network.validate(network_request({"HostConfig": host_config, "Config": config,
                                               "NetworkingConfig": networking}))
        link_pairs = links.parse(host_config.get("Links"), mode)
        link_targets = []
        for target, _ in link_pairs:
            try:
                link_targets.append(self.get(target))
            except NotFound:
                raise NotFound(f"could not get container for {target}") from None
        security_options.apply(Spec(id="", process=Process(args=argv)), host_config, self.no_new_privileges)
        security_options.user_namespace(host_config, self.userns_remap)
        cid = cfg.new_id()
        config["Env"] = cfg.merge_env(image_config.get("Env"), cfg.strings(config.get("Env"), "Env"))
        config["Cmd"] = cfg.strings(config.get("Cmd"), "Cmd") or (
            None if config.get("Entrypoint") else image_config.get("Cmd"))
        config.setdefault("Entrypoint", image_config.get("Entrypoint"))
        config["WorkingDir"] = cfg.working_dir(config.get("WorkingDir") or image_config.get("WorkingDir"))
        config["User"] = config.get("User") or image_config.get("User") or ""
        config["Labels"] = {**(image_config.get("Labels") or {}), **(config.get("Labels") or {})}
        config["ExposedPorts"] = {**(image_config.get("ExposedPorts") or {}), **(config.get("ExposedPorts") or {})}
        config["StopSignal"] = config.get("StopSignal") or image_config.get("StopSignal") or "SIGTERM"
        cfg.parse_signal(config["StopSignal"])
        host_ns = cfg.shared_namespaces(host_config, config.get("Hostname") or "")
        check = health.merge(config.pop("Healthcheck", None), image_config.get("Healthcheck"))
        health.validate(check)
        if check:
            config["Healthcheck"] = check
        if mode.is_host or "uts" in host_ns:
            config["Hostname"] = config.get("Hostname") or os.uname().nodename
        elif not mode.is_container:
            config["Hostname"] = config.get("Hostname") or cid[:12]
        for key in ("Tty", "OpenStdin", "StdinOnce", "AttachStdin", "AttachStdout", "AttachStderr"):
            config[key] = bool(config.get(key))
        host_config.setdefault("RestartPolicy", {"Name": "no", "MaximumRetryCount": 0})
        host_config["LogConfig"] = {"Type": cfg.log_driver(host_config), "Config": log_opts}
        now = utc_now()
        log_driver = host_config["LogConfig"]["Type"]
        log_path = self._dir(cid, cfg.log_file(log_driver, cid)) if log_driver != "none" else ""
        rec: dict[str, Any] = {
            "Id": cid, "Created": now, "Path": argv[0], "Args": argv[1:],
            "State": {"Status": "created", "Running": False, "Paused": False, "Restarting": False,
                      "OOMKilled": False, "Dead": False, "Pid": 0, "ExitCode": 0, "Error": "",
                      "StartedAt": "0001-01-01T00:00:00Z", "FinishedAt": "0001-01-01T00:00:00Z"},
            "Image": image.id, "ResolvConfPath": self._dir(cid, "resolv.conf"),
            "HostnamePath": self._dir(cid, "hostname"), "HostsPath": self._dir(cid, "hosts"),
            "LogPath": log_path if log_driver == "json-file" else "",  # Docker shows no other driver's file
            "Name": "", "RestartCount": 0, "Driver": "overlay2", "Platform": "linux",
            "MountLabel": "", "ProcessLabel": "", "AppArmorProfile": "", "ExecIDs": None,
            "HostConfig": host_config, "Config": config,
            "GraphDriver": {"Name": "overlay2", "Data": {"LowerDir": self._lower_dirs(image),
                                                         "UpperDir": self._dir(cid, "upper"),
                                                         "WorkDir": self._dir(cid, "work"),
                                                         "MergedDir": self._dir(cid, "rootfs")}},
            "Mounts": mounts, "NetworkingConfig": networking,
            "NetworkSettings": {"Bridge": "", "SandboxID": "", "SandboxKey": "", "Ports": {}, "Networks": {},
                                "IPAddress": "", "IPPrefixLen": 0, "Gateway": "", "MacAddress": ""},
            "Coracle": {"LogMaxSize": log_size, "LogMaxFile": log_files, "ManualStop": False,
                        "LogAttrs": cfg.log_attrs(log_opts, config["Labels"], config["Env"]), "LogFile": log_path,
                        "LogCompress": cfg.log_compress(host_config["LogConfig"])},
        }
        with self._lock:
            rec["Name"] = "/" + (cfg.check_name(name) if name else self._generate_name())
            host_config["Links"] = links.stored(link_pairs, link_targets, rec["Name"]) or None
            self._check_name_free(rec["Name"])
            try:
                for sub in ("upper", "work", "rootfs"):
                    os.makedirs(self._dir(cid, sub), exist_ok=True)
                fault("create-after-dirs")
                for m in mounts:
                    if m["Type"] == "volume":
                        self.volumes.ensure(m["Name"], cfg.is_anonymous(m),
                                            *cfg.mount_volume_request(host_config, m["Destination"]))
                self.save(rec)
            except (OSError, sqlite3.Error, InvalidParameter) as exc:  # a volume's options refused included
                remove_tree(self._dir(cid), ignore_errors=True)
                full = isinstance(exc, sqlite3.Error) and "full" in str(exc) or getattr(exc, "errno", 0) == errno.ENOSPC
                if full:
                    raise SystemError_(f"no space left on device: the data root {self.data_root} is full") from None
                raise
        self.announce(rec, "create")
        return {"Id": cid, "Warnings": []}

    def _generate_name(self) -> str:
        while True:
            name = random_name()
            if self.index.id_of_name("/" + name) is None:
                return name

    def _check_name_free(self, name: str) -> None:
        """Called under self._lock, which every change of a name holds."""
        other = self.index.id_of_name(name)
        if other is not None:
            raise Conflict(f'Conflict. The container name "{name}" is already in use by container '
                           f'"{other}". You have to remove (or rename) that container to be able to reuse that name.')

    # ----- start ---------------------------------------------------------

    def _spec(self, rec: dict[str, Any], mode: NetworkMode) -> Spec:
        cid, config, hc = rec["Id"], rec["Config"], rec["HostConfig"]
        image = self.images.resolve(rec["Image"])
        shared = cfg.shared_namespaces(hc, "")
        namespaces = [ns for ns in ("mnt", "uts", "ipc", "pid", "cgroup") if ns not in shared]
        join_net = ""
        if mode.is_container:
            donor = self.running(mode.container, for_="join its network namespace")
            join_net = f"/proc/{donor['State']['Pid']}/ns/net"
        elif not mode.is_host:
            namespaces.append("net")
        mounts = [Mount(destination=m["Destination"], type=m["Type"], source=m["Source"],
                        readonly=not m["RW"], options=m.get("Mode", "") if m["Type"] == "tmpfs" else "",
                        propagation=cfg.propagation(m))
                  for m in rec["Mounts"]]
        for path, target in (("ResolvConfPath", "/etc/resolv.conf"), ("HostnamePath", "/etc/hostname"),
                             ("HostsPath", "/etc/hosts")):
            # written (or shared from a donor) before the process is released to mount them
            if not any(m.destination == target for m in mounts):
                mounts.append(Mount(destination=target, source=rec[path]))
        process = Process(
            args=[rec["Path"], *rec["Args"]], env=config["Env"] + links.environment(links.resolve(self, rec)),
            cwd=config["WorkingDir"] or "/",
            user=config["User"], additional_groups=hc.get("GroupAdd") or [], tty=config["Tty"],
            stdin=config["OpenStdin"], console_size=cfg.console_size(hc.get("ConsoleSize")),
            no_new_privileges=self.no_new_privileges or "no-new-privileges" in (hc.get("SecurityOpt") or [])
            or "no-new-privileges:true" in (hc.get("SecurityOpt") or []),
        )
        log_path, log_driver = logs.source(Container.from_stored(rec))
        spec = Spec(
            id=cid, process=process, namespaces=namespaces, join_net=join_net,
            hostname=config.get("Hostname") or "", domainname=config.get("Domainname") or "",
            rootfs=self._dir(cid, "rootfs"), lower=self.images.layer_dirs(image),
            upper=self._dir(cid, "upper"), work=self._dir(cid, "work"),
            readonly_rootfs=bool(hc.get("ReadonlyRootfs")), mounts=mounts,
            sysctls=hc.get("Sysctls") or {}, privileged=bool(hc.get("Privileged")),
            init_binary=self.init_binary if hc.get("Init") else "",
            log_path=log_path, log_max_size=rec["Coracle"]["LogMaxSize"],
            log_max_file=rec["Coracle"]["LogMaxFile"], log_attrs=rec["Coracle"].get("LogAttrs") or {},
            log_driver=log_driver, log_compress=rec["Coracle"].get("LogCompress", False),
        )
        security_options.apply(spec, hc, self.no_new_privileges)
        remap = security_options.user_namespace(hc, self.userns_remap)
        if remap is not None:
            spec.uid_map, spec.gid_map = remap.uid_map, remap.gid_map
            for m in rec["Mounts"]:  # a fresh volume belongs to the container's root, as with Docker
                if m["Type"] == "volume" and os.stat(m["Source"]).st_uid == 0:
                    os.chown(m["Source"], *remap.root)
        return spec

    def running(self, ref: str, for_: str = "") -> dict[str, Any]:
        rec = self.get(ref)
        if not rec["State"]["Running"]:
            raise Conflict(f"Container {rec['Id']} is not running" + (f": cannot {for_}" if for_ else ""))
        return rec

    def cgroup(self, rec: dict[str, Any]) -> cgroups.Manager:
        parent = (rec["HostConfig"].get("CgroupParent") or self.cgroup_parent).strip("/")
        return cgroups.manager_for(f"{parent}/{rec['Id']}")

    def start(self, ref: str, before_release: Callable[[str], None] | None = None) -> None:
        """Start a created or exited container; `before_release` lets attach streams connect first."""
        rec = self.get(ref)
        cid = rec["Id"]
        with self._lock_for(cid):
            rec = self.get(cid)
            if rec["State"]["Running"]:
                raise NotModified("container already started")
            if rec["State"]["Status"] == "removing":
                raise Conflict(f"container {cid} is marked for removal and cannot be started")
            if not os.path.isdir(self._dir(cid)):
                raise SystemError_(f"the directory of container {cid} is missing: run `coracle system check` "
                                   "to recreate it")
            self._start_locked(rec, before_release)

    def _start_locked(self, rec: dict[str, Any], before_release: Callable[[str], None] | None) -> None:
        cid, hc = rec["Id"], rec["HostConfig"]
        mode = NetworkMode.parse(hc["NetworkMode"])
        sock = None
        phases = trace.Phases("start", cid)
        with self._starting_lock:
            self._starting[cid] = None
        try:
            with Undo(f"start of {cid}") as undo:
                if mode.is_container:
                    self._share_donor_files(rec, mode)
                spec = self._spec(rec, mode)
                file_access.copy_up(self, rec)
                undo.add(lambda: self.volumes.detach(rec))
                self.volumes.attach(rec)
                sock, pid = self.monitor.spawn(spec)
                undo.add(lambda: self.monitor.abandon(None, cid))
                undo.add(lambda: sock.close() if sock is not None else None)  # first: the spawn is let go
                phases.mark("spawn")
                cg = self.cgroup(rec)
                cg.create()
                undo.add(cg.destroy)
                cg.apply(pid)
                cg.set(Resources.from_host_config(hc))
                cg.set_devices([DeviceRule.from_json(r) for r in spec.device_rules])
                security_options.set_oom_score_adj(pid, hc)
                fault("start-after-cgroup")
                phases.mark("cgroup")
                undo.add(lambda: self.network.detach(cid))
                attachment = self.network.attach(network_request(rec, pid))
                rec["NetworkSettings"] = dict(attachment.settings)
                fault("start-after-network")
                phases.mark("network")
                if attachment.files is not None:  # none in container mode: the donor's are shared
                    self._write_files(rec, attachment.files)  # read at release
                phases.mark("files")
                rec["State"].update({"Pid": pid})
                if before_release:
                    before_release(cid)
                self._exited[cid] = threading.Event()
                self.monitor.release(sock, cid)
                sock = None
                phases.mark("release")
        except BaseException as exc:
            with self._starting_lock:
                self._starting.pop(cid, None)
            self._exited.pop(cid, None)
            code = exc.exit_code if isinstance(exc, StartError) else 128
            rec["State"].update({"Status": "exited" if rec["State"]["StartedAt"][:4] != "0001" else "created",
                                 "Running": False, "Pid": 0, "ExitCode": code, "Error": str(exc),
                                 "Restarting": False})
            rec["NetworkSettings"]["Networks"] = {}
            self.save(rec)
            if hc.get("AutoRemove"):
                threading.Thread(target=self._auto_remove, args=(cid,), daemon=True).start()
            if isinstance(exc, StartError):
                raise StartError(f"failed to create task for container: {exc}", exc.exit_code) from None
            raise
        rec["State"].update({"Status": "running", "Running": True, "Paused": False, "Restarting": False,
                             "OOMKilled": False, "Dead": False, "ExitCode": 0, "Error": "",
                             "StartedAt": utc_now(), "FinishedAt": "0001-01-01T00:00:00Z"})
        rec["Coracle"].update({"StartTicks": proc_start_ticks(rec["State"]["Pid"]), "ManualStop": False,
                               "CgroupPath": self.cgroup(rec).path})
        if health.Probe.of(rec["Config"]):
            rec["State"]["Health"] = health.starting()
        self.save(rec)
        phases.mark("save")
        phases.done()
        self.announce(rec, "start")
        self.health.watch(rec)
        with self._starting_lock:
            early = self._starting.pop(cid, None)
        if early is not None:
            self._finish(early)

    def _share_donor_files(self, rec: dict[str, Any], mode: NetworkMode) -> None:
        """container:<id> mode uses the donor's hostname, hosts and resolv.conf."""
        donor = self.get(mode.container)
        for key in ("ResolvConfPath", "HostnamePath", "HostsPath"):
            rec[key] = donor[key]
        rec["Config"]["Hostname"] = donor["Config"]["Hostname"]

    def _write_files(self, rec: dict[str, Any], files: ContainerFiles | None = None) -> None:
        """/etc/hostname, /etc/hosts, /etc/resolv.conf as the network layer rendered them (at attach), or
        renders them again from the recorded settings."""
        files = files or self.network.files(network_request(rec), rec["NetworkSettings"])
        for target, content in files.by_path().items():
            if target == "/etc/hosts":
                content += links.hosts_lines(links.resolve(self, rec))
            key = {"/etc/hosts": "HostsPath", "/etc/resolv.conf": "ResolvConfPath",
                   "/etc/hostname": "HostnamePath"}[target]
            tmp = rec[key] + ".tmp"
            with open(tmp, "w") as f:
                f.write(content)
            os.replace(tmp, rec[key])

    # ----- exits ---------------------------------------------------------

    def on_monitor_event(self, event: dict[str, Any]) -> None:
        """An exit reported by the monitor (or found in its records at start-up)."""
        if event.get("kind") == "exec":
            self.execs.exited(event)
            return
        cid = event["id"]
        with self._starting_lock:
            if cid in self._starting:
                self._starting[cid] = event  # applied when start() finishes
                return
        with self._lock_for(cid):
            self._finish(event)

    def _finish(self, event: dict[str, Any]) -> None:
        cid = event["id"]
        self.health.forget(cid)
        rec = self.store.get(KIND, cid)
        if rec is None or rec["State"]["Pid"] != event.get("pid") and event.get("pid"):
            self.monitor.forget_exit(cid)
            return
        cg = self.cgroup(rec)
        oom = False
        with contextlib.suppress(OSError):
            oom = cg.oom_killed()
        try:
            self.network.detach(cid)
        finally:
            cg.destroy()
        code = event["exit_code"]
        if code is None:  # it ended while nobody could read its status
            code = 137 if rec["Coracle"].get("ManualStop") else 255
        rec["State"].update({"Status": "exited", "Running": False, "Paused": False, "Pid": 0,
                             "ExitCode": code, "OOMKilled": oom,
                             "FinishedAt": event.get("finished_at") or utc_now()})
        for net in rec["NetworkSettings"].get("Networks", {}).values():
            for key in ("IPAddress", "Gateway", "MacAddress", "EndpointID"):
                if key in net:
                    net[key] = ""
        rec["NetworkSettings"].update({"Ports": {}, "IPAddress": "", "Gateway": "", "MacAddress": ""})
        self.save(rec)
        self.volumes.detach(rec)
        self.monitor.forget_exit(cid)
        if oom:
            self.announce(rec, "oom")
        self.announce(rec, "die", exitCode=str(code))
        done = self._exited.pop(cid, None)
        if done:
            done.set()
        if rec["HostConfig"].get("AutoRemove"):
            threading.Thread(target=self._auto_remove, args=(cid,), daemon=True).start()
            return
        self._maybe_restart(rec)

    def _auto_remove(self, cid: str) -> None:
        try:
            self.remove(cid, force=True)
        except NotFound:
            pass
        except CoracleError:
            log.exception("auto-remove of %s failed", cid)

    def _restart_later(self, cid: str) -> None:
        """The restart tracker's timer fired: start again unless someone stopped it meanwhile."""
        with self._lock_for(cid):
            rec = self.store.get(KIND, cid)
            if rec is None or rec["State"]["Running"] or not rec["State"].get("Restarting"):
                return
            rec["RestartCount"] += 1
            try:
                self._start_locked(rec, None)
            except CoracleError as exc:
                log.warning("restart of %s failed: %s", cid, exc)
                rec = self.store.get(KIND, cid)
                if rec is not None:
                    self._maybe_restart(rec)

    def _maybe_restart(self, rec: dict[str, Any], immediate: bool = False) -> None:
        """Apply the restart policy to a container that just exited."""
        delay = self.restarts.delay(rec, immediate)
        if delay is None:
            return
        rec["State"].update({"Restarting": True, "Status": "restarting"})
        self.save(rec)
        self.restarts.schedule(rec["Id"], delay)

    # ----- stop, kill, pause ---------------------------------------------

    def _signal(self, rec: dict[str, Any], sig: int) -> None:
        pid = rec["State"]["Pid"]
        if not pid or proc_start_ticks(pid) != rec["Coracle"].get("StartTicks"):
            raise Conflict(f"Container {rec['Id']} is not running")
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            raise Conflict(f"Container {rec['Id']} is not running") from None

    def _wait_exit(self, cid: str, timeout: float | None) -> bool:
        done = self._exited.get(cid)
        if done is None:
            return True
        return done.wait(timeout)

    def wait_exit(self, ref: str, timeout: float | None = None) -> int | None:
        """The exit code once the container's process has ended; None if it still runs at the timeout."""
        cid = self.get(ref)["Id"]
        if not self._wait_exit(cid, timeout):
            return None
        return int(self.get(cid)["State"]["ExitCode"])

    def stop(self, ref: str, timeout: int | None = None, sig: str | None = None) -> None:
        rec = self.get(ref)
        cid = rec["Id"]
        with self._lock_for(cid):
            rec = self.get(cid)
            self.restarts.cancel(cid)
            if rec["State"].get("Restarting"):
                rec["State"].update({"Restarting": False, "Status": "exited"})
                rec["Coracle"]["ManualStop"] = True
                self.save(rec)
                return
            if not rec["State"]["Running"]:
                raise NotModified("container already stopped")
            rec["Coracle"]["ManualStop"] = True
            self.save(rec)
            if rec["State"]["Paused"]:
                self.cgroup(rec).thaw()
            number = cfg.parse_signal(sig or rec["Config"].get("StopSignal"))
            if timeout is None:
                timeout = rec["Config"].get("StopTimeout")
            timeout = 10 if timeout is None else timeout
        try:
            self._signal(rec, number)
        except Conflict:
            return
        if not self._wait_exit(cid, None if timeout < 0 else timeout):  # -1: wait as long as it takes
            try:
                self._signal(self.get(cid), signal.SIGKILL)
            except (Conflict, NotFound):
                return
            self._wait_exit(cid, 30)
        self.announce(rec, "stop")

    def attached(self, ref: str) -> None:
        """A client attached to the container's streams: Docker's `attach` event."""
        self.announce(self.get(ref), "attach")

    def kill(self, ref: str, sig: str | None = None) -> None:
        rec = self.get(ref)
        number = cfg.parse_signal(sig, "SIGKILL")
        with self._lock_for(rec["Id"]):
            rec = self.get(rec["Id"])
            if not rec["State"]["Running"]:
                raise Conflict(f"Container {rec['Id']} is not running")
            if number in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
                rec["Coracle"]["ManualStop"] = True
                self.save(rec)
            self._signal(rec, number)
        self.announce(rec, "kill", signal=str(number))
        if number == signal.SIGKILL:
            self._wait_exit(rec["Id"], 10)

    def restart(self, ref: str, timeout: int | None = None) -> None:
        rec = self.get(ref)
        with contextlib.suppress(NotModified):
            self.stop(rec["Id"], timeout)
        self.start(rec["Id"])
        self.announce(self.get(rec["Id"]), "restart")

    def commit(self, ref: str, *, pause: bool = True, repo_tag: str | None = None, changes: list[str] | None = None,
               comment: str = "", author: str = "", config: dict[str, Any] | None = None) -> Image:
        """`docker commit`: the container's own layer (its overlay upper dir) as a new image.

        The upper dir is the container's to change while it runs; with `pause`
        (Docker's default) a running container is frozen while it is read, so
        the image is one moment of it and nothing is swapped under the reader,
        which reads by descriptor anyway (images/layers.pack)."""
        rec = self.get(ref)
        base = self.images.resolve(rec["Image"])
        with self._lock_for(rec["Id"]):
            rec = self.get(rec["Id"])
            freeze = pause and rec["State"]["Running"] and not rec["State"]["Paused"]
            if freeze:
                self.cgroup(rec).freeze()
            try:
                image = self.images.commit(rec["GraphDriver"]["Data"]["UpperDir"], base,
                                           commit_config(config, rec["Config"], list(changes or [])),
                                           repo_tag, comment, author)
            finally:
                if freeze:
                    self.cgroup(rec).thaw()
        self.announce(rec, "commit")
        return image

    def pause(self, ref: str) -> None:
        rec = self.running(ref)
        with self._lock_for(rec["Id"]):
            if rec["State"]["Paused"]:
                raise Conflict(f"Container {rec['Id']} is already paused")
            self.cgroup(rec).freeze()
            self.health.forget(rec["Id"])
            rec["State"].update({"Paused": True, "Status": "paused"})
            self.save(rec)
        self.announce(rec, "pause")

    def unpause(self, ref: str) -> None:
        rec = self.running(ref)
        with self._lock_for(rec["Id"]):
            if not rec["State"]["Paused"]:
                raise Conflict(f"Container {rec['Id']} is not paused")
            self.cgroup(rec).thaw()
            rec["State"].update({"Paused": False, "Status": "running"})
            self.save(rec)
            self.health.watch(rec)
        self.announce(rec, "unpause")

    # ----- remove, rename, update ------------------------------------------

    def remove(self, ref: str, force: bool = False, volumes: bool = False) -> None:
        rec = self.get(ref)
        cid = rec["Id"]
        with self._lock_for(cid):
            rec = self.get(cid)
            self.restarts.cancel(cid)
            if rec["State"]["Running"]:
                if not force:
                    raise Conflict(f"You cannot remove a running container {cid}. Stop the container before "
                                   "attempting removal or force remove")
                if rec["State"]["Paused"]:
                    self.cgroup(rec).thaw()
                rec["Coracle"]["ManualStop"] = True
                rec["HostConfig"]["AutoRemove"] = False  # we are removing it ourselves
                self.save(rec)
                with contextlib.suppress(Conflict):
                    self._signal(rec, signal.SIGKILL)
        self._wait_exit(cid, 30)
        with self._lock_for(cid):
            current = self.store.get(KIND, cid)  # gone if another remove finished meanwhile
            if current is None:
                return
            rec = current
            rec["State"]["Status"] = "removing"
            self.save(rec)
            fault("rm-before-cleanup")
            self.network.detach(cid)
            self.cgroup(rec).destroy()
            self._trash.discard(self._dir(cid))
            with self._saving:
                self.store.delete(KIND, cid)
                self.index.drop(cid)
            if volumes:
                self.volumes.remove_anonymous(m["Name"] for m in rec["Mounts"] if m["Type"] == "volume")
            self.monitor.forget_exit(cid)
        with self._lock:
            self._locks.pop(cid, None)
        self.announce(rec, "destroy")

    def remove_link(self, path: str) -> None:
        """DELETE /containers/{linker/alias}?link=1: the linking container forgets that link."""
        rec = links.remove(self, path)
        with self._lock_for(rec["Id"]):
            self.save(rec)

    def rename(self, ref: str, new_name: str) -> None:
        name = "/" + cfg.check_name(new_name)
        with self._lock:
            rec = self.get(ref)
            if rec["Name"] == name:
                raise InvalidParameter("Renaming a container with the same name as its current name")
            self._check_name_free(name)
            old = rec["Name"]
            rec["Name"] = name
            dns_names = self.network.rename(network_request(rec), old)
            shown = (rec.get("NetworkSettings") or {}).get("Networks") or {}
            for network_name, names in dns_names.items():
                if network_name in shown:
                    shown[network_name]["DNSNames"] = names
            self.save(rec)
        self.announce(rec, "rename", oldName=old)

    def update(self, ref: str, body: dict[str, Any]) -> dict[str, Any]:
        """`docker update`: new limits on a live cgroup, and the restart policy."""
        rec = self.get(ref)
        with self._lock_for(rec["Id"]):
            rec = self.get(rec["Id"])
            hc = {**rec["HostConfig"], **{k: v for k, v in body.items() if k != "RestartPolicy"}}
            resources = Resources.from_host_config(hc)
            if "RestartPolicy" in body:
                hc["RestartPolicy"] = body["RestartPolicy"]
                cfg.restart_policy(hc)
            if rec["State"]["Running"]:
                self.cgroup(rec).update(resources)
            rec["HostConfig"] = hc
            self.save(rec)
        self.announce(rec, "update")
        return {"Warnings": []}

    # ----- networks of a container -------------------------------------------

    def connect(self, ref: str, network_ref: str, endpoint_config: dict[str, Any]) -> None:
        """`docker network connect`: recorded always, wired live when the container runs."""
        rec = self.get(ref)
        with self._lock_for(rec["Id"]):
            rec = self.get(rec["Id"])
            if not NetworkMode.parse(rec["HostConfig"]["NetworkMode"]).has_endpoints:
                raise InvalidParameter("container sharing network namespace with another container or host "
                                       "cannot be connected to any other network")
            pid = rec["State"]["Pid"] if rec["State"]["Running"] else 0
            fault("connect-before-network")
            joined = self.network.connect(network_request(rec, pid), network_ref,
                                          EndpointOptions.from_docker(network_ref, endpoint_config))
            rec["NetworkSettings"].setdefault("Networks", {})[joined.network_name] = dict(joined.settings)
            self.save(rec)

    def disconnect(self, ref: str, network_ref: str, force: bool = False) -> None:
        rec = self.get(ref)
        with self._lock_for(rec["Id"]):
            rec = self.get(rec["Id"])
            pid = rec["State"]["Pid"] if rec["State"]["Running"] else 0
            left = self.network.disconnect(network_request(rec, pid), network_ref, force)
            wanted = (rec.get("NetworkingConfig") or {}).get("EndpointsConfig") or {}
            for ref in left.refs:  # so that the next start does not bring it back
                rec["NetworkSettings"].get("Networks", {}).pop(ref, None)
                wanted.pop(ref, None)
            rec["NetworkSettings"].update(left.settings)
            self.save(rec)

    # ----- views ---------------------------------------------------------

    def top(self, ref: str, ps_args: str = "") -> dict[str, Any]:
        rec = self.running(ref)
        pids = self.cgroup(rec).procs()
        return ps(pids, ps_args) if ps_args else processes(pids)

    def size(self, cid: str) -> tuple[int, int]:
        """The bytes of the container's writable layer, and of that plus its image (`ps -s`)."""
        c = self.container(cid)
        rw = disk_usage(c.layers.upper)
        try:
            image_size = self.images.resolve(c.image_id).size
        except NotFound:
            image_size = 0
        return rw, rw + image_size

    def stats(self, ref: str) -> dict[str, Any]:
        rec = self.get(ref)
        base = {"id": rec["Id"], "name": rec["Name"], "read": utc_now(), "preread": "0001-01-01T00:00:00Z"}
        if not rec["State"]["Running"]:
            return {**base, "memory_stats": {}, "cpu_stats": {}, "precpu_stats": {}, "pids_stats": {},
                    "blkio_stats": {}, "networks": {}}
        stats = self.cgroup(rec).stats()
        return {**base, **stats, "networks": network_counters(rec["State"]["Pid"])}

    # ----- start-up ------------------------------------------------------

    def restore(self) -> dict[str, list[str]]:
        """Re-adopt what survived the daemon, record exits that happened while it was away."""
        report: dict[str, list[str]] = {"adopted": [], "exited": [], "restarted": []}
        live = {p["id"]: p for p in self.monitor.list()}
        exits = {e["id"]: e for e in self.monitor.exit_records()}
        for rec in self.records():
            cid = rec["Id"]
            state = rec["State"]
            if state["Status"] in ("removing",):
                self.remove(cid, force=True)
                continue
            if not state["Running"]:
                if state.get("Restarting"):
                    self._maybe_restart(rec, immediate=True)
                continue
            event = exits.get(cid)
            if (event is None or event.get("pid") != state["Pid"]) and self.alive(rec):
                # Alive by /proc (pid and start time), whatever the monitor says: adopt, never kill.
                self._exited[cid] = threading.Event()
                proc = live.get(cid)
                if not (proc and proc["pid"] == state["Pid"]):
                    self._watch_orphan(cid)  # nobody supervises it any more: it runs on, watched
                report["adopted"].append(cid)
                continue
            if event is None or event.get("pid") != state["Pid"]:
                event = {"id": cid, "pid": state["Pid"], "exit_code": None, "finished_at": utc_now()}
            with self._lock_for(cid):
                self._exited[cid] = threading.Event()
                self._finish(event)
            report["exited"].append(cid)
        for proc in live.values():
            if proc["state"] == "held":  # its start died with the daemon; it never ran user code
                self.monitor.abandon(None, proc["id"])
        for cid in report["adopted"]:
            adopted = self.store.get(KIND, cid)
            if adopted:
                self.health.watch(adopted)
        return report

    def alive(self, rec: dict[str, Any]) -> bool:
        """Its PID 1 runs: the recorded pid exists with the recorded start time (never reused)."""
        pid = rec["State"]["Pid"]
        return bool(pid) and proc_start_ticks(pid) == rec["Coracle"].get("StartTicks")

    def adopt_orphans(self) -> list[str]:
        """After the monitor was replaced: watch the running containers it no longer parents."""
        supervised = {p["id"] for p in self.monitor.list()}
        orphans = [r["Id"] for r in self.records() if r["State"]["Running"] and r["Id"] not in supervised]
        for cid in orphans:
            self._watch_orphan(cid)
        return orphans

    def _watch_orphan(self, cid: str) -> None:
        """Poll an unsupervised container's PID 1; record its exit (code unknown) when it dies.

        Only a parent can read an exit status, and the parent is gone; this keeps
        stop, rm and wait working and the record truthful, without the code.
        """
        with self._lock:
            if cid in self._orphans:
                return
            self._orphans.add(cid)

        def watch() -> None:
            try:
                while True:
                    rec = self.store.get(KIND, cid)
                    if rec is None or not rec["State"]["Running"]:
                        return
                    if not self.alive(rec):
                        self.on_monitor_event({"id": cid, "kind": "container", "pid": rec["State"]["Pid"],
                                               "exit_code": None, "finished_at": utc_now()})
                        return
                    time.sleep(ORPHAN_POLL)
            finally:
                with self._lock:
                    self._orphans.discard(cid)

        threading.Thread(target=watch, name=f"orphan-{cid[:12]}", daemon=True).start()

    def boot_restarts(self) -> list[str]:
        """At daemon start (and so after a reboot): `always` and not-stopped `unless-stopped` come back."""
        started = []
        for rec in self.records():
            policy = rec["HostConfig"].get("RestartPolicy", {}).get("Name")
            if rec["State"]["Running"]:
                continue
            if policy == "always" or (policy == "unless-stopped" and not rec["Coracle"].get("ManualStop")):
                if rec["State"]["FinishedAt"][:4] == "0001":
                    continue
                try:
                    self.start(rec["Id"])
                    started.append(rec["Id"])
                except CoracleError as exc:
                    log.warning("could not restart %s: %s", rec["Id"], exc)
        return started

