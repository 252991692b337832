"""Building the container's filesystem view inside its own mount namespace.

Everything here runs in the container's first process, in a mount namespace
that nobody else shares: `prepare` while the process is held, `complete` once
it has been released. The overlay is mounted there and only there, so a crash
can never leave a rootfs mount behind on the host: the mount dies with the
namespace.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
from typing import Any

from coracle.cgroups import V2Manager, detect
from coracle.cgroups.v1 import hierarchies, unescape
from coracle.errors import SystemError_
from coracle.runtime import syscalls as sc
from coracle.runtime import userns
from coracle.runtime.mountpoint import RootDir, fd_path, tmpfs_options
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


# Bind propagation (Docker's names) -> the mount flags that set it on the container's side.
PROPAGATION_FLAGS = {
    "private": sc.MS_PRIVATE, "rprivate": sc.MS_PRIVATE | sc.MS_REC,
    "shared": sc.MS_SHARED, "rshared": sc.MS_SHARED | sc.MS_REC,
    "slave": sc.MS_SLAVE, "rslave": sc.MS_SLAVE | sc.MS_REC,
}


def _receives_host_mounts(spec: Spec) -> bool:
    """Whether a bind asks for shared or slave propagation.

    Then the copy of the host's mounts is made a slave (not private) before
    the binds are taken from it, so that mounts made later on the host under
    a shared bind source still reach the container, while nothing mounted in
    the container propagates back (except below an rshared bind, as asked)."""
    return any(m.propagation.lstrip("r") in ("shared", "slave") for m in spec.mounts)


def propagation_of(path: str) -> tuple[str, set[str]]:
    """(mount point, {"shared", "slave"} or fewer) of the host mount that holds `path`.

    A bind can only be shared or slave with the host if its source already is:
    Docker checks the same before a start."""
    path = os.path.realpath(path)
    found, kinds = "/", set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split(" - ")[0].split(" ")
            point = unescape(fields[4])
            # the last of equal mount points is the one on top
            if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(found):
                found = point
                kinds = {"shared" if o.startswith("shared:") else "slave"
                         for o in fields[6:] if o.startswith(("shared:", "master:"))}
    return found, kinds


def _host_devices() -> list[dict[str, Any]]:
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


def _make_node(root: RootDir, path: str, mode: int, device: int, host: str,
               owner: tuple[int, int] | None = None) -> None:
    """A device node at `path` inside the root, replacing what is there (an explicit --device
    replaces a default node of the same name). In a user namespace, where only real root may
    create nodes, the host's node is bound instead (and keeps the host's owner)."""
    parent_fd = root.ensure(posixpath.dirname(path), like_file=False)
    name = posixpath.basename(path)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=parent_fd)
        try:
            os.mknod(name, mode, device, dir_fd=parent_fd)
        except PermissionError:
            root.mount(path, host, None, sc.MS_BIND, like_file=True)
            return
        if owner is not None:
            os.chown(name, *owner, dir_fd=parent_fd, follow_symlinks=False)
    finally:
        os.close(parent_fd)


def remount_readonly(target: str, recursive: bool = False) -> None:
    """Make a bind mount read-only, keeping its nosuid/nodev/noexec/noatime: in a user
    namespace those are locked when inherited, and dropping one is refused."""
    keep = os.statvfs(target).f_flag & (sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC | sc.MS_NOATIME)
    sc.mount(None, target, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | keep | (sc.MS_REC if recursive else 0))


def _mount_dev(root: RootDir, console: bool, extra: list[dict[str, Any]], privileged: bool, shm_size: int) -> None:
    wanted = (_host_devices() if privileged else []) + extra
    root.mount("/dev", "tmpfs", "tmpfs", sc.MS_NOSUID | sc.MS_STRICTATIME, "mode=755,size=65536k")
    old = os.umask(0)
    try:
        for name, _kind, major, minor in DEFAULT_DEVICES:
            _make_node(root, f"/dev/{name}", 0o666 | stat.S_IFCHR, os.makedev(major, minor), f"/dev/{name}")
        for d in wanted:
            mode = (stat.S_IFCHR if d.get("type", "c") == "c" else stat.S_IFBLK) | d.get("mode", 0o660)
            _make_node(root, d["path"], mode, os.makedev(d["major"], d["minor"]), d.get("source") or d["path"],
                       (d.get("uid", 0), d.get("gid", 0)))
    finally:
        os.umask(old)
    for sub, fstype, flags, data in (
        ("pts", "devpts", sc.MS_NOSUID | sc.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5"),
        ("shm", "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, f"mode=1777,size={shm_size or 64 << 20}"),
        ("mqueue", "mqueue", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, None),
    ):
        root.mount(f"/dev/{sub}", sub if fstype != "devpts" else "devpts", fstype, flags, data)
    with root.at("/dev") as dev:
        os.symlink("pts/ptmx", os.path.join(dev, "ptmx"))
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
            os.symlink(target, os.path.join(dev, name))
    if console:
        # The mount point of the terminal, bound once it is opened from /dev/pts (see terminal.py).
        os.close(root.ensure("/dev/console", like_file=True))


def _mount_user_mounts(root: RootDir, spec: Spec) -> None:
    for m in spec.mounts:
        if m.type == "tmpfs":
            flags, data = tmpfs_options(m.options)
            root.mount(m.destination, "tmpfs", "tmpfs", flags, data or None)
            continue
        if not os.path.exists(m.source):
            raise FileNotFoundError(f"bind source path does not exist: {m.source}")
        root.mount(m.destination, m.source, None, sc.MS_BIND | sc.MS_REC, like_file=not os.path.isdir(m.source))
        with root.at(m.destination) as target:
            if m.propagation in PROPAGATION_FLAGS:
                sc.mount(None, target, None, PROPAGATION_FLAGS[m.propagation])
            if m.readonly:
                remount_readonly(target, recursive=True)


def _mask_and_protect(root: RootDir, spec: Spec) -> None:
    for path in spec.masked_paths:
        try:
            fd = root.open(path)
        except (FileNotFoundError, NotADirectoryError):
            continue
        try:
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                sc.mount("tmpfs", fd_path(fd), "tmpfs", sc.MS_RDONLY, None)
            else:
                sc.mount("/dev/null", fd_path(fd), None, sc.MS_BIND)
        finally:
            os.close(fd)
    for path in spec.readonly_paths:
        try:
            fd = root.open(path)
        except (FileNotFoundError, NotADirectoryError):
            continue
        try:
            sc.mount(fd_path(fd), fd_path(fd), None, sc.MS_BIND | sc.MS_REC)
        finally:
            os.close(fd)
        with root.at(path) as target:
            remount_readonly(target, recursive=True)


def own_cgroups() -> dict[str, str]:
    """This process's cgroup in each hierarchy ("cpu,cpuacct" or "" for v2 -> path)."""
    with open("/proc/self/cgroup") as f:
        return {parts[1]: parts[2] for parts in (line.rstrip("\n").split(":", 2) for line in f)}


