"""Seccomp filters from profiles in Docker's JSON format, compiled with libseccomp.

One code path serves the built-in default profile (seccomp_profile.py) and any
profile a user passes with `--security-opt seccomp=FILE`, so both behave the
same way. Entries carry `includes`/`excludes` on capabilities, architectures
and a minimum kernel; they are resolved here against the container's final
capability set, which is why the runtime (not the engine) evaluates them.

libseccomp is opened when this module is imported, i.e. before pivot_root,
because the host's library files are out of reach afterwards.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
from typing import Any

from coracle.runtime import seccomp_profile

try:
    _lib: ctypes.CDLL | None = ctypes.CDLL("libseccomp.so.2", use_errno=True)
except OSError:
    _lib = None

if _lib is not None:
    _lib.seccomp_init.restype = ctypes.c_void_p
    _lib.seccomp_init.argtypes = [ctypes.c_uint32]
    _lib.seccomp_release.argtypes = [ctypes.c_void_p]
    _lib.seccomp_load.argtypes = [ctypes.c_void_p]
    _lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    _lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    _lib.seccomp_arch_native.restype = ctypes.c_uint32
    _lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    _lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    _lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    _lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                            ctypes.c_void_p]
    _lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]

_SYS_seccomp = 317  # x86_64
_SECCOMP_SET_MODE_FILTER = 1


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_compiled: dict[tuple[str, tuple[str, ...], bool], bytes] = {}
_COMPILED_MAX = 32


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


_OPS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4, "SCMP_CMP_GE": 5,
        "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}
_SCMP_FLTATR_CTL_NNP = 3
_NR_SCMP_ERROR = -1

# Docker's architecture names for each native one and the sub-architectures its
# processes may also use (32-bit binaries on a 64-bit kernel).
ARCH_FAMILY = {
    "SCMP_ARCH_X86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "SCMP_ARCH_AARCH64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
}
# `includes`/`excludes` name the host's architecture the Go way (Docker's profiles are Go's).
GO_ARCH = {"SCMP_ARCH_X86_64": "amd64", "SCMP_ARCH_AARCH64": "arm64"}


def _action(name: str, errno_ret: int | None) -> int:
    """A Docker action name -> libseccomp's action value."""
    if name == "SCMP_ACT_ALLOW":
        return 0x7FFF0000
    if name == "SCMP_ACT_ERRNO":
        return 0x00050000 | ((errno.EPERM if errno_ret is None else errno_ret) & 0xFFFF)
    if name in ("SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD"):
        return 0x00000000
    if name == "SCMP_ACT_KILL_PROCESS":
        return 0x80000000
    if name == "SCMP_ACT_TRAP":
        return 0x00030000
    if name == "SCMP_ACT_LOG":
        return 0x7FFC0000
    if name == "SCMP_ACT_TRACE":
        return 0x7FF00000 | ((errno_ret or 0) & 0xFFFF)
    raise ValueError(f"seccomp profile: unsupported action {name!r}")


def _kernel_at_least(wanted: str) -> bool:
    def numbers(text: str) -> tuple[int, ...]:
        out = []
        for part in text.split("-")[0].split(".")[:3]:
            digits = "".join(ch for ch in part if ch.isdigit())
            out.append(int(digits or 0))
        return tuple(out)

    return numbers(os.uname().release) >= numbers(wanted)


def _applies(entry: dict[str, Any], caps: set[str], native: str) -> bool:
    """Whether a profile entry's includes/excludes select it for this container on this host."""
    inc, exc = entry.get("includes") or {}, entry.get("excludes") or {}
    arches = {native, GO_ARCH.get(native, native)}
    if inc.get("caps") and not set(inc["caps"]) <= caps:
        return False
    if inc.get("arches") and not set(inc["arches"]) & arches:
        return False
    if inc.get("minKernel") and not _kernel_at_least(inc["minKernel"]):
        return False
    if exc.get("caps") and set(exc["caps"]) & caps:
        return False
    return not (exc.get("arches") and set(exc["arches"]) & arches)


def _native_arch_name() -> str:
    assert _lib is not None
    native = _lib.seccomp_arch_native()
    for name in ARCH_FAMILY:
        if _lib.seccomp_arch_resolve_name(_arch_token_name(name)) == native:
            return name
    return ""


def _arch_token_name(docker_name: str) -> bytes:
    return docker_name.removeprefix("SCMP_ARCH_").lower().encode()


def _conditions(args: list[dict[str, Any]]) -> list[list[_ArgCmp]]:
    """The argument comparisons of one entry, as the rules to add (OR between rules).

    libseccomp cannot compare one argument twice in a rule, so an entry that
    does is split into one rule per comparison, as other runtimes do."""
    cmps = [_ArgCmp(a["index"], _OPS[a["op"]], a.get("value", 0), a.get("valueTwo", 0)) for a in args]
    indexes = [a["index"] for a in args]
    if len(set(indexes)) != len(indexes):
        return [[c] for c in cmps]
    return [cmps]


