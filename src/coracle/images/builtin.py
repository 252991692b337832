"""The built-in `busybox:latest`, made from the host's static busybox.

It lets `run busybox ...` work on a machine with no registry access. The image
is an ordinary content-addressed image (one layer tar, one config blob) so that
save/push treat it like any other; the tar is deterministic (sorted entries,
times fixed to the binary's mtime) so its id is stable on a machine.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from datetime import datetime, UTC

from coracle.errors import SystemError_

BUSYBOX = "/bin/busybox"
NAME = "busybox:latest"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
"""

GROUP = """\
root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
lp:x:7:
mail:x:8:
kmem:x:9:
wheel:x:10:root
cdrom:x:11:
dialout:x:18:
floppy:x:19:
video:x:28:
audio:x:29:
tape:x:32:
www-data:x:33:
operator:x:37:
utmp:x:43:
plugdev:x:46:
staff:x:50:
lock:x:54:
netdev:x:82:
users:x:100:
nogroup:x:65534:
"""

# (path, mode): mount points and the usual empty directories.
DIRS = [
    ("bin", 0o755), ("dev", 0o755), ("etc", 0o755), ("home", 0o755), ("proc", 0o555),
    ("root", 0o700), ("sbin", 0o755), ("sys", 0o555), ("tmp", 0o1777), ("usr", 0o755),
    ("usr/bin", 0o755), ("usr/sbin", 0o755), ("var", 0o755), ("var/spool", 0o755),
    ("var/spool/mail", 0o755), ("var/www", 0o755),
]


def _applets() -> list[str]:
    try:
        out = subprocess.run([BUSYBOX, "--list-full"], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemError_(f"the built-in busybox image needs a static {BUSYBOX} "
                           f"(Debian package busybox-static): {exc}") from None
    return sorted({line.strip() for line in out.splitlines() if line.strip()} - {"bin/busybox"})


def layer_tar() -> tuple[bytes, int]:
    """The layer tar's bytes and the time (unix seconds) used for every entry."""
    applets = _applets()
    with open(BUSYBOX, "rb") as f:
        binary = f.read()
    mtime = int(os.stat(BUSYBOX).st_mtime)
    entries: dict[str, tarfile.TarInfo] = {}
    payload: dict[str, bytes] = {}

    def add(name: str, kind: bytes, mode: int, data: bytes = b"", link: str = "") -> None:
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.mtime, ti.linkname = kind, mode, mtime, link
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = "root"
        ti.size = len(data)
        entries[name] = ti
        payload[name] = data

    for path, mode in DIRS:
        add(path, tarfile.DIRTYPE, mode)
    for applet in applets:
        for parent in _parents(applet):
            if parent not in entries:
                add(parent, tarfile.DIRTYPE, 0o755)
        add(applet, tarfile.SYMTYPE, 0o777, link="/bin/busybox")
    add("bin/busybox", tarfile.REGTYPE, 0o755, binary)
    add("etc/passwd", tarfile.REGTYPE, 0o644, PASSWD.encode())
    add("etc/group", tarfile.REGTYPE, 0o644, GROUP.encode())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name in sorted(entries):
            tf.addfile(entries[name], io.BytesIO(payload[name]) if payload[name] else None)
    return buf.getvalue(), mtime


def _parents(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def config_blob(diff_id: str, mtime: int) -> bytes:
    created = datetime.fromtimestamp(mtime, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    config = {
        "architecture": "amd64",
        "config": {"Env": [PATH_ENV], "Cmd": ["sh"]},
        "created": created,
        "history": [
            {"created": created, "created_by": f"coracle: built-in image from the host's {BUSYBOX}"},
            {"created": created, "created_by": 'CMD ["sh"]', "empty_layer": True},
        ],
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    return json.dumps(config, separators=(",", ":"), sort_keys=True).encode()
