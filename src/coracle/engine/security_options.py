"""A container's security settings, from Docker's HostConfig to the runtime Spec.

Everything a user can get wrong (an unknown capability, a host-wide sysctl, a
ulimit above what the daemon may grant, a device that does not exist, a bad
seccomp profile) is refused here with InvalidParameter, so the engine calls
`apply` at create time (validation) and again when it builds the Spec.

Docker's defaults: 14 capabilities, its seccomp profile, masked and read-only
/proc paths, only the standard device nodes, no_new_privs off unless asked
for. `--privileged` lifts them all on purpose, granting every capability the
daemon itself holds (never more, so it works on hosts whose bounding set is
short) and every host device.
"""

from __future__ import annotations

import json
import os
import resource
import stat
from typing import Any
from collections.abc import Iterator

from coracle.cgroups.devices import ANY, DeviceRule
from coracle.engine.config import clean_path
from coracle.errors import InvalidParameter, SystemError_
from coracle.runtime import capabilities, rootfs, seccomp, seccomp_profile
from coracle.network.mode import NetworkMode
from coracle.runtime.process_security import RLIMITS
from coracle.runtime.spec import Spec
from coracle.runtime.userns import Remap

MASKED_PATHS = [
    "/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
    "/sys/devices/virtual/powercap",
]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]

# Device nodes every container may use besides those rootfs creates: the console,
# /dev/ptmx and the pseudo-terminals of its own devpts.
_TERMINALS = [DeviceRule("c", 5, 1), DeviceRule("c", 5, 2), DeviceRule("c", 136, ANY)]
# Creating any node is harmless by itself (opening it is what the other rules decide).
_MKNOD = [DeviceRule("c", ANY, ANY, "m"), DeviceRule("b", ANY, ANY, "m")]

# sysctls that live in a namespace of the container (exact names, then prefixes).
_IPC_SYSCTLS = {"kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
                "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced"}
_IPC_PREFIXES = ("fs.mqueue.",)


def apply(spec: Spec, host_config: dict[str, Any], daemon_no_new_privs: bool) -> None:
    """Fill the security fields of `spec` from `host_config`; raise InvalidParameter on bad input.

    A seccomp profile given as a file path is read now and its content put in
    place of the path in host_config["SecurityOpt"] (what Docker's CLI sends),
    so the container keeps the profile it was created with.
    """
    hc = host_config
    privileged = _flag(hc, "Privileged")
    opts = _security_opts(hc)
    proc = spec.process
    spec.privileged = privileged
    proc.capabilities = _capabilities(hc, privileged)
    proc.no_new_privileges = opts.get("no-new-privileges", daemon_no_new_privs)
    proc.seccomp = _seccomp_choice(opts, privileged)
    proc.rlimits = _ulimits(hc)
    _oom_score_adj(hc)
    spec.shm_size = _shm_size(hc)
    proc.additional_groups = [str(g) for g in hc.get("GroupAdd") or []]
    spec.readonly_rootfs = _flag(hc, "ReadonlyRootfs")
    spec.sysctls = _sysctls(hc)
    unconfined_paths = privileged or opts.get("systempaths") == "unconfined"
    spec.masked_paths = [] if unconfined_paths else _paths(hc, "MaskedPaths", MASKED_PATHS)
    spec.readonly_paths = [] if unconfined_paths else _paths(hc, "ReadonlyPaths", READONLY_PATHS)
    spec.devices, rules = _devices(hc)
    rules += [DeviceRule.parse(r) for r in _strings(hc, "DeviceCgroupRules")]
    if privileged:
        rules = [DeviceRule("a")]
    else:
        defaults = [DeviceRule(kind, major, minor) for _, kind, major, minor in rootfs.DEFAULT_DEVICES]
        rules = _MKNOD + defaults + _TERMINALS + rules
    spec.device_rules = [r.to_json() for r in rules]


