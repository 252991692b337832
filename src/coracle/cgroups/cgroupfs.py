"""Reading and writing cgroup interface files.

Cgroup files are not ordinary files: a value must reach the kernel in one
write(2), and the kernel's refusal (EINVAL, ERANGE, EBUSY) is the only
validation some limits get. So writes go through one os.write and a refusal is
turned into an InvalidParameter naming the limit, instead of a bare OSError.
Files are opened without O_CREAT: a missing file means a missing controller
or feature, never something to create.
"""

from __future__ import annotations

import errno
import os

from coracle.errors import InvalidParameter, SystemError_

# What the kernel answers when the value itself is unacceptable: the caller's fault.
_REFUSALS = {errno.EINVAL, errno.ERANGE, errno.EBUSY, errno.EOVERFLOW, errno.ENOSPC}


def read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def read_int(path: str, unlimited: int = -1) -> int:
    """An integer file; "max" (cgroup v2's spelling of no limit) reads as `unlimited`."""
    text = read(path)
    return unlimited if text == "max" else int(text)


def read_keyed(path: str) -> dict[str, int]:
    """A flat-keyed file ("key value" per line: memory.stat, cpu.stat, memory.events)."""
    out: dict[str, int] = {}
    for line in read(path).splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            continue
    return out


def read_ints(path: str) -> list[int]:
    """A whitespace-separated list of integers (cgroup.procs, cpuacct.usage_percpu)."""
    return [int(x) for x in read(path).split()]


def write(path: str, value: str | int, what: str) -> None:
    """Write one value in one write(2); `what` names the limit in error messages."""
    data = str(value).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    except FileNotFoundError:
        raise SystemError_(f"cannot set {what}: {path} does not exist on this host") from None
    try:
        os.write(fd, data)
    except OSError as e:
        if e.errno in _REFUSALS:
            raise InvalidParameter(
                f"cannot set {what} to {value}: the kernel refused it ({os.strerror(e.errno)})"
            ) from None
        raise SystemError_(f"cannot set {what} ({path}): {os.strerror(e.errno or 0)}") from None
    finally:
        os.close(fd)
