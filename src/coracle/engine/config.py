"""From a Docker `POST /containers/create` body to a validated container record.

All user input is checked here, before anything exists, so that a bad request
fails with a clear 400 and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import secrets
import signal as _signal
from collections.abc import Callable
from typing import Any

from coracle.engine.container import MountPoint
from coracle.engine.volumes import check_name as check_volume_name, check_driver as check_volume_driver
from coracle.errors import InvalidParameter
from coracle.runtime.mountpoint import tmpfs_options
from coracle.runtime.rootfs import propagation_of

NAME_RE = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
RESTART_POLICIES = {"", "no", "always", "unless-stopped", "on-failure"}
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def new_id() -> str:
    return secrets.token_hex(32)


def check_name(name: str) -> str:
    """Docker's name rule; returns the name without its leading slash."""
    if not NAME_RE.match(name):
        raise InvalidParameter(f'Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed')
    return name.lstrip("/")


def parse_signal(value: str | int | None, default: str = "SIGTERM") -> int:
    """ "KILL", "SIGKILL", "9" -> 9, with Docker's error for anything else."""
    if value in (None, "", 0):
        value = default
    text = str(value).upper()
    if text.isdigit():
        number = int(text)
        if 0 < number < 65:
            return number
    else:
        name = text if text.startswith("SIG") else "SIG" + text
        if hasattr(_signal.Signals, name):
            return int(_signal.Signals[name])
    raise InvalidParameter(f"Invalid signal: {value}")


def merge_env(image_env: list[str] | None, env: list[str] | None) -> list[str]:
    """Image environment overridden key by key by the container's."""
    merged: dict[str, str] = {}
    for item in [*(image_env or []), *(env or [])]:
        if not isinstance(item, str):
            raise InvalidParameter(f"invalid environment variable: {item!r}")
        key = item.split("=", 1)[0]
        if not key:
            raise InvalidParameter(f"invalid environment variable: {item}")
        merged[key] = item
    if "PATH" not in merged:
        merged["PATH"] = DEFAULT_PATH
    return list(merged.values())


def strings(value: Any, field: str) -> list[str] | None:
    """A JSON field that Docker accepts as a string or a list of strings."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidParameter(f"{field} must be a list of strings")
    return value


def command(config: dict[str, Any], image_config: dict[str, Any]) -> list[str]:
    """Entrypoint + Cmd as Docker combines them: an explicit entrypoint drops the image's Cmd."""
    entrypoint = strings(config.get("Entrypoint"), "Entrypoint")
    cmd = strings(config.get("Cmd"), "Cmd")
    if entrypoint is None:
        argv = list(image_config.get("Entrypoint") or []) + (cmd or list(image_config.get("Cmd") or []))
    else:
        argv = [part for part in entrypoint if part] + (cmd or [])
    if not argv:
        raise InvalidParameter("no command specified")
    return argv


def restart_policy(host_config: dict[str, Any]) -> dict[str, Any]:
    policy = host_config.get("RestartPolicy") or {}
    if not isinstance(policy, dict):
        raise InvalidParameter("RestartPolicy must be an object")
    name = policy.get("Name") or ""
    if name not in RESTART_POLICIES:
        raise InvalidParameter(f"invalid restart policy '{name}'")
    retries = policy.get("MaximumRetryCount") or 0
    if not isinstance(retries, int) or retries < 0:
        raise InvalidParameter("invalid restart policy: maximum retry count cannot be negative")
    if retries and name != "on-failure":
        raise InvalidParameter("invalid restart policy: maximum retry count can only be used with 'on-failure'")
    if name not in ("", "no") and host_config.get("AutoRemove"):
        raise InvalidParameter("can't create 'AutoRemove' container with restart policy")
    return {"Name": name, "MaximumRetryCount": retries}