def seccomp_of(hc: dict[str, Any]) -> dict[str, Any] | str | None:
    """The seccomp profile a container's processes run under (None: unconfined)."""
    own = {**hc, "SecurityOpt": list(hc.get("SecurityOpt") or [])}  # _security_opts rewrites the list
    return _seccomp_choice(_security_opts(own), _flag(hc, "Privileged"))


def _seccomp_choice(opts: dict[str, Any], privileged: bool) -> dict[str, Any] | str | None:
    if privileged or opts.get("seccomp") == "unconfined":
        return None
    return opts.get("seccomp") or seccomp_profile.BUILTIN


def user_namespace(hc: dict[str, Any], remap: Remap | None) -> Remap | None:
    """The id maps of the container's own user namespace, or None for the host's.

    Under `--userns-remap` every container gets one unless it opts out with
    UsernsMode "host". As with Docker, a privileged container must opt out
    (its privileges are the host's), and one on the host's network shares the
    host's user namespace, which owns that network and its sysfs."""
    if remap is None:
        return None
    mode = hc.get("UsernsMode") or ""
    if mode not in ("", "host"):
        raise InvalidParameter(f'invalid user namespace mode {mode!r}: only "host" is supported')
    if mode == "host":
        return None
    if _flag(hc, "Privileged"):
        raise InvalidParameter("privileged mode is incompatible with user namespaces.  You must run the "
                               "container in the host namespace when running privileged mode (--userns=host)")
    return None if NetworkMode.parse(hc.get("NetworkMode")).is_host else remap


def _flag(hc: dict[str, Any], key: str) -> bool:
    value = hc.get(key)
    if value not in (None, True, False):
        raise InvalidParameter(f"{key} must be a boolean")
    return bool(value)


def _strings(hc: dict[str, Any], key: str) -> list[str]:
    value = hc.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidParameter(f"{key} must be a list of strings")
    return value


def _bool_opt(text: str, opt: str) -> bool:
    if text.lower() in ("", "1", "t", "true"):
        return True
    if text.lower() in ("0", "f", "false"):
        return False
    raise InvalidParameter(f"invalid --security-opt: {opt!r}")


def _security_opts(hc: dict[str, Any]) -> dict[str, Any]:
    """SecurityOpt entries ("key=value", or the older "key:value") as a dict."""
    out: dict[str, Any] = {}
    opts = _strings(hc, "SecurityOpt")
    for i, opt in enumerate(opts):
        eq, colon = opt.find("="), opt.find(":")
        cut = eq if eq >= 0 and (colon < 0 or eq < colon) else colon
        key, value = (opt[:cut], opt[cut + 1:]) if cut >= 0 else (opt, "")
        if key == "no-new-privileges":
            out[key] = _bool_opt(value, opt)
        elif key == "seccomp":
            if value == "unconfined":
                out[key] = "unconfined"
            else:
                out[key] = _seccomp_profile(value)
                opts[i] = "seccomp=" + json.dumps(out[key])
        elif key == "systempaths" and value == "unconfined":
            out[key] = value
        elif key in ("label", "apparmor") and value:
            continue  # no SELinux/AppArmor here; accepted as Docker does on such hosts
        else:
            raise InvalidParameter(f"invalid --security-opt: {opt!r}")
    return out


def _seccomp_profile(value: str) -> dict[str, Any]:
    """A profile given as JSON text (Docker's CLI) or as a path on the daemon's host."""
    text = value
    if not value.lstrip().startswith("{"):
        try:
            with open(value) as f:
                text = f.read()
        except OSError as exc:
            raise InvalidParameter(f"opening seccomp profile ({value}) failed: {exc.strerror}") from None
    try:
        profile: dict[str, Any] = json.loads(text)
        seccomp.check(profile)
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidParameter(f"decoding seccomp profile failed: {exc}") from None
    return profile