def _mount_cgroups(sys_dir: str, writable: bool, own: dict[str, str]) -> None:
    """The container's own cgroups at /sys/fs/cgroup, read-only unless privileged.

    The process already lives in its cgroup namespace, so each hierarchy
    mounted here shows the container's cgroup as its root: the host's tree
    (and release_agent, which only the root cgroup has) is out of sight.
    In a user namespace (`own` given) v1 hierarchies cannot be mounted, so the
    container's own directory of each is bound from the host instead."""
    target = os.path.join(sys_dir, "fs/cgroup")
    if not os.path.isdir(target):
        return
    flags = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC | (0 if writable else sc.MS_RDONLY)
    try:
        manager = detect()
    except SystemError_:
        return  # no cgroup filesystem on this host: nothing to show
    found = hierarchies()  # read once: the mounts below change the table, not the host's hierarchies
    if manager is V2Manager and not found:
        sc.mount("cgroup2", target, "cgroup2", flags)
        return
    sc.mount("tmpfs", target, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, "mode=755")
    grouped: dict[str, list[str]] = {}
    mountpoint_of: dict[str, str] = {}
    for controller, mountpoint in found.items():
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


def _mount_kernel_filesystems(root: RootDir, spec: Spec) -> None:
    """/proc and /sys of the container's own namespaces (bound from the host where they cannot be mounted)."""
    try:
        root.mount("/proc", "proc", "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
    except PermissionError:
        # A PID namespace that is not ours (--pid host of a rootless daemon) gets no fresh
        # proc; the host's is bound instead, masked below like any other.
        root.mount("/proc", "/proc", None, sc.MS_BIND | sc.MS_REC)
    sys_flags = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC | (0 if spec.privileged else sc.MS_RDONLY)
    try:
        root.mount("/sys", "sysfs", "sysfs", sys_flags)
    except PermissionError:
        # sysfs cannot be mounted fresh when the network namespace is not ours
        # (host or container: mode); a read-only recursive bind is what Docker does too.
        root.mount("/sys", "/sys", None, sc.MS_BIND | sc.MS_REC)
        if not spec.privileged:
            with root.at("/sys") as sys_dir:
                remount_readonly(sys_dir, recursive=True)


def _mount_late(root: RootDir, spec: Spec, own: dict[str, str] | None) -> None:
    """Cgroups, the user's mounts, the init binary, sysctls and masks, in that order: masks last, so
    that no mount can uncover a masked path."""
    if "cgroup" in spec.namespaces:
        with root.at("/sys") as sys_dir:
            _mount_cgroups(sys_dir, writable=spec.privileged, own=own or {})
    _mount_user_mounts(root, spec)
    if spec.init_binary:
        root.mount("/sbin/docker-init", spec.init_binary, None, sc.MS_BIND, like_file=True)
        with root.at("/sbin/docker-init") as target:
            remount_readonly(target)
    with root.at("/proc") as proc:
        _write_sysctls(proc, spec.sysctls)
    _mask_and_protect(root, spec)


def overlay_options(spec: Spec, lower: str) -> str:
    """The overlay's mount data; `volatile` for a container whose upper dir is discarded after it exits.

    Why volatile: the last unmount of an overlay syncs its whole upper filesystem (the data
    root's disk), and that unmount happens when the container's mount namespace dies, inside
    the exit of its PID 1, before anyone learns that it exited: 5-20 ms on this project's test
    machine, hundreds on a busy disk, on the path of every `run --rm`. A volatile overlay skips
    that sync; its upper dir is only unreliable after a host crash, and a `--rm` container's is
    removed anyway. The kernel refuses to mount a work dir that a volatile overlay used (the
    `work/incompat/volatile` mark), so the mark of an earlier run of the same container goes first.
    """
    options = f"lowerdir={lower},upperdir={spec.upper},workdir={spec.work}"
    if not spec.volatile:
        return options
    incompat = os.path.join(spec.work, "work", "incompat")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(incompat, "volatile", "dirty"))
    for path in (os.path.join(incompat, "volatile"), incompat):
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(path)
    return options + ",volatile"


