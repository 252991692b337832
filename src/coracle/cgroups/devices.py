"""Device access rules: which device nodes a container may open or create.

A device node inside the container is only a name; what decides whether
opening /dev/sda works is the device controller. Rules are an allow-list:
everything not allowed is denied.

- cgroup v1: the `devices` hierarchy takes "deny all" then one line per allowed
  rule in devices.allow.
- cgroup v2 has no interface files for this: the kernel runs a BPF program of
  type CGROUP_DEVICE attached to the cgroup on every open and mknod of a
  device. `program()` emits that program from the rules and `attach_v2` loads
  and attaches it with the bpf(2) system call.
"""

from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import asdict, dataclass
from typing import Any

from coracle.cgroups import cgroupfs
from coracle.errors import InvalidParameter, SystemError_

ANY = -1


@dataclass(frozen=True)
class DeviceRule:
    """Allow `access` (a subset of "rwm") to devices of `kind` ("c", "b" or "a" for both)."""

    kind: str
    major: int = ANY
    minor: int = ANY
    access: str = "rwm"

    def __post_init__(self) -> None:
        if self.kind not in ("a", "b", "c") or not self.access or set(self.access) - set("rwm"):
            raise InvalidParameter(f"invalid device rule {self.line()!r}")

    @classmethod
    def parse(cls, text: str) -> DeviceRule:
        """Docker's --device-cgroup-rule syntax: "c 1:3 rwm", "b *:* m", "a"."""
        parts = text.split()
        try:
            if parts == ["a"]:
                return cls("a")
            kind, numbers, access = parts
            major, minor = numbers.split(":")
            return cls(kind, ANY if major == "*" else int(major), ANY if minor == "*" else int(minor), access)
        except ValueError:
            raise InvalidParameter(f"invalid device cgroup rule {text!r}: want TYPE MAJOR:MINOR ACCESS") from None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeviceRule:
        return cls(**data)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """The v1 devices.allow line."""
        def num(n: int) -> str:
            return "*" if n == ANY else str(n)

        return f"{self.kind} {num(self.major)}:{num(self.minor)} {self.access}"

    def allows_everything(self) -> bool:
        return self.kind == "a" and self.major == ANY and self.minor == ANY and set(self.access) == set("rwm")


def write_v1(directory: str, rules: list[DeviceRule]) -> None:
    """Replace the cgroup's device list by exactly `rules` (v1 `devices` hierarchy)."""
    if any(r.allows_everything() for r in rules):
        cgroupfs.write(os.path.join(directory, "devices.allow"), "a", "device access")
        return
    cgroupfs.write(os.path.join(directory, "devices.deny"), "a", "device access")
    for rule in rules:
        cgroupfs.write(os.path.join(directory, "devices.allow"), rule.line(), "device access")


# ----- cgroup v2: a BPF_PROG_TYPE_CGROUP_DEVICE program ----------------------

_BPF_PROG_LOAD, _BPF_PROG_ATTACH = 5, 8
_BPF_PROG_TYPE_CGROUP_DEVICE = 15
_BPF_CGROUP_DEVICE = 6
_BPF_F_ALLOW_MULTI = 2
_SYS_BPF = {"x86_64": 321, "aarch64": 280}
_libc = ctypes.CDLL(None, use_errno=True)  # the libc this process runs on (no ldconfig run)

# struct bpf_cgroup_dev_ctx: access_type (access << 16 | device type), major, minor.
_DEV_TYPE = {"b": 1, "c": 2}
_ACCESS_BIT = {"m": 1, "r": 2, "w": 4}

# bpf_insn opcodes used below
_LDX_W = 0x61  # dst = *(u32 *)(src + off)
_MOV_REG = 0xBF  # dst = src (64-bit)
_MOV_IMM = 0xB7  # dst = imm
_AND_IMM = 0x57  # dst &= imm
_RSH_IMM = 0x77  # dst >>= imm
_JNE_IMM = 0x55  # if dst != imm: pc += off
_EXIT = 0x95


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def _block(rule: DeviceRule) -> list[bytes]:
    """One rule: each check jumps past the block on a mismatch; falling through allows."""
    checks: list[tuple[list[bytes], int, int]] = []  # (setup, register, expected value)
    if rule.kind != "a":
        checks.append(([], 2, _DEV_TYPE[rule.kind]))
    denied = sum(bit for ch, bit in _ACCESS_BIT.items() if ch not in rule.access)
    if denied:  # r6 = requested & denied must be 0
        checks.append(([_insn(_MOV_REG, 6, 3), _insn(_AND_IMM, 6, imm=denied)], 6, 0))
    if rule.major != ANY:
        checks.append(([], 4, rule.major))
    if rule.minor != ANY:
        checks.append(([], 5, rule.minor))
    size = sum(len(setup) + 1 for setup, _, _ in checks) + 2
    out: list[bytes] = []
    for setup, register, value in checks:
        out += setup
        out.append(_insn(_JNE_IMM, register, off=size - len(out) - 1, imm=value))
    return out + [_insn(_MOV_IMM, 0, imm=1), _insn(_EXIT)]


def program(rules: list[DeviceRule]) -> bytes:
    """The device filter: r0 = 1 (allow) if one rule matches the request, else 0.

    Registers: r2 device type, r3 requested access bits, r4 major, r5 minor."""
    code = [
        _insn(_LDX_W, 2, 1, 0),
        _insn(_MOV_REG, 3, 2),
        _insn(_AND_IMM, 2, imm=0xFFFF),
        _insn(_RSH_IMM, 3, imm=16),
        _insn(_LDX_W, 4, 1, 4),
        _insn(_LDX_W, 5, 1, 8),
    ]
    for rule in rules:
        code += _block(rule)
    code += [_insn(_MOV_IMM, 0, imm=0), _insn(_EXIT)]
    return b"".join(code)


def _bpf(cmd: int, attr: bytes) -> int:
    number = _SYS_BPF.get(os.uname().machine)
    if number is None:
        raise SystemError_(f"device rules on cgroup v2 are not supported on {os.uname().machine}")
    buf = ctypes.create_string_buffer(attr, 128)
    fd = _libc.syscall(ctypes.c_long(number), ctypes.c_int(cmd), buf, ctypes.c_uint(len(buf)))
    if fd < 0:
        err = ctypes.get_errno()
        raise SystemError_(f"cannot set device rules: bpf: {os.strerror(err)}")
    return int(fd)


def attach_v2(directory: str, rules: list[DeviceRule]) -> None:
    """Load the device filter for `rules` and attach it to the cgroup2 directory.

    It is attached with BPF_F_ALLOW_MULTI, so filters of ancestors keep
    applying too; the attachment lives as long as the cgroup does."""
    if any(r.allows_everything() for r in rules):
        return
    insns = ctypes.create_string_buffer(program(rules))
    license_ = ctypes.create_string_buffer(b"Apache-2.0")
    attr = struct.pack("<IIQQ", _BPF_PROG_TYPE_CGROUP_DEVICE, len(insns.raw) // 8,
                       ctypes.addressof(insns), ctypes.addressof(license_))
    prog = _bpf(_BPF_PROG_LOAD, attr)
    try:
        cgroup = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            _bpf(_BPF_PROG_ATTACH, struct.pack("<IIII", cgroup, prog, _BPF_CGROUP_DEVICE, _BPF_F_ALLOW_MULTI))
        finally:
            os.close(cgroup)
    finally:
        os.close(prog)