def _capabilities(hc: dict[str, Any], privileged: bool) -> list[str]:
    """Docker's rules: ALL in CapAdd starts from everything, ALL in CapDrop from nothing."""
    held = capabilities.bounding()
    if privileged:
        return held
    try:
        add = {capabilities.normalize(c) for c in _strings(hc, "CapAdd")}
        drop = {capabilities.normalize(c) for c in _strings(hc, "CapDrop")}
    except ValueError as exc:
        raise InvalidParameter(str(exc)) from None
    if "ALL" in add:
        chosen = set(held) - drop
    elif "ALL" in drop:
        chosen = set(add)
    else:
        chosen = (set(capabilities.DEFAULT) - drop) | add
    missing = sorted(add - set(held) - {"ALL"})
    if missing:
        raise InvalidParameter(
            f"cannot add capability {', '.join(missing)}: the daemon itself does not hold it "
            f"(it is missing from this host's capability bounding set)")
    return [c for c in capabilities.NAMES if c in chosen and c in held]


def _ulimits(hc: dict[str, Any]) -> list[dict[str, int | str]]:
    """--ulimit entries, refused when above what the daemon could grant (raising a hard
    limit needs CAP_SYS_RESOURCE, which some hosts withhold even from root)."""
    out = []
    can_raise = "CAP_SYS_RESOURCE" in capabilities.bounding()
    for u in hc.get("Ulimits") or []:
        if not isinstance(u, dict) or u.get("Name") not in RLIMITS:
            name = u.get("Name") if isinstance(u, dict) else u
            raise InvalidParameter(f"invalid ulimit type: {name}")
        name = u["Name"]
        soft, hard = (resource.RLIM_INFINITY if v == -1 else v for v in (u.get("Soft"), u.get("Hard")))
        if not isinstance(soft, int) or not isinstance(hard, int) or soft < 0 or hard < 0:
            raise InvalidParameter(f"invalid ulimit {name}: soft and hard limits must be numbers")
        if _above(soft, hard):
            raise InvalidParameter(f"ulimit soft limit must be less than or equal to hard limit: {soft} > {hard}")
        _, own_hard = resource.getrlimit(RLIMITS[name])
        if not can_raise and _above(hard, own_hard):
            raise InvalidParameter(
                f"ulimit {name}: hard limit {_show(hard)} is above the daemon's own hard limit {_show(own_hard)}, "
                "and this host does not let it raise limits (CAP_SYS_RESOURCE is not available)")
        out.append({"Name": name, "Soft": soft, "Hard": hard})
    return out


def _number(hc: dict[str, Any], key: str) -> int:
    value = hc.get(key) or 0
    if type(value) is not int:
        raise InvalidParameter(f"invalid value {value!r} for {key}")
    return value


def _oom_score_adj(hc: dict[str, Any]) -> int:
    """Docker's range; below 0 needs CAP_SYS_RESOURCE, which some hosts withhold even from root."""
    value = _number(hc, "OomScoreAdj")
    if not -1000 <= value <= 1000:
        raise InvalidParameter(f"Invalid value {value}, range for oom score adj is [-1000, 1000]")
    if value < 0 and "CAP_SYS_RESOURCE" not in capabilities.bounding():
        raise InvalidParameter(f"Invalid value {value} for oom score adj: lowering it needs CAP_SYS_RESOURCE, "
                               "which this host does not give the daemon")
    return value


def set_oom_score_adj(pid: int, host_config: dict[str, Any]) -> None:
    """Give a held process (a container's PID 1 or an exec, before any user code) its OOM score.

    Written through the host's /proc by the daemon: a process in a user namespace
    may not write its own file, and every process it starts inherits the value.
    Always written, so that nothing inherits the monitor's own score."""
    try:
        with open(f"/proc/{pid}/oom_score_adj", "w") as f:
            f.write(str(_oom_score_adj(host_config)))
    except OSError as exc:
        raise SystemError_(f"cannot set the oom score adj of process {pid}: {exc.strerror}") from None


def _shm_size(hc: dict[str, Any]) -> int:
    value = _number(hc, "ShmSize")
    if value < 0:
        raise InvalidParameter("SHM size can not be less than 0")
    return value


