"""Building the container's filesystem view inside its own mount namespace.

Everything here runs in the container's first process after it has been
released, in a mount namespace that nobody else shares. The overlay is mounted
there and only there, so a crash can never leave a rootfs mount behind on the
host: the mount dies with the namespace.
"""

from __future__ import annotations

import os
import stat

from coracle.cgroups import V2Manager, detect
from coracle.cgroups.v1 import hierarchies
from coracle.errors import SystemError_
from coracle.runtime import syscalls as sc
from coracle.runtime import userns
from coracle.runtime.spec import Spec

# Docker's default device nodes: (name, type, major, minor)
DEFAULT_DEVICES = [
    ("null", "c", 1, 3),
    ("zero", "c", 1, 5),
    ("full", "c", 1, 7),
    ("random", "c", 1, 8),
    ("urandom", "c", 1, 9),
    ("tty", "c", 5, 0),
]

# Host /dev entries a privileged container does not copy: its own devpts, shm and
# mqueue are mounted instead, and the console is the one of its terminal.
_NOT_COPIED = {"pts", "shm", "mqueue", "console", "ptmx", "fd", "stdin", "stdout", "stderr"}


def _inside(root: str, path: str) -> str:
    """`path` interpreted inside `root`, refusing symlinks that climb out of it."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    current = root
    for i, part in enumerate(parts):
        if part == "..":
            current = os.path.dirname(current) if current != root else root
            continue
        candidate = os.path.join(current, part)
        if os.path.islink(candidate):
            target = os.readlink(candidate)
            rest = "/".join(parts[i + 1:])
            base = root if target.startswith("/") else current
            return _inside(root, os.path.relpath(os.path.join(base, target.lstrip("/")), root) + ("/" + rest if rest else ""))
        current = candidate
    return current


def _ensure(path: str, like_file: bool) -> None:
    if os.path.lexists(path):
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if like_file:
        open(path, "a").close()
    else:
        os.makedirs(path, exist_ok=True)


def _host_devices() -> list[dict]:
    """Every device node of the host's /dev (a privileged container gets them all)."""
    found = []
    for dirpath, dirnames, names in os.walk("/dev"):
        if dirpath == "/dev":
            dirnames[:] = [d for d in dirnames if d not in _NOT_COPIED]
        for name in names:
            path = os.path.join(dirpath, name)
            if dirpath == "/dev" and name in _NOT_COPIED:
                continue
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                found.append({"path": path, "type": "c" if stat.S_ISCHR(st.st_mode) else "b",
                              "major": os.major(st.st_rdev), "minor": os.minor(st.st_rdev),
                              "mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid})
    return found


def _make_node(path: str, mode: int, device: int, host: str) -> bool:
    """mknod, or in a user namespace (where only real root may create nodes) a bind of
    the host's, which keeps the host's owner; False in that case."""
    try:
        os.mknod(path, mode, device)
    except PermissionError:
        open(path, "a").close()
        sc.mount(host, path, None, sc.MS_BIND)
        return False
    return True


def remount_readonly(target: str, recursive: bool = False) -> None:
    """Make a bind mount read-only, keeping its nosuid/nodev/noexec/noatime: in a user
    namespace those are locked when inherited, and dropping one is refused."""
    keep = os.statvfs(target).f_flag & (sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC | sc.MS_NOATIME)
    sc.mount(None, target, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | keep | (sc.MS_REC if recursive else 0))


def _mount_dev(root: str, console: int | None, extra: list[dict], privileged: bool) -> None:
    dev = os.path.join(root, "dev")
    os.makedirs(dev, exist_ok=True)
    wanted = (_host_devices() if privileged else []) + extra
    sc.mount("tmpfs", dev, "tmpfs", sc.MS_NOSUID | sc.MS_STRICTATIME, "mode=755,size=65536k")
    old = os.umask(0)
    try:
        for name, kind, major, minor in DEFAULT_DEVICES:
            _make_node(os.path.join(dev, name), 0o666 | stat.S_IFCHR, os.makedev(major, minor), f"/dev/{name}")
        for d in wanted:
            mode = (stat.S_IFCHR if d.get("type", "c") == "c" else stat.S_IFBLK) | d.get("mode", 0o660)
            path = os.path.join(root, d["path"].lstrip("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if os.path.lexists(path):
                os.unlink(path)  # an explicit --device replaces a default node of the same name
            if _make_node(path, mode, os.makedev(d["major"], d["minor"]), d.get("source") or d["path"]):
                os.chown(path, d.get("uid", 0), d.get("gid", 0))
    finally:
        os.umask(old)
    for sub, fstype, flags, data in (
        ("pts", "devpts", sc.MS_NOSUID | sc.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5"),
        ("shm", "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, "mode=1777,size=65536k"),
        ("mqueue", "mqueue", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, None),
    ):
        target = os.path.join(dev, sub)
        os.makedirs(target, exist_ok=True)
        sc.mount(sub if fstype != "devpts" else "devpts", target, fstype, flags, data)
    os.symlink("pts/ptmx", os.path.join(dev, "ptmx"))
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, os.path.join(dev, name))
    if console is not None:
        # The terminal comes from the host's devpts; bound on /dev/console, ttyname()
        # finds it by device number, so `tty` names it as it does under Docker.
        target = os.path.join(dev, "console")
        _ensure(target, like_file=True)
        sc.mount(os.ttyname(console), target, None, sc.MS_BIND)  # path in our copy of the host mounts


def _mount_user_mounts(root: str, spec: Spec) -> None:
    for m in spec.mounts:
        target = _inside(root, m.destination)
        if m.type == "tmpfs":
            _ensure(target, like_file=False)
            sc.mount("tmpfs", target, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, m.options or None)
            continue
        if not os.path.exists(m.source):
            raise FileNotFoundError(f"bind source path does not exist: {m.source}")
        _ensure(target, like_file=not os.path.isdir(m.source))
        sc.mount(m.source, target, None, sc.MS_BIND | sc.MS_REC)
        if m.readonly:
            remount_readonly(target, recursive=True)


def _mask_and_protect(root: str, spec: Spec) -> None:
    for path in spec.masked_paths:
        target = os.path.join(root, path.lstrip("/"))
        if not os.path.lexists(target):
            continue
        if os.path.isdir(target):
            sc.mount("tmpfs", target, "tmpfs", sc.MS_RDONLY, None)
        else:
            sc.mount("/dev/null", target, None, sc.MS_BIND)
    for path in spec.readonly_paths:
        target = os.path.join(root, path.lstrip("/"))
        if not os.path.lexists(target):
            continue
        sc.mount(target, target, None, sc.MS_BIND | sc.MS_REC)
        remount_readonly(target, recursive=True)


def own_cgroups() -> dict[str, str]:
    """This process's cgroup in each hierarchy ("cpu,cpuacct" or "" for v2 -> path)."""
    with open("/proc/self/cgroup") as f:
        return {parts[1]: parts[2] for parts in (line.rstrip("\n").split(":", 2) for line in f)}


def _mount_cgroups(root: str, writable: bool, own: dict[str, str]) -> None:
    """The container's own cgroups at /sys/fs/cgroup, read-only unless privileged.

    The process already lives in its cgroup namespace, so each hierarchy
    mounted here shows the container's cgroup as its root: the host's tree
    (and release_agent, which only the root cgroup has) is out of sight.
    In a user namespace (`own` given) v1 hierarchies cannot be mounted, so the
    container's own directory of each is bound from the host instead."""
    target = os.path.join(root, "sys/fs/cgroup")
    if not os.path.isdir(target):
        return
    flags = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC | (0 if writable else sc.MS_RDONLY)
    try:
        manager = detect()
    except SystemError_:
        return  # no cgroup filesystem on this host: nothing to show
    if manager is V2Manager and not hierarchies():
        sc.mount("cgroup2", target, "cgroup2", flags)
        return
    sc.mount("tmpfs", target, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, "mode=755")
    grouped: dict[str, list[str]] = {}
    mountpoint_of: dict[str, str] = {}
    for controller, mountpoint in hierarchies().items():
        grouped.setdefault(os.path.basename(mountpoint), []).append(controller)
        mountpoint_of[os.path.basename(mountpoint)] = mountpoint
    for name, controllers in grouped.items():
        where = os.path.join(target, name)
        os.makedirs(where)
        if own:
            path = next((p for k, p in own.items() if set(k.split(",")) == set(controllers)), "/")
            source = os.path.join(mountpoint_of[name], path.lstrip("/"))
            sc.mount(source, where, None, sc.MS_BIND)
            if not writable:
                remount_readonly(where)
        else:
            sc.mount("cgroup", where, "cgroup", flags, ",".join(controllers))
        for controller in controllers:  # "cpu" -> "cpu,cpuacct" where co-mounted
            if controller != name and "=" not in controller and not os.path.lexists(os.path.join(target, controller)):
                os.symlink(name, os.path.join(target, controller))
    if not writable:
        sc.mount(None, target, None, sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)


def _write_sysctls(proc: str, sysctls: dict[str, str]) -> None:
    """Before /proc/sys turns read-only; the engine only lets namespaced keys through."""
    for key, value in sysctls.items():
        with open(os.path.join(proc, "sys", key.replace(".", "/")), "w") as f:
            f.write(value)


def stage_layers(root: str, layers: list[int]) -> list[str]:
    """Attach the idmapped layer clones (user namespace) on a private tmpfs at `root`;
    the overlay then goes on top and keeps its own references to them."""
    sc.mount("tmpfs", root, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=700")
    paths = []
    for i, fd in enumerate(layers):
        path = os.path.join(root, str(i))
        os.mkdir(path)
        userns.attach(fd, path)
        os.close(fd)
        paths.append(path)
    return paths


def build(spec: Spec, console: int | None = None, layers: list[int] | None = None,
          own: dict[str, str] | None = None) -> None:
    """Mount the overlay, kernel filesystems and user mounts, then pivot into it.

    In a user namespace, `layers` are the idmapped clones of spec.lower and
    `own` the container's cgroups as the host names them (see userns.enter)."""
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    root = spec.rootfs
    lower = ":".join(reversed(stage_layers(root, layers) if layers else spec.lower))
    sc.mount("overlay", root, "overlay", 0, f"lowerdir={lower},upperdir={spec.upper},workdir={spec.work}")
    proc = os.path.join(root, "proc")
    os.makedirs(proc, exist_ok=True)
    sc.mount("proc", proc, "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
    sys_dir = os.path.join(root, "sys")
    os.makedirs(sys_dir, exist_ok=True)
    sys_flags = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC | (0 if spec.privileged else sc.MS_RDONLY)
    try:
        sc.mount("sysfs", sys_dir, "sysfs", sys_flags)
    except PermissionError:
        # sysfs cannot be mounted fresh when the network namespace is not ours
        # (host or container: mode); a read-only recursive bind is what Docker does too.
        sc.mount("/sys", sys_dir, None, sc.MS_BIND | sc.MS_REC)
        if not spec.privileged:
            remount_readonly(sys_dir, recursive=True)
    if "cgroup" in spec.namespaces:
        _mount_cgroups(root, writable=spec.privileged, own=own or {})
    _mount_dev(root, console, spec.devices, spec.privileged)
    _mount_user_mounts(root, spec)
    if spec.init_binary:
        target = os.path.join(root, "sbin/docker-init")
        _ensure(target, like_file=True)
        sc.mount(spec.init_binary, target, None, sc.MS_BIND)
        remount_readonly(target)
    _write_sysctls(proc, spec.sysctls)
    _mask_and_protect(root, spec)
    os.chdir(root)
    sc.pivot_root(".", ".")
    sc.umount2(".", sc.MNT_DETACH)
    os.chdir("/")
    if spec.readonly_rootfs:
        sc.mount(None, "/", None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY)