def check(profile: dict[str, Any]) -> None:
    """Refuse a malformed profile with a clear ValueError (the engine calls this at create)."""
    if not isinstance(profile, dict) or "defaultAction" not in profile:
        raise ValueError("seccomp profile: defaultAction is required")
    _action(profile["defaultAction"], profile.get("defaultErrnoRet"))
    for entry in profile.get("syscalls") or []:
        names = entry.get("names") or ([entry["name"]] if entry.get("name") else [])
        if not names:
            raise ValueError("seccomp profile: every syscalls entry needs names")
        _action(entry.get("action", ""), entry.get("errnoRet"))
        for a in entry.get("args") or []:
            if a.get("op") not in _OPS:
                raise ValueError(f"seccomp profile: unsupported comparison {a.get('op')!r}")


def load(profile: dict[str, Any] | str, capabilities: list[str], no_new_privs: bool) -> None:
    """Install the filter for `profile`; from here on it binds every descendant.

    Without `no_new_privs` the kernel only accepts a filter from a process
    holding CAP_SYS_ADMIN, so the caller must load it before giving up root
    (and with it, the caller has already set no_new_privs itself).
    """
    install(compile_bpf(profile, capabilities, no_new_privs))


def install(program: bytes) -> None:
    """Install a BPF program from `compile_bpf` (no_new_privs or CAP_SYS_ADMIN needed, see load)."""
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(ctypes.c_long(_SYS_seccomp), ctypes.c_uint(_SECCOMP_SET_MODE_FILTER), ctypes.c_uint(0),
                    ctypes.byref(fprog)) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp: cannot install the filter: {os.strerror(err)}")


def compiled_count() -> int:
    """How many programs this process holds compiled: a child forked earlier lacks any added since."""
    return len(_compiled)


def compile_bpf(profile: dict[str, Any] | str, capabilities: list[str], no_new_privs: bool) -> bytes:
    """The BPF program for a profile and capability set, compiled once per distinct pair.

    Compiling a Docker-sized profile with libseccomp takes tens of milliseconds;
    the monitor compiles before it forks (see precompile in security.py), so
    every container with the same profile inherits the program ready-made.
    """
    if _lib is None:
        raise OSError(errno.ENOSYS, "a seccomp profile is set but libseccomp.so.2 is not installed")
    name = profile if isinstance(profile, str) else json.dumps(profile, sort_keys=True)
    key = (name, tuple(sorted(capabilities)), no_new_privs)
    cached = _compiled.get(key)
    if cached is not None:
        return cached
    if profile == seccomp_profile.BUILTIN:
        profile = seccomp_profile.build()
    elif isinstance(profile, str):
        raise ValueError(f"unknown seccomp profile name {profile!r}")
    check(profile)
    default = _action(profile["defaultAction"], profile.get("defaultErrnoRet"))
    ctx = _lib.seccomp_init(default)
    if not ctx:
        raise OSError(errno.EINVAL, "seccomp_init failed")
    try:
        native = _native_arch_name()
        arches = _profile_arches(profile, native)
        for name in arches - {native}:
            token = _lib.seccomp_arch_resolve_name(_arch_token_name(name))
            if token:
                rc = _lib.seccomp_arch_add(ctx, token)
                if rc < 0 and rc != -errno.EEXIST:
                    raise OSError(-rc, f"seccomp: cannot add architecture {name}")
        _check(_lib.seccomp_attr_set(ctx, _SCMP_FLTATR_CTL_NNP, int(no_new_privs)), "seccomp_attr_set")
        caps = set(capabilities)
        for entry in profile.get("syscalls") or []:
            if not _applies(entry, caps, native):
                continue
            action = _action(entry["action"], entry.get("errnoRet"))
            if action == default:
                continue  # libseccomp refuses a rule that repeats the default
            names = entry.get("names") or [entry["name"]]
            for name in names:
                number = _lib.seccomp_syscall_resolve_name(name.encode())
                if number == _NR_SCMP_ERROR:
                    continue  # not a syscall of these architectures (or of this libseccomp)
                for rule in _conditions(entry.get("args") or []):
                    array = (_ArgCmp * len(rule))(*rule) if rule else None
                    _check(_lib.seccomp_rule_add_array(ctx, action, number, len(rule), array),
                           f"seccomp rule for {name}")
        fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
        try:
            _check(_lib.seccomp_export_bpf(ctx, fd), "seccomp_export_bpf")
            program = os.pread(fd, os.fstat(fd).st_size, 0)
        finally:
            os.close(fd)
    finally:
        _lib.seccomp_release(ctx)
    if len(_compiled) >= _COMPILED_MAX:
        _compiled.pop(next(iter(_compiled)))
    _compiled[key] = program
    return program


def _profile_arches(profile: dict[str, Any], native: str) -> set[str]:
    """The native architecture and, when the profile names it, its sub-architectures."""
    named = set(profile.get("architectures") or [])
    for entry in profile.get("archMap") or []:
        named.add(entry.get("architecture", ""))
        if entry.get("architecture") == native:
            named.update(entry.get("subArchitectures") or [])
    family = set(ARCH_FAMILY.get(native, [native]))
    return {native} | (named & family)


def _check(rc: int, what: str) -> None:
    if rc < 0:
        raise OSError(-rc, f"{what}: {os.strerror(-rc)}")
