"""The container spec: everything the runtime needs to build one process tree.

The engine builds it from Docker's Config/HostConfig; the monitor receives it
as JSON and hands it to the forked child. Keeping it plain data (no engine
objects) is what lets the monitor stay small and live apart from the daemon.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Mount:
    """One mount inside the container (bind, tmpfs), Docker's HostConfig.Mounts shape reduced."""

    destination: str
    type: str = "bind"  # bind | tmpfs
    source: str = ""
    readonly: bool = False
    options: str = ""  # tmpfs data ("size=64m,mode=1777")
    propagation: str = ""  # binds: Docker's rprivate (default), rshared, rslave, ...


@dataclass
class Process:
    """The program to run and how: argv, environment, identity, terminal."""

    args: list[str]
    env: list[str] = field(default_factory=list)
    cwd: str = "/"
    user: str = ""  # "name", "uid", "uid:gid", "name:group" resolved inside the rootfs
    additional_groups: list[str] = field(default_factory=list)
    tty: bool = False
    console_size: list[int] | None = None  # [rows, cols] the terminal has when the program starts
    stdin: bool = False  # keep a stdin pipe open (docker -i)
    no_new_privileges: bool = False
    capabilities: list[str] | None = None  # None: leave as inherited (security layer fills it)
    seccomp: dict[str, Any] | str | None = None  # a Docker profile, "builtin" (the default one), or None
    rlimits: list[dict[str, Any]] = field(default_factory=list)  # [{"Name": "nofile", "Soft": n, "Hard": n}]


@dataclass
class Spec:
    """A whole container (kind "container") or an extra process in one (kind "exec")."""

    id: str
    process: Process
    kind: str = "container"
    # container: which namespaces to create; "net" may instead name a path to join
    namespaces: list[str] = field(default_factory=lambda: ["mnt", "uts", "ipc", "pid", "net", "cgroup"])
    join_net: str = ""  # path of a netns to join (container:<id> mode, host mode = "" and no "net")
    hostname: str = ""
    domainname: str = ""
    rootfs: str = ""  # mount point prepared by the engine
    lower: list[str] = field(default_factory=list)  # overlay lower dirs, lowest first
    upper: str = ""
    work: str = ""
    readonly_rootfs: bool = False
    volatile: bool = False  # the upper dir is discarded after the exit (--rm): no sync at unmount
    mounts: list[Mount] = field(default_factory=list)
    masked_paths: list[str] = field(default_factory=list)
    readonly_paths: list[str] = field(default_factory=list)
    # extra device nodes {"path", "type", "major", "minor", "mode"}
    devices: list[dict[str, Any]] = field(default_factory=list)
    sysctls: dict[str, str] = field(default_factory=dict)
    shm_size: int = 0  # bytes of /dev/shm; 0 = Docker's 64 MiB
    privileged: bool = False
    init_binary: str = ""  # host path of a static init (tini) to run as PID 1 (--init)
    # exec: the container whose namespaces and cgroups to join
    target_pid: int = 0
    cgroup_dirs: list[str] = field(default_factory=list)
    # monitor: where the json-file log goes (containers only)
    log_path: str = ""
    log_max_size: int = 0
    log_max_file: int = 1
    log_attrs: dict[str, str] = field(default_factory=dict)  # "attrs" of every line (--log-opt labels/env)
    log_driver: str = "json-file"  # or "local": the format (runtime/logformat.py)
    log_compress: bool = False  # gzip rotated files
    # device cgroup rules the engine writes before release ({"kind", "major", "minor", "access"}, -1 = any)
    device_rules: list[dict[str, Any]] = field(default_factory=list)
    # user namespace (--userns-remap): rows of [inside, outside, count]; empty = the host's
    uid_map: list[list[int]] = field(default_factory=list)
    gid_map: list[list[int]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Spec:
        data = dict(data)
        data["process"] = Process(**data["process"])
        data["mounts"] = [Mount(**m) for m in data.get("mounts", [])]
        return cls(**data)