def console_size(value: Any) -> list[int] | None:
    """[height, width] of a terminal's first size (ConsoleSize); None when unset ([0, 0])."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > 2 or not all(type(v) is int and v >= 0 for v in value):
        raise InvalidParameter("ConsoleSize must be [height, width], two numbers that are not negative")
    rows, cols = (value + [0, 0])[:2]
    return [rows, cols] if rows or cols else None


# Docker's bind propagation modes; rprivate unless asked for.
PROPAGATIONS = ("private", "rprivate", "shared", "rshared", "slave", "rslave")


def clean_path(path: str) -> str:
    """An absolute path inside the container in canonical form.

    `..` stops at the root, as it does for the container's own processes, so
    the runtime never receives a path that climbs out of the rootfs when it
    is joined to it (`/dev/../../tmp/x` is the container's `/tmp/x`)."""
    return "/" + posixpath.normpath("/" + path).lstrip("/")


def _destination(path: Any, kind: str, prefix: str = "") -> str:
    """A mount's destination: absolute, canonical, and not the container's root."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidParameter(f"{prefix}invalid mount config for type \"{kind}\": invalid mount path: '{path}' "
                               "mount path must be absolute")
    clean = clean_path(path)
    if clean == "/":
        raise InvalidParameter(f"{prefix}invalid mount config for type \"{kind}\": invalid specification: "
                               "destination can't be '/'")
    return clean


def working_dir(path: Any) -> str:
    """Config.WorkingDir (create and exec): empty or absolute, as Docker requires."""
    if not path:
        return ""
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidParameter(f"the working directory '{path}' is invalid, it needs to be an absolute path")
    return clean_path(path)


def binds(host_config: dict[str, Any], volumes_root: str) -> list[MountPoint]:
    """`-v SRC:DST[:ro]` and HostConfig.Mounts -> mount points."""
    mounts: list[MountPoint] = []
    for bind in host_config.get("Binds") or []:
        if not isinstance(bind, str):
            raise InvalidParameter(f"invalid volume specification: {bind!r}")
        parts = bind.split(":")
        if len(parts) == 1:
            src, dst, mode = "", parts[0], ""
        elif len(parts) == 2:
            src, dst, mode = parts[0], parts[1], ""
        elif len(parts) == 3:
            src, dst, mode = parts
        else:
            raise InvalidParameter(f"invalid volume specification: '{bind}'")
        dst = _destination(dst, "bind", f"invalid volume specification: '{bind}': ")
        flags = set(filter(None, mode.split(",")))
        propagations = flags & set(PROPAGATIONS)
        if flags - {"ro", "rw", "z", "Z", "nocopy", *PROPAGATIONS} or len(propagations) > 1:
            raise InvalidParameter(f"invalid mode: {mode}")
        mounts.append(_mount_point(src, dst, "ro" not in flags, volumes_root,
                                   propagation=next(iter(propagations), ""), nocopy="nocopy" in flags))
    for m in host_config.get("Mounts") or []:
        if not isinstance(m, dict):
            raise InvalidParameter("invalid mount config: a mount must be an object")
        kind = m.get("Type", "bind")
        dst = _destination(m.get("Target"), kind)
        if kind == "tmpfs":
            opts = m.get("TmpfsOptions") or {}
            data = ",".join(filter(None, ["ro" if m.get("ReadOnly") else "",
                                          f"size={opts['SizeBytes']}" if opts.get("SizeBytes") else "",
                                          f"mode={opts['Mode']:o}" if opts.get("Mode") else ""]))
            mounts.append(MountPoint("tmpfs", "", dst, data, True))
        elif kind in ("bind", "volume"):
            if kind == "bind" and m.get("VolumeOptions"):
                raise InvalidParameter('invalid mount config for type "bind": '
                                       "field VolumeOptions must not be specified")
            if kind == "volume":  # the options are checked when the volume is made (an existing one ignores them)
                check_volume_driver(volume_request(m)[0])
            propagation = (m.get("BindOptions") or {}).get("Propagation") or ""
            if propagation not in ("", *PROPAGATIONS):
                raise InvalidParameter(f"invalid mount config for type \"{kind}\": invalid propagation mode: "
                                       f"{propagation}")
            mounts.append(_mount_point(m.get("Source", ""), dst, not m.get("ReadOnly"), volumes_root,
                                       kind=kind, propagation=propagation,
                                       nocopy=bool((m.get("VolumeOptions") or {}).get("NoCopy"))))
        else:
            raise InvalidParameter(f"mount type {kind} is not supported")
    return mounts


def volume_request(mount: dict[str, Any]) -> tuple[str, dict[str, str], dict[str, str]]:
    """The driver, options and labels a `--mount type=volume` asks for (volume-driver, volume-opt,
    volume-label): what the volume is created with when the container is the one creating it."""
    opts = mount.get("VolumeOptions") or {}
    driver = opts.get("DriverConfig") or {}
    return (driver.get("Name") or "local", {k: str(v) for k, v in (driver.get("Options") or {}).items()},
            {k: str(v) for k, v in (opts.get("Labels") or {}).items()})


def mount_volume_request(host_config: dict[str, Any], destination: str
                         ) -> tuple[str, dict[str, str], dict[str, str]]:
    """volume_request of the HostConfig.Mounts entry at `destination` (a plain local volume for `-v`)."""
    for m in host_config.get("Mounts") or []:
        if m.get("Type") == "volume" and _destination(m.get("Target"), "volume") == destination:
            return volume_request(m)
    return "local", {}, {}


def propagation(mount: MountPoint) -> str:
    """A bind's propagation, checked at start against its source as Docker does: shared
    and slave binds need a source on a shared (or, for slave, a slave) host mount."""
    mode = mount.propagation
    if mount.type != "bind" or mode.lstrip("r") not in ("shared", "slave"):
        return mode
    point, kinds = propagation_of(mount.source)
    if mode.lstrip("r") == "shared" and "shared" not in kinds:
        raise InvalidParameter(f"path {mount.source} is mounted on {point} but it is not a shared mount")
    if not kinds:
        raise InvalidParameter(f"path {mount.source} is mounted on {point} but it is not a shared or slave mount")
    return mode


def _mount_point(src: str, dst: str, rw: bool, volumes_root: str, kind: str | None = None,
                 propagation: str = "", nocopy: bool = False) -> MountPoint:
    """A bind or volume mount; a volume's mode also says `nocopy` (no copy-up, engine/file_access.py)."""
    if src.startswith("/"):
        if not os.path.exists(src):
            # Docker creates a missing bind source directory for -v (not for --mount).
            if kind == "bind":
                raise InvalidParameter("invalid mount config for type \"bind\": "
                                       f"bind source path does not exist: {src}")
            os.makedirs(src, exist_ok=True)
        return MountPoint("bind", src, dst, "" if rw else "ro", rw, propagation or "rprivate")
    name = check_volume_name(src or secrets.token_hex(32))
    path = os.path.join(volumes_root, name, "_data")
    mode = ",".join(filter(None, ["" if rw else "ro", "nocopy" if nocopy else ""]))
    return MountPoint("volume", path, dst, mode, rw, name=name, driver="local")


def anonymous_volumes(paths: list[str], mounts: list[MountPoint], volumes_root: str) -> list[MountPoint]:
    """Config.Volumes (the image's VOLUME and the create body's): a new anonymous volume for
    each path that no other mount covers."""
    taken = {m.destination for m in mounts}
    out = []
    for path in dict.fromkeys(paths):
        dst = _destination(path, "volume")
        if dst not in taken:
            taken.add(dst)
            out.append(_mount_point("", dst, True, volumes_root))
    return out


def volumes_from(host_config: dict[str, Any], mounts: list[MountPoint],
                 mounts_of: Callable[[str], list[MountPoint]]) -> list[MountPoint]:
    """HostConfig.VolumesFrom `ctr[:ro|rw]`: the volumes and binds of another container, at the
    same destinations, unless this container mounts something there itself."""
    taken = {m.destination for m in mounts}
    out = []
    for spec in host_config.get("VolumesFrom") or []:
        if not isinstance(spec, str) or not spec:
            raise InvalidParameter(f"invalid volumes-from specification: {spec!r}")
        ref, _, mode = spec.partition(":")
        if mode not in ("", "ro", "rw"):
            raise InvalidParameter(f"invalid mode for volumes-from: {mode}")
        for m in mounts_of(ref):
            if m.type in ("volume", "bind") and m.destination not in taken:
                taken.add(m.destination)
                out.append(m.with_access(m.rw if not mode else mode == "rw"))
    return out


def tmpfs(host_config: dict[str, Any]) -> list[MountPoint]:
    out = []
    for dst, opts in (host_config.get("Tmpfs") or {}).items():
        try:
            tmpfs_options(opts or "")
        except ValueError as exc:
            raise InvalidParameter(f"invalid tmpfs mount {dst}: {exc}") from None
        out.append(MountPoint("tmpfs", "", _destination(dst, "tmpfs"), opts or "", True))
    return out


LOG_DEFAULTS = {"max-size": "20m", "max-file": "5"}  # Docker's `local` driver bounds; coracled --log-opt
# The log drivers a container may name, with the options each takes ("mode" and
# "max-buffer-size" are Docker's for every driver); runtime/logformat.py writes them.
_ANY_DRIVER_OPTS = {"mode", "max-buffer-size"}
_BOOLS = {**dict.fromkeys(("1", "t", "T", "true", "TRUE", "True"), True),
          **dict.fromkeys(("0", "f", "F", "false", "FALSE", "False"), False)}  # Go's strconv.ParseBool
LOG_DRIVERS = {
    "json-file": {"max-size", "max-file", "compress", "labels", "labels-regex", "env", "env-regex", "tag"},
    "local": {"max-size", "max-file", "compress"},
    "none": set(),
}


def log_driver(host_config: dict[str, Any]) -> str:
    """The container's log driver, refused with Docker's message when it is none of ours."""
    kind = (host_config.get("LogConfig") or {}).get("Type") or "json-file"
    if kind not in LOG_DRIVERS:
        raise InvalidParameter(f"logger: no log driver named '{kind}' is registered")
    return kind


def log_config(host_config: dict[str, Any], defaults: dict[str, str] | None = None
               ) -> tuple[dict[str, str], int, int]:
    """The driver's options (the daemon's defaults under the container's own) and the
    resulting max-size in bytes (0: unbounded, `max-size=-1`) and max-file. `none` takes
    any option and keeps none, as Docker's."""
    kind = log_driver(host_config)
    if kind == "none":
        return {}, 0, 1
    known = LOG_DRIVERS[kind] | _ANY_DRIVER_OPTS
    opts = {**{k: v for k, v in (LOG_DEFAULTS if defaults is None else defaults).items() if k in known},
            **((host_config.get("LogConfig") or {}).get("Config") or {})}
    unknown = set(opts) - known
    if unknown:
        raise InvalidParameter(f"unknown log opt '{sorted(unknown)[0]}' for {kind} log driver")
    if opts.get("compress", "false") not in _BOOLS:
        raise InvalidParameter(f"invalid value for compress: {opts['compress']!r}")
    for key in ("labels-regex", "env-regex"):
        try:
            re.compile(opts.get(key) or "")
        except re.error as exc:
            raise InvalidParameter(f"invalid {key} {opts[key]!r}: {exc}") from None
    size = 0 if str(opts.get("max-size") or "-1") == "-1" else parse_size(opts["max-size"])
    try:
        files = int(opts.get("max-file") or 1)
    except ValueError:
        raise InvalidParameter(f"invalid max-file: {opts.get('max-file')}") from None
    if files < 1:
        raise InvalidParameter("max-file cannot be less than 1")
    return opts, size, files


def log_file(driver: str, cid: str) -> str:
    """The log's file name in the container's directory (Docker's names; none: no file)."""
    return {"none": "", "local": "container.log"}.get(driver, f"{cid}-json.log")


def log_compress(log_config: dict[str, Any]) -> bool:
    """Whether rotated files are gzipped: `compress`, by default true for local (Docker's)."""
    value = (log_config.get("Config") or {}).get("compress")
    return log_config.get("Type") == "local" if value is None else _BOOLS[value]


def log_attrs(opts: dict[str, str], labels: dict[str, str], env: list[str]) -> dict[str, str]:
    """The "attrs" of every log line (`--log-opt labels=`, `labels-regex=`, `env=`,
    `env-regex=`): the container's labels and environment values they name, as Docker's."""
    variables = dict(e.split("=", 1) for e in env if "=" in e)
    attrs: dict[str, str] = {}
    for source, names, pattern in ((labels, opts.get("labels"), opts.get("labels-regex")),
                                   (variables, opts.get("env"), opts.get("env-regex"))):
        for name in (names or "").split(","):
            if name in source:
                attrs[name] = source[name]
        if pattern:
            attrs.update({k: v for k, v in source.items() if re.search(pattern, k)})
    return attrs


def log_defaults(specs: list[str]) -> dict[str, str]:
    """coracled --log-opt key=value (repeatable) over LOG_DEFAULTS, checked like a container's."""
    opts = dict(LOG_DEFAULTS)
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep:
            raise InvalidParameter(f"invalid --log-opt {spec!r}: expected key=value")
        opts[key] = value
    log_config({}, opts)
    return opts


# ----- the record file ------------------------------------------------------------

RECORD_FILE = "config.json"
RECORD_KEYS = {"Id": str, "Name": str, "State": dict, "Config": dict, "HostConfig": dict, "Coracle": dict,
               "NetworkSettings": dict, "Mounts": list, "Path": str, "Args": list, "Image": str, "LogPath": str}
STATE_KEYS = {"Status": str, "Running": bool, "Pid": int, "StartedAt": str, "FinishedAt": str}


def check_record(rec: dict[str, Any]) -> None:
    """Raise ValueError unless `rec` has the shape every part of the engine relies on."""
    for keys, doc, where in ((RECORD_KEYS, rec, ""), (STATE_KEYS, rec.get("State"), "State.")):
        for key, kind in keys.items():
            if not isinstance(doc, dict) or not isinstance(doc.get(key), kind):
                raise ValueError(f"{where}{key} is missing or not a {kind.__name__}")
    if not re.fullmatch(r"[0-9a-f]{64}", rec["Id"]):
        raise ValueError("Id is not a container id")


def write_record_file(directory: str, body: str) -> None:
    """The container's record beside its files, replaced atomically at every save.

    Why: the database can be lost or damaged; with this file the daemon rebuilds
    the record (engine/check.py) instead of treating a live container as unknown.
    Best effort: a full disk or a directory being removed must not fail the change
    the database already holds.
    """
    path = os.path.join(directory, RECORD_FILE)
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            f.write(body)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def read_record_file(directory: str) -> dict[str, Any]:
    """The record saved in a container directory; ValueError/OSError if it is missing or damaged."""
    with open(os.path.join(directory, RECORD_FILE)) as f:
        rec = json.load(f)
    if not isinstance(rec, dict):
        raise ValueError("not a JSON object")
    check_record(rec)
    if rec["Id"] != os.path.basename(directory.rstrip("/")):
        raise ValueError("the record's Id is not its directory's name")
    return rec


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", str(text).lower())
    if not match:
        raise InvalidParameter(f"invalid size: '{text}'")
    factor = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[match.group(2)]
    return int(float(match.group(1)) * factor)


def shared_namespaces(host_config: dict[str, Any], hostname: str) -> set[str]:
    """The namespaces `--pid/--ipc/--uts host` share with the host instead of creating.

    Docker's other values (`private`, `shareable`, `none` for IPC) keep a
    private namespace; joining another container's PID or IPC namespace is
    refused clearly rather than silently ignored.
    """
    shared = set()
    for key, ns, allowed in (("PidMode", "pid", ("", "host")), ("UTSMode", "uts", ("", "host")),
                             ("IpcMode", "ipc", ("", "host", "private", "shareable", "none"))):
        mode = host_config.get(key) or ""
        if mode.startswith("container:"):
            raise InvalidParameter(f"{key} {mode}: joining another container's {ns} namespace is not supported")
        if mode not in allowed:
            raise InvalidParameter(f"invalid {ns.upper()} mode: {mode}")
        if mode == "host":
            shared.add(ns)
    if "uts" in shared and hostname:
        raise InvalidParameter("Conflicting options: hostname and the UTS mode")
    return shared
