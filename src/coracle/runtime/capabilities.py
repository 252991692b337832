"""Linux capabilities: names, Docker's default set, and applying a set to this process.

A container's root is only as strong as the capabilities it keeps. The
bounding set is what matters most: after execve a root process gets its
permitted set recomputed from the bounding set, so dropping there is what makes
a drop stick. Effective/permitted are set explicitly too, so the state before
exec already matches what the program will see.

The inheritable set is left empty on purpose (Docker >= 23 does the same): a
non-empty one lets a non-root user gain capabilities by executing a file that
carries inheritable file capabilities (CVE-2022-24769).
"""

from __future__ import annotations

import ctypes
import os

from coracle.runtime import syscalls as sc

# Index = capability number (linux/capability.h).
NAMES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
    "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)

# What Docker gives a container that asks for nothing.
DEFAULT = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

_PR_CAPBSET_READ = 23
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(None, use_errno=True)  # the libc this process runs on (no ldconfig run)


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def normalize(name: str) -> str:
    """"net_admin", "CAP_NET_ADMIN" -> "CAP_NET_ADMIN"; "all" -> "ALL"; ValueError if unknown."""
    upper = name.strip().upper()
    if upper == "ALL":
        return "ALL"
    full = upper if upper.startswith("CAP_") else "CAP_" + upper
    if full not in NAMES:
        raise ValueError(f'unknown capability: "{name}"')
    return full


def bounding() -> list[str]:
    """The capabilities this process's bounding set still holds (what it can ever grant)."""
    held = []
    for number, name in enumerate(NAMES):
        try:
            if sc.prctl(_PR_CAPBSET_READ, number):
                held.append(name)
        except OSError:  # the running kernel does not know this capability
            break
    return held


def limit_bounding(keep: list[str]) -> None:
    """Drop every capability not in `keep` from the bounding set (needs CAP_SETPCAP: call as root)."""
    wanted = set(keep)
    number = 0
    while True:
        try:
            held = sc.prctl(_PR_CAPBSET_READ, number)
        except OSError:
            return  # past the kernel's last capability
        name = NAMES[number] if number < len(NAMES) else ""
        if held and name not in wanted:
            sc.prctl(sc.PR_CAPBSET_DROP, number)
        number += 1


def _mask(names: list[str]) -> tuple[int, int]:
    """The two 32-bit halves of the capability bitmask for `names`."""
    bits = 0
    for name in names:
        bits |= 1 << NAMES.index(name)
    return bits & 0xFFFFFFFF, bits >> 32


def set_process(keep: list[str]) -> None:
    """Effective and permitted = `keep` for root, empty for any other user (as Docker does);
    inheritable and ambient empty. Only ever lowers what the process holds."""
    held = bounding()
    names = [n for n in keep if n in held] if os.geteuid() == 0 else []
    low, high = _mask(names)
    data = (_Data * 2)(_Data(low, low, 0), _Data(high, high, 0))
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    if _libc.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")
    sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_CLEAR_ALL)
