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
from coracle.cgroups import spare
from coracle.clock import ZERO, timestamp as utc_now
from coracle.cgroups import Resources
from coracle.cgroups.devices import DeviceRule
from coracle.engine import config as cfg
from coracle.engine import file_access, health, links, logs, security_options
from coracle.engine.container import (
    Container,
    HostSettings,
    Layers,
    NetworkSettings,
    Private,
    State,
    planned_networks,
)
from coracle.events import EventBus
from coracle.engine.execs import Execs
from coracle.engine.names import random_name
from coracle.engine.netrequest import ContainerNetworks, network_request
from coracle.engine.records import RecordIndex
from coracle.engine.restart import RestartTracker, comes_back_at_boot
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
SPARE_CGROUP_DELAY = 0.05  # seconds after a start before the next spare gets its cgroup (cgroups/spare.py)


def proc_start_ticks(pid: int, running: bool = False) -> int | None:
    """The process's start time in clock ticks: with the PID, a name that never gets reused. With
    `running`, None for a process that has ended but not been reaped yet (a zombie: its parent may be
    gone, and it can stay so for a while)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return None if running and fields[0] == "Z" else int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


class Engine:
    userns_remap: Remap | None = None  # --userns-remap: the id maps of containers' user namespaces
    log_defaults: dict[str, str] = cfg.LOG_DEFAULTS  # --log-opt: json-file options a container does not set

    def __init__(
        self, *, store: Store, images: ImageStore, network: ContainerNetworks, monitor: MonitorClient, events: EventBus,
        data_root: str, exec_root: str, cgroup_parent: str = "coracle", init_binary: str | None = None,
        no_new_privileges: bool = False, cgroups_for: Callable[[str], cgroups.Manager] = cgroups.manager_for,
    ) -> None:
        self.store, self.images, self.network, self.monitor, self.events = store, images, network, monitor, events
        self.data_root, self.exec_root = data_root, exec_root
        self._trash = Trash(os.path.join(data_root, "trash"))  # removed containers' directories, going
        self.cgroup_parent = cgroup_parent.strip("/")
        self.init_binary = init_binary or shutil.which("tini-static") or ""
        self.no_new_privileges = no_new_privileges
        self.cgroups_for = cgroups_for  # the cgroup of a path under the hierarchy (a stand-in in unit tests)
        self.spare_cgroup = spare.Stager(cgroups_for, self.cgroup_parent, monitor.stage_spare)
        self.containers_dir = os.path.join(data_root, "containers")
        self.volumes_dir = os.path.join(data_root, "volumes")
        os.makedirs(self.containers_dir, exist_ok=True)
        self.volumes = Volumes(store, self.volumes_dir, events, self.containers)
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

    def reload(self) -> None:
        """Take the records from the store again, after something wrote them there directly."""
        self.index.load(self.store.all(KIND))

    def container(self, ref: str) -> Container:
        """The record of a container (by id, name or unique id prefix): the caller's own copy.

        From memory, without a thread: answers while lifecycle work holds the store."""
        body = self.index.body(self._resolve(ref))
        if body is None:
            raise NotFound(f"No such container: {ref}")  # removed meanwhile
        return Container.decode(body)

    def containers(self) -> list[Container]:
        """Every container's record, oldest first: shared and read-only (made once per save, not per call)."""
        return self.index.typed()

    def record(self, cid: str) -> Container | None:
        """A container's record as the store has it, by full id (None when it is gone): to change and save."""
        rec = self.store.get(KIND, cid)
        return Container.from_stored(rec) if rec is not None else None

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

    def save(self, c: Container, beside: bool = True) -> None:
        """The record into the store (in its stored shape), the index, and the file beside the container
        (not with `beside=False`: the directory is on its way out)."""
        body = c.encoded()
        with self._saving:  # store and index see concurrent saves and removals in one order
            self.store.put_encoded(KIND, c.id, body)
            self.index.put(body)
        if beside:
            cfg.write_record_file(self._dir(c.id), body)  # what rebuilds the record if the database is lost

    def _dir(self, cid: str, *parts: str) -> str:
        return os.path.join(self.containers_dir, cid, *parts)

    def announce(self, c: Container, action: str, **extra: str) -> None:
        """Docker's container event: the container's name, image and labels as attributes."""
        self.events.publish("container", action, c.id, {"name": c.short_name, "image": c.image_ref,
                                                        **c.labels, **extra})

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
        mounts += cfg.volumes_from(host_config, mounts, lambda ref: self.container(ref).mounts)
        mounts += cfg.anonymous_volumes([*(image_config.get("Volumes") or {}), *(config.get("Volumes") or {})],
                                        mounts, self.volumes_dir)
        log_opts, log_size, log_files = cfg.log_config(host_config, self.log_defaults)
        mode = NetworkMode.parse(host_config.get("NetworkMode"))
        host_config["NetworkMode"] = str(mode)
        if mode.is_container:
            donor = self.container(mode.container)
            if config.get("Hostname"):
                raise InvalidParameter("conflicting options: hostname and the network mode")
            host_config["NetworkMode"] = str(NetworkMode.of_container(donor.id))
        link_pairs = links.parse(host_config.get("Links"), mode)
        link_targets = []
        for target, _ in link_pairs:
            try:
                link_targets.append(self.container(target))
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
        log_driver = host_config["LogConfig"]["Type"]
        log_path = self._dir(cid, cfg.log_file(log_driver, cid)) if log_driver != "none" else ""
        c = Container(
            id=cid, name="", created=utc_now(), path=argv[0], args=argv[1:], image_id=image.id, state=State(),
            config=config, host_config=HostSettings(host_config), networking_config=networking,
            network_settings=NetworkSettings(planned_networks(mode, networking, config),
                                             {"Bridge": "", "SandboxID": "", "SandboxKey": "", "Ports": {},
                                              "IPAddress": "", "IPPrefixLen": 0, "Gateway": "", "MacAddress": ""}),
            mounts=mounts, resolv_conf_path=self._dir(cid, "resolv.conf"), hostname_path=self._dir(cid, "hostname"),
            hosts_path=self._dir(cid, "hosts"),
            log_path=log_path if log_driver == "json-file" else "",  # Docker shows no other driver's file
            restart_count=0,
            layers=Layers(upper=self._dir(cid, "upper"), work=self._dir(cid, "work"), merged=self._dir(cid, "rootfs"),
                          lower=self._lower_dirs(image)),
            private=Private(log_file=log_path, log_max_size=log_size, log_max_file=log_files,
                            log_attrs=cfg.log_attrs(log_opts, config["Labels"], config["Env"]),
                            log_compress=cfg.log_compress(host_config["LogConfig"])),
            extra={"Driver": "overlay2", "Platform": "linux", "MountLabel": "", "ProcessLabel": "",
                   "AppArmorProfile": "", "ExecIDs": None},
        )
        self.network.validate(network_request(c))
        with self._lock:
            c.name = "/" + (cfg.check_name(name) if name else self._generate_name())
            c.host_config.links = links.stored(link_pairs, link_targets, c.name)
            self._check_name_free(c.name)
            try:
                for sub in ("upper", "work", "rootfs"):
                    os.makedirs(self._dir(cid, sub), exist_ok=True)
                fault("create-after-dirs")
                for m in mounts:
                    if m.is_volume:
                        self.volumes.ensure(m.name, m.anonymous, *cfg.mount_volume_request(host_config, m.destination))
                self.save(c)
            except (OSError, sqlite3.Error, InvalidParameter) as exc:  # a volume's options refused included
                remove_tree(self._dir(cid), ignore_errors=True)
                full = isinstance(exc, sqlite3.Error) and "full" in str(exc) or getattr(exc, "errno", 0) == errno.ENOSPC
                if full:
                    raise SystemError_(f"no space left on device: the data root {self.data_root} is full") from None
                raise
        self.announce(c, "create")
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

    def _spec(self, c: Container, mode: NetworkMode) -> Spec:
        cid, config, hc = c.id, c.config, c.host_config.raw
        image = self.images.resolve(c.image_id)
        shared = cfg.shared_namespaces(hc, "")
        namespaces = [ns for ns in ("mnt", "uts", "ipc", "pid", "cgroup") if ns not in shared]
        join_net = ""
        if mode.is_container:
            donor = self.running(mode.container, for_="join its network namespace")
            join_net = f"/proc/{donor.state.pid}/ns/net"
        elif not mode.is_host:
            namespaces.append("net")
        mounts = [Mount(destination=m.destination, type=m.type, source=m.source, readonly=not m.rw,
                        options=m.mode if m.type == "tmpfs" else "", propagation=cfg.propagation(m))
                  for m in c.mounts]
        for source, target in ((c.resolv_conf_path, "/etc/resolv.conf"), (c.hostname_path, "/etc/hostname"),
                               (c.hosts_path, "/etc/hosts")):
            # written (or shared from a donor) before the process is released to mount them
            if not any(m.destination == target for m in mounts):
                mounts.append(Mount(destination=target, source=source))
        process = Process(
            args=[c.path, *c.args], env=config["Env"] + links.environment(links.resolve(self, c)),
            cwd=config["WorkingDir"] or "/",
            user=config["User"], additional_groups=hc.get("GroupAdd") or [], tty=c.tty,
            stdin=c.open_stdin, console_size=cfg.console_size(hc.get("ConsoleSize")),
            no_new_privileges=self.no_new_privileges or "no-new-privileges" in (hc.get("SecurityOpt") or [])
            or "no-new-privileges:true" in (hc.get("SecurityOpt") or []),
        )
        log_path, log_driver = logs.source(c)
        spec = Spec(
            id=cid, process=process, namespaces=namespaces, join_net=join_net,
            hostname=config.get("Hostname") or "", domainname=config.get("Domainname") or "",
            rootfs=self._dir(cid, "rootfs"), lower=self.images.layer_dirs(image),
            upper=self._dir(cid, "upper"), work=self._dir(cid, "work"),
            readonly_rootfs=bool(hc.get("ReadonlyRootfs")), volatile=c.host_config.auto_remove, mounts=mounts,
            sysctls=hc.get("Sysctls") or {}, privileged=c.host_config.privileged,
            init_binary=self.init_binary if hc.get("Init") else "",
            log_path=log_path, log_max_size=c.private.log_max_size or 0,
            log_max_file=c.private.log_max_file or 1, log_attrs=c.private.log_attrs,
            log_driver=log_driver, log_compress=c.private.log_compress,
        )
        security_options.apply(spec, hc, self.no_new_privileges)
        remap = security_options.user_namespace(hc, self.userns_remap)
        if remap is not None:
            spec.uid_map, spec.gid_map = remap.uid_map, remap.gid_map
            for m in c.mounts:  # a fresh volume belongs to the container's root, as with Docker
                if m.is_volume and os.stat(m.source).st_uid == 0:
                    os.chown(m.source, *remap.root)
        return spec

    def running(self, ref: str, for_: str = "") -> Container:
        c = self.container(ref)
        if not c.state.running:
            raise Conflict(f"Container {c.id} is not running" + (f": cannot {for_}" if for_ else ""))
        return c

    def cgroup(self, c: Container) -> cgroups.Manager:
        parent = (c.host_config.cgroup_parent or self.cgroup_parent).strip("/")
        return self.cgroups_for(f"{parent}/{c.id}")

    def start(self, ref: str, before_release: Callable[[str], None] | None = None) -> None:
        """Start a created or exited container; `before_release` lets attach streams connect first."""
        cid = self._resolve(ref)
        with self._lock_for(cid):
            c = self.container(cid)
            if c.state.running:
                raise NotModified("container already started")
            if c.state.status == "removing":
                raise Conflict(f"container {cid} is marked for removal and cannot be started")
            if not os.path.isdir(self._dir(cid)):
                raise SystemError_(f"the directory of container {cid} is missing: run `coracle system check` "
                                   "to recreate it")
            self._start_locked(c, before_release)

    def _start_locked(self, c: Container, before_release: Callable[[str], None] | None) -> None:
        cid, hc = c.id, c.host_config.raw
        mode = c.host_config.mode
        sock = None
        phases = trace.Phases("start", cid)
        with self._starting_lock:
            self._starting[cid] = None
        try:
            with Undo(f"start of {cid}") as undo:
                if mode.is_container:
                    self._share_donor_files(c, mode)
                spec = self._spec(c, mode)
                file_access.copy_up(self, c)
                undo.add(lambda: self.volumes.detach(cid, c.mounts))
                self.volumes.attach(cid, c.mounts)
                sock, pid = self.monitor.spawn(spec)
                undo.add(lambda: self.monitor.abandon(None, cid))
                undo.add(lambda: sock.close() if sock is not None else None)  # first: the spawn is let go
                phases.mark("spawn")
                cg = self.cgroup(c)
                undo.add(cg.destroy)  # before the rename: a renamed cgroup is the container's to undo
                adopted = cg.adopt(pid)  # PID 1 born in the spare child's cgroup: renamed, not moved
                cg.create()
                if not adopted:
                    cg.apply(pid)
                cg.set(Resources.from_host_config(hc))
                cg.set_devices([DeviceRule.from_json(r) for r in spec.device_rules])
                security_options.set_oom_score_adj(pid, hc)
                fault("start-after-cgroup")
                phases.mark("cgroup")
                undo.add(lambda: self.network.detach(cid))
                attachment = self.network.attach(network_request(c, pid))
                c.network_settings = NetworkSettings.from_stored(attachment.settings)
                fault("start-after-network")
                phases.mark("network")
                if attachment.files is not None:  # none in container mode: the donor's are shared
                    self._write_files(c, attachment.files)  # read at release
                phases.mark("files")
                c.state.pid = pid
                if before_release:
                    before_release(cid)
                self._exited[cid] = threading.Event()
                self.monitor.release(sock, cid)
                sock = None
                phases.mark("release")
                self.spare_cgroup.soon(delay=SPARE_CGROUP_DELAY)  # the monitor forked a new spare
        except BaseException as exc:
            with self._starting_lock:
                self._starting.pop(cid, None)
            self._exited.pop(cid, None)
            c.state.failed_start(exc.exit_code if isinstance(exc, StartError) else 128, str(exc))
            c.unwire()
            self.save(c)
            if c.host_config.auto_remove:
                threading.Thread(target=self._auto_remove, args=(cid,), daemon=True).start()
            if isinstance(exc, StartError):
                raise StartError(f"failed to create task for container: {exc}", exc.exit_code) from None
            raise
        c.state.run(utc_now())
        c.private.start_ticks = proc_start_ticks(c.state.pid)
        c.private.manual_stop = False
        c.private.cgroup_path = self.cgroup(c).path
        if health.Probe.of(c.config):
            c.state.health = health.starting()
        with self._starting_lock:
            early = self._starting.pop(cid, None)  # later exits wait for the container's lock, held here
        if early is None:
            self.save(c)
        phases.mark("save")
        phases.done()
        self.announce(c, "start")
        if early is None:
            self.health.watch(c)
        else:
            self._finish(early, c)  # it has exited already: one save records the run and the exit

    def _share_donor_files(self, c: Container, mode: NetworkMode) -> None:
        """container:<id> mode uses the donor's hostname, hosts and resolv.conf."""
        donor = self.container(mode.container)
        c.resolv_conf_path, c.hostname_path = donor.resolv_conf_path, donor.hostname_path
        c.hosts_path = donor.hosts_path
        c.config["Hostname"] = donor.config["Hostname"]

    def _write_files(self, c: Container, files: ContainerFiles | None = None) -> None:
        """/etc/hostname, /etc/hosts, /etc/resolv.conf as the network layer rendered them (at attach), or
        renders them again from the recorded settings."""
        files = files or self.network.files(network_request(c), c.network_settings.stored())
        paths = {"/etc/hosts": c.hosts_path, "/etc/resolv.conf": c.resolv_conf_path,
                 "/etc/hostname": c.hostname_path}
        for target, content in files.by_path().items():
            if target == "/etc/hosts":
                content += links.hosts_lines(links.resolve(self, c))
            tmp = paths[target] + ".tmp"
            with open(tmp, "w") as f:
                f.write(content)
            os.replace(tmp, paths[target])

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

    def _finish(self, event: dict[str, Any], started: Container | None = None) -> None:
        """Record an exit; `started` is the record of a start that has not been saved yet."""
        cid = event["id"]
        self.health.forget(cid)
        c = started or self.record(cid)
        if c is None or c.state.pid != event.get("pid") and event.get("pid"):
            self.monitor.forget_exit(cid)
            return
        phases = trace.Phases("exit", cid)
        cg = self.cgroup(c)
        oom = False
        with contextlib.suppress(OSError):
            oom = cg.oom_killed()
        try:
            self.network.detach(cid)
            phases.mark("network")
        finally:
            cg.destroy()
            phases.mark("cgroup")
            self.spare_cgroup.soon()  # now, if a staging waits: this container's cgroup work is done
        code = event["exit_code"]
        if code is None:  # it ended while nobody could read its status
            code = 137 if c.private.manual_stop else 255
        c.state.exit(code, oom, event.get("finished_at") or utc_now())
        c.unwire()
        self.save(c)
        phases.mark("save")
        self.volumes.detach(cid, c.mounts)
        self.monitor.forget_exit(cid)
        phases.mark("forget")
        phases.done()
        if oom:
            self.announce(c, "oom")
        self.announce(c, "die", exitCode=str(code))
        done = self._exited.pop(cid, None)
        if done:
            done.set()
        if c.host_config.auto_remove:
            threading.Thread(target=self._auto_remove, args=(cid,), daemon=True).start()
            return
        self._maybe_restart(c)

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
            c = self.record(cid)
            if c is None or c.state.running or not c.state.restarting:
                return
            c.restart_count += 1
            try:
                self._start_locked(c, None)
            except CoracleError as exc:
                log.warning("restart of %s failed: %s", cid, exc)
                c = self.record(cid)
                if c is not None:
                    self._maybe_restart(c)

    def _maybe_restart(self, c: Container, immediate: bool = False) -> None:
        """Apply the restart policy to a container that just exited."""
        delay = self.restarts.delay(c, immediate)
        if delay is None:
            return
        c.state.await_restart()
        self.save(c)
        self.restarts.schedule(c.id, delay)

    # ----- stop, kill, pause ---------------------------------------------

    def _signal(self, c: Container, sig: int) -> None:
        if not self.alive(c):
            raise Conflict(f"Container {c.id} is not running")
        try:
            os.kill(c.state.pid, sig)
        except ProcessLookupError:
            raise Conflict(f"Container {c.id} is not running") from None

    def _wait_exit(self, cid: str, timeout: float | None) -> bool:
        done = self._exited.get(cid)
        if done is None:
            return True
        return done.wait(timeout)

    def wait_exit(self, ref: str, timeout: float | None = None) -> int | None:
        """The exit code once the container's process has ended; None if it still runs at the timeout."""
        cid = self._resolve(ref)
        if not self._wait_exit(cid, timeout):
            return None
        return self.container(cid).state.exit_code

    def stop(self, ref: str, timeout: int | None = None, sig: str | None = None) -> None:
        cid = self._resolve(ref)
        with self._lock_for(cid):
            c = self.container(cid)
            self.restarts.cancel(cid)
            if c.state.restarting:
                c.state.cancel_restart()
                c.private.manual_stop = True
                self.save(c)
                return
            if not c.state.running:
                raise NotModified("container already stopped")
            c.private.manual_stop = True
            self.save(c)
            if c.state.paused:
                self.cgroup(c).thaw()
            number = cfg.parse_signal(sig or c.config.get("StopSignal"))
            if timeout is None:
                timeout = c.config.get("StopTimeout")
            timeout = 10 if timeout is None else timeout
        try:
            self._signal(c, number)
        except Conflict:
            return
        if not self._wait_exit(cid, None if timeout < 0 else timeout):  # -1: wait as long as it takes
            try:
                self._signal(self.container(cid), signal.SIGKILL)
            except (Conflict, NotFound):
                return
            self._wait_exit(cid, 30)
        self.announce(c, "stop")

    def attached(self, ref: str) -> None:
        """A client attached to the container's streams: Docker's `attach` event."""
        self.announce(self.container(ref), "attach")

    def kill(self, ref: str, sig: str | None = None) -> None:
        cid = self._resolve(ref)
        number = cfg.parse_signal(sig, "SIGKILL")
        with self._lock_for(cid):
            c = self.container(cid)
            if not c.state.running:
                raise Conflict(f"Container {cid} is not running")
            if number in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
                c.private.manual_stop = True
                self.save(c)
            self._signal(c, number)
        self.announce(c, "kill", signal=str(number))
        if number == signal.SIGKILL:
            self._wait_exit(cid, 10)

    def restart(self, ref: str, timeout: int | None = None) -> None:
        cid = self._resolve(ref)
        with contextlib.suppress(NotModified):
            self.stop(cid, timeout)
        self.start(cid)
        self.announce(self.container(cid), "restart")

    def commit(self, ref: str, *, pause: bool = True, repo_tag: str | None = None, changes: list[str] | None = None,
               comment: str = "", author: str = "", config: dict[str, Any] | None = None) -> Image:
        """`docker commit`: the container's own layer (its overlay upper dir) as a new image.

        The upper dir is the container's to change while it runs; with `pause`
        (Docker's default) a running container is frozen while it is read, so
        the image is one moment of it and nothing is swapped under the reader,
        which reads by descriptor anyway (images/layers.pack)."""
        c = self.container(ref)
        base = self.images.resolve(c.image_id)
        with self._lock_for(c.id):
            c = self.container(c.id)
            freeze = pause and c.state.running and not c.state.paused
            if freeze:
                self.cgroup(c).freeze()
            try:
                image = self.images.commit(c.layers.upper, base, commit_config(config, c.config, list(changes or [])),
                                           repo_tag, comment, author)
            finally:
                if freeze:
                    self.cgroup(c).thaw()
        self.announce(c, "commit")
        return image

    def pause(self, ref: str) -> None:
        c = self.running(ref)
        with self._lock_for(c.id):
            if c.state.paused:
                raise Conflict(f"Container {c.id} is already paused")
            self.cgroup(c).freeze()
            self.health.forget(c.id)
            c.state.freeze(True)
            self.save(c)
        self.announce(c, "pause")

    def unpause(self, ref: str) -> None:
        c = self.running(ref)
        with self._lock_for(c.id):
            if not c.state.paused:
                raise Conflict(f"Container {c.id} is not paused")
            self.cgroup(c).thaw()
            c.state.freeze(False)
            self.save(c)
            self.health.watch(c)
        self.announce(c, "unpause")

    # ----- remove, rename, update ------------------------------------------

    def remove(self, ref: str, force: bool = False, volumes: bool = False) -> None:
        cid = self._resolve(ref)
        with self._lock_for(cid):
            c = self.container(cid)
            self.restarts.cancel(cid)
            if c.state.running:
                if not force:
                    raise Conflict(f"You cannot remove a running container {cid}. Stop the container before "
                                   "attempting removal or force remove")
                if c.state.paused:
                    self.cgroup(c).thaw()
                c.private.manual_stop = True
                c.host_config.auto_remove = False  # we are removing it ourselves
                self.save(c)
                with contextlib.suppress(Conflict):
                    self._signal(c, signal.SIGKILL)
        self._wait_exit(cid, 30)
        phases = trace.Phases("remove", cid)
        with self._lock_for(cid):
            current = self.record(cid)  # gone if another remove finished meanwhile
            if current is None:
                return
            c = current
            c.state.status = "removing"
            if not c.host_config.auto_remove:  # a --rm container left behind is removed at restore anyway
                self.save(c, beside=False)
            phases.mark("save")
            fault("rm-before-cleanup")
            self.network.detach(cid)
            self.cgroup(c).destroy()
            phases.mark("detach")
            self._trash.discard(self._dir(cid))
            with self._saving:
                self.store.delete(KIND, cid)
                self.index.drop(cid)
            phases.mark("delete")
            if volumes:
                self.volumes.remove_anonymous(m.name for m in c.mounts if m.is_volume)
            self.monitor.forget_exit(cid)
            phases.mark("forget")
        with self._lock:
            self._locks.pop(cid, None)
        self.announce(c, "destroy")
        phases.mark("announce")
        phases.done()

    def remove_link(self, path: str) -> None:
        """DELETE /containers/{linker/alias}?link=1: the linking container forgets that link."""
        c = links.remove(self, path)
        with self._lock_for(c.id):
            self.save(c)

    def rename(self, ref: str, new_name: str) -> None:
        name = "/" + cfg.check_name(new_name)
        with self._lock:
            c = self.container(ref)
            if c.name == name:
                raise InvalidParameter("Renaming a container with the same name as its current name")
            self._check_name_free(name)
            old, c.name = c.name, name
            c.rename_in_networks(self.network.rename(network_request(c), old))
            self.save(c)
        self.announce(c, "rename", oldName=old)

    def update(self, ref: str, body: dict[str, Any]) -> dict[str, Any]:
        """`docker update`: new limits on a live cgroup, and the restart policy."""
        cid = self._resolve(ref)
        with self._lock_for(cid):
            c = self.container(cid)
            hc = {**c.host_config.raw, **{k: v for k, v in body.items() if k != "RestartPolicy"}}
            resources = Resources.from_host_config(hc)
            if "RestartPolicy" in body:
                hc["RestartPolicy"] = body["RestartPolicy"]
                cfg.restart_policy(hc)
            if c.state.running:
                self.cgroup(c).update(resources)
            c.host_config = HostSettings(hc)
            self.save(c)
        self.announce(c, "update")
        return {"Warnings": []}

    # ----- networks of a container -------------------------------------------

    def connect(self, ref: str, network_ref: str, endpoint_config: dict[str, Any]) -> None:
        """`docker network connect`: recorded always, wired live when the container runs."""
        cid = self._resolve(ref)
        with self._lock_for(cid):
            c = self.container(cid)
            if not c.host_config.mode.has_endpoints:
                raise InvalidParameter("container sharing network namespace with another container or host "
                                       "cannot be connected to any other network")
            fault("connect-before-network")
            joined = self.network.connect(network_request(c, c.state.pid if c.state.running else 0), network_ref,
                                          EndpointOptions.from_docker(network_ref, endpoint_config))
            c.join(joined.network_name, dict(joined.settings))
            self.save(c)

    def disconnect(self, ref: str, network_ref: str, force: bool = False) -> None:
        cid = self._resolve(ref)
        with self._lock_for(cid):
            c = self.container(cid)
            left = self.network.disconnect(network_request(c, c.state.pid if c.state.running else 0), network_ref,
                                           force)
            c.leave(left.refs, dict(left.settings))
            self.save(c)

    # ----- views ---------------------------------------------------------

    def top(self, ref: str, ps_args: str = "") -> dict[str, Any]:
        pids = self.cgroup(self.running(ref)).procs()
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
        c = self.container(ref)
        base = {"id": c.id, "name": c.name, "read": utc_now(), "preread": ZERO}
        if not c.state.running:
            return {**base, "memory_stats": {}, "cpu_stats": {}, "precpu_stats": {}, "pids_stats": {},
                    "blkio_stats": {}, "networks": {}}
        stats = self.cgroup(c).stats()
        return {**base, **stats, "networks": network_counters(c.state.pid)}

    # ----- start-up ------------------------------------------------------

    def restore(self) -> dict[str, list[str]]:
        """Re-adopt what survived the daemon, record exits that happened while it was away."""
        report: dict[str, list[str]] = {"adopted": [], "exited": [], "restarted": []}
        live = {p["id"]: p for p in self.monitor.list()}
        exits = {e["id"]: e for e in self.monitor.exit_records()}
        for c in self.own_records():
            cid, state = c.id, c.state
            if state.status == "removing":
                self.remove(cid, force=True)
                continue
            if not state.running and c.host_config.auto_remove:  # as Docker: --rm and not running: removed
                self.remove(cid, force=True)
                continue
            if not state.running:
                if state.restarting:
                    self._maybe_restart(c, immediate=True)
                continue
            event = exits.get(cid)
            if (event is None or event.get("pid") != state.pid) and self.alive(c):
                # Alive by /proc (pid and start time), whatever the monitor says: adopt, never kill.
                self._exited[cid] = threading.Event()
                proc = live.get(cid)
                if not (proc and proc["pid"] == state.pid):
                    self._watch_orphan(cid)  # nobody supervises it any more: it runs on, watched
                report["adopted"].append(cid)
                continue
            if event is None or event.get("pid") != state.pid:
                event = {"id": cid, "pid": state.pid, "exit_code": None, "finished_at": utc_now()}
            with self._lock_for(cid):
                self._exited[cid] = threading.Event()
                self._finish(event)
            report["exited"].append(cid)
        for proc in live.values():
            if proc["state"] == "held":  # its start died with the daemon; it never ran user code
                self.monitor.abandon(None, proc["id"])
        for cid in report["adopted"]:
            adopted = self.record(cid)
            if adopted:
                self.health.watch(adopted)
        return report

    def own_records(self) -> list[Container]:
        """Every record, oldest first, as copies the caller may change and save."""
        return [Container.from_stored(rec) for rec in self.index.copies()]

    def alive(self, c: Container) -> bool:
        """Its PID 1 runs: the recorded pid exists with the recorded start time (never reused) and has
        not ended."""
        return bool(c.state.pid) and proc_start_ticks(c.state.pid, running=True) == c.private.start_ticks

    def adopt_orphans(self) -> list[str]:
        """After the monitor was replaced: watch the running containers it no longer parents."""
        supervised = {p["id"] for p in self.monitor.list()}
        orphans = [c.id for c in self.containers() if c.state.running and c.id not in supervised]
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
                    c = self.record(cid)
                    if c is None or not c.state.running:
                        return
                    if not self.alive(c):
                        self.on_monitor_event({"id": cid, "kind": "container", "pid": c.state.pid,
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
        for c in self.containers():
            if not comes_back_at_boot(c):
                continue
            try:
                self.start(c.id)
                started.append(c.id)
            except CoracleError as exc:
                log.warning("could not restart %s: %s", c.id, exc)
        return started