def _above(a: int, b: int) -> bool:
    """a > b where RLIM_INFINITY is the largest value."""
    inf = resource.RLIM_INFINITY
    return a != b and (a == inf or (b != inf and a > b))


def _show(limit: int) -> str:
    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)


def _sysctls(hc: dict[str, Any]) -> dict[str, str]:
    """Only sysctls of the container's own IPC and network namespaces; anything else
    would change the host for everyone."""
    sysctls = hc.get("Sysctls") or {}
    if not isinstance(sysctls, dict):
        raise InvalidParameter("Sysctls must be an object")
    mode = NetworkMode.parse(hc.get("NetworkMode"))
    own_netns = mode.is_private
    for key, value in sysctls.items():
        if not isinstance(value, str) or "/" in key or ".." in key:
            raise InvalidParameter(f"invalid sysctl {key}={value!r}")
        if key in _IPC_SYSCTLS or key.startswith(_IPC_PREFIXES):
            continue
        if key.startswith("net."):
            if own_netns:
                continue
            raise InvalidParameter(
                f'sysctl "{key}" is not allowed: the container shares a network namespace ({mode}) '
                "that it does not own")
        raise InvalidParameter(f'sysctl "{key}" is not allowed: it is not namespaced and would change the host')
    return dict(sysctls)


def _paths(hc: dict[str, Any], key: str, default: list[str]) -> list[str]:
    value = hc.get(key)
    if value is None:
        return list(default)
    paths = _strings(hc, key)
    if any(not p.startswith("/") for p in paths):
        raise InvalidParameter(f"{key} must hold absolute paths")
    return [clean_path(p) for p in paths]


def _devices(hc: dict[str, Any]) -> tuple[list[dict[str, Any]], list[DeviceRule]]:
    """--device HOST[:CONTAINER[:PERMS]]: the nodes to create and the access to allow.
    A directory brings every device below it, as with Docker."""
    nodes, rules = [], []
    for d in hc.get("Devices") or []:
        if not isinstance(d, dict) or not d.get("PathOnHost"):
            raise InvalidParameter(f"invalid device {d!r}: PathOnHost is required")
        host = d["PathOnHost"]
        inside = d.get("PathInContainer") or host
        access = d.get("CgroupPermissions") or "rwm"
        if not isinstance(inside, str) or not inside.startswith("/") or set(access) - set("rwm"):
            raise InvalidParameter(f"invalid device mapping {host}:{inside}:{access}")
        inside = clean_path(inside)
        if inside == "/":
            raise InvalidParameter(f"invalid device mapping {host}:{inside}:{access}: the container's root "
                                   "cannot be a device")
        found = list(_device_nodes(host, inside))
        if not found:
            raise InvalidParameter(f"error gathering device information while adding custom device "
                                   f'"{host}": not a device node')
        for path, source, st in found:
            kind = "c" if stat.S_ISCHR(st.st_mode) else "b"
            major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
            nodes.append({"path": path, "source": source, "type": kind, "major": major, "minor": minor,
                          "mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid})
            rules.append(DeviceRule(kind, major, minor, access))
    return nodes, rules


def _device_nodes(host: str, inside: str) -> Iterator[tuple[str, str, os.stat_result]]:
    """(path inside, path on the host, stat) of each node; a user namespace binds the host's."""
    try:
        st = os.stat(host)
    except OSError as exc:
        raise InvalidParameter(f"error gathering device information while adding custom device "
                               f'"{host}": {(exc.strerror or str(exc)).lower()}') from None
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        yield inside, host, st
    elif stat.S_ISDIR(st.st_mode):
        for dirpath, _, names in os.walk(host):
            for name in sorted(names):
                path = os.path.join(dirpath, name)
                sub = os.stat(path, follow_symlinks=False)
                if stat.S_ISCHR(sub.st_mode) or stat.S_ISBLK(sub.st_mode):
                    yield os.path.join(inside, os.path.relpath(path, host)), path, sub