def prepare(spec: Spec, console: bool = False, layers: list[int] | None = None) -> RootDir:
    """The part of the root that needs nothing the start does after the spawn: the overlay, /proc,
    /sys and /dev, mounted while the process is held.

    Why before the release: the daemon is then wiring the container's cgroup and network,
    and these mounts (half of the root's cost, the overlay above all) run beside that work
    instead of after it. Nothing here depends on it: the namespaces are the container's
    own from the spawn (sysfs lists the interfaces the network layer moves in later), and
    what does depend on it waits for `complete`: the cgroups (the process may still be moved),
    the files the daemon writes (/etc/hosts, /etc/resolv.conf, /etc/hostname) and the user's
    mounts among which they are bound. In a user namespace, `layers` are the idmapped
    clones of spec.lower (see userns.enter)."""
    sc.mount(None, "/", None, sc.MS_REC | (sc.MS_SLAVE if _receives_host_mounts(spec) else sc.MS_PRIVATE))
    lower = ":".join(reversed(stage_layers(spec.rootfs, layers) if layers else spec.lower))
    sc.mount("overlay", spec.rootfs, "overlay", 0, overlay_options(spec, lower))
    root = RootDir(spec.rootfs)
    try:
        _mount_kernel_filesystems(root, spec)
        _mount_dev(root, console, spec.devices, spec.privileged, spec.shm_size)
    except BaseException:
        root.close()
        raise
    return root


def complete(root: RootDir, spec: Spec, own: dict[str, str] | None = None) -> None:
    """After the release, in the container's cgroup namespace: the rest of the mounts, then pivot
    into the root. In a user namespace `own` are the container's cgroups as the host names them."""
    try:
        _mount_late(root, spec, own)
    finally:
        root.close()
    os.chdir(spec.rootfs)
    sc.pivot_root(".", ".")
    sc.umount2(".", sc.MNT_DETACH)
    os.chdir("/")
    if spec.readonly_rootfs:
        sc.mount(None, "/", None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY)
