"""`docker cp`: tar archives of paths inside a container, and tars extracted into it.

Why a child process: a path inside a container must resolve the way the
container's own processes see it (absolute symlinks, `..` at the root, volumes
mounted over the image), and nothing the container controls may steer the
daemon outside that root (Docker's own cp had escapes of exactly that kind).
So the work happens in a short-lived `python -m coracle.engine.archive` child
whose root *is* the container's root:

- running container: the child joins its mount namespace (setns puts the
  child's root and cwd at the container's pivoted root);
- stopped container: the child builds the container's overlay in a private
  mount namespace and chroots into it. Reads mount it read-only from the
  layers alone (the container's upper dir as the top lower layer, so the
  kernel applies whiteouts and opaque dirs); writes mount it with the upper
  and work dirs, under the container's lock so that a start cannot race it.

The child imports everything before entering the container and never looks
up user names (no NSS module of the container is ever loaded): tar entries
carry numeric owners.

Protocol: one JSON request in argv; the child answers one JSON header line on
stdout ({"stat": ...} or {"error": ..., "status": ...}), followed for `get` by
the tar stream. For `put` the tar comes on stdin.
"""

from __future__ import annotations

import json
import os
import shutil
import stat as st
import subprocess
import sys
import tarfile
import time
from typing import IO, Any, BinaryIO

from coracle.errors import Conflict, CoracleError, InvalidParameter, NotFound, SystemError_
from coracle.runtime import syscalls as sc

# Go's os.FileMode type bits: the CLI reads PathStat.Mode with Go's IsDir() and friends.
_GO_MODE = [(st.S_ISDIR, 1 << 31), (st.S_ISLNK, 1 << 27), (st.S_ISBLK, 1 << 26), (st.S_ISFIFO, 1 << 25),
            (st.S_ISSOCK, 1 << 24), (st.S_ISCHR, (1 << 26) | (1 << 21))]
_ERRORS = {400: InvalidParameter, 404: NotFound, 409: Conflict}


# ----- the daemon's side ------------------------------------------------------


def stat(engine: Any, ref: str, path: str) -> dict[str, Any]:
    """Docker's PathStat of `path` in the container (HEAD /containers/{id}/archive)."""
    proc = _spawn(engine, ref, {"op": "stat", "path": path, "ref": ref}, writable=False)
    try:
        return _header(proc)
    finally:
        proc.stdout.close()  # type: ignore[union-attr]
        proc.wait()


def export(engine: Any, ref: str, path: str) -> tuple[dict[str, Any], subprocess.Popen]:
    """PathStat and a child whose stdout carries the tar of `path` (GET .../archive).

    The caller reads `proc.stdout` to its end, then waits (or kills) the child.
    """
    rec = engine.get(ref)
    proc = _spawn(engine, ref, {"op": "get", "path": path, "ref": ref}, writable=False)
    try:
        found = _header(proc)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    engine._event(rec, "archive-path")
    return found, proc


def extract(engine: Any, ref: str, path: str, tar: BinaryIO, *, no_overwrite_dir_non_dir: bool = False,
            copy_uid_gid: bool = False) -> None:
    """Unpack `tar` into the directory `path` of the container (PUT .../archive)."""
    rec = engine.get(ref)
    request = {"op": "put", "path": path, "ref": ref, "no_overwrite_dir_non_dir": no_overwrite_dir_non_dir,
               "owner": (rec["Config"].get("User") or "0") if copy_uid_gid else None}
    with engine._lock_for(rec["Id"]):  # a stopped container's overlay is ours until the child is done
        proc = _spawn(engine, rec["Id"], request, writable=True, stdin=tar)
        try:
            _header(proc)
        finally:
            proc.stdout.close()  # type: ignore[union-attr]
            proc.wait()
    engine._event(rec, "extract-to-dir")


def _spawn(engine: Any, ref: str, request: dict[str, Any], *, writable: bool,
           stdin: BinaryIO | None = None) -> subprocess.Popen:
    rec = engine.get(ref)
    if rec["State"]["Running"]:
        request["enter"] = {"pid": rec["State"]["Pid"]}
    else:
        upper = rec["GraphDriver"]["Data"]["UpperDir"]
        lower = engine.images.layer_dirs(engine.images.resolve(rec["Image"]))
        request["enter"] = {"overlay": {
            "lower": lower, "upper": upper, "work": rec["GraphDriver"]["Data"]["WorkDir"],
            "root": rec["GraphDriver"]["Data"]["MergedDir"], "writable": writable,
            "readonly": bool(rec["HostConfig"].get("ReadonlyRootfs")),
            "mounts": [{"source": m["Source"], "target": m["Destination"], "rw": m["RW"]}
                       for m in rec["Mounts"] if m["Type"] in ("bind", "volume")],
        }}
    return subprocess.Popen([sys.executable, "-m", "coracle.engine.archive", json.dumps(request)],
                            stdin=stdin if stdin is not None else subprocess.DEVNULL, stdout=subprocess.PIPE)


def _header(proc: subprocess.Popen) -> dict[str, Any]:
    line = proc.stdout.readline()  # type: ignore[union-attr]
    if not line:
        proc.wait()
        raise SystemError_(f"copying failed: the archive helper exited with status {proc.returncode}")
    answer = json.loads(line)
    if "error" in answer:
        raise _ERRORS.get(answer.get("status", 500), SystemError_)(answer["error"])
    return answer["stat"]


# ----- the child's side -------------------------------------------------------


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _enter(how: dict[str, Any]) -> None:
    """Make the container's root our root (see the module docstring)."""
    if "pid" in how:
        fd = os.open(f"/proc/{how['pid']}/ns/mnt", os.O_RDONLY)
        sc.setns(fd, sc.CLONE_NEWNS)
        os.close(fd)
        os.chdir("/")
        return
    ov = how["overlay"]
    sc.unshare(sc.CLONE_NEWNS)
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    root = ov["root"]
    lower = ":".join(reversed(ov["lower"]))
    if ov["writable"]:
        flags = sc.MS_RDONLY if ov["readonly"] else 0
        sc.mount("overlay", root, "overlay", flags, f"lowerdir={lower},upperdir={ov['upper']},workdir={ov['work']}")
    else:
        sc.mount("overlay", root, "overlay", sc.MS_RDONLY, f"lowerdir={ov['upper']}:{lower}")
    for m in ov["mounts"]:
        target = os.path.join(root, m["target"].lstrip("/"))
        if os.path.isdir(m["source"]) == os.path.isdir(target) and os.path.lexists(target) \
                and not os.path.islink(target):
            sc.mount(m["source"], target, None, sc.MS_BIND | sc.MS_REC)
            if not m["rw"] or not ov["writable"]:
                sc.mount(None, target, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY)
    os.chroot(root)
    os.chdir("/")


def _locate(path: str) -> tuple[str, str]:
    """(resolved path, entry name) the way Docker reads a cp path.

    Every component but the last is resolved through symlinks; a trailing
    `/` or `/.` resolves the last one too (and `/.` means "the contents").
    """
    if not path:
        raise _Refused(400, "path cannot be empty")
    path = "/" + path.lstrip("/")
    if path.endswith("/.") or path == "/":
        return os.path.realpath(path), "."
    if path.endswith("/"):
        resolved = os.path.realpath(path)
        return resolved, os.path.basename(path.rstrip("/")) or "."
    parent, base = os.path.split(path)
    return os.path.join(os.path.realpath(parent), base), base


def _go_mode(mode: int) -> int:
    out = st.S_IMODE(mode) & 0o777
    for test, bit in _GO_MODE:
        if test(mode):
            out |= bit
    if mode & st.S_ISUID:
        out |= 1 << 23
    if mode & st.S_ISGID:
        out |= 1 << 22
    if mode & st.S_ISVTX:
        out |= 1 << 20
    return out


def _path_stat(path: str, ref: str) -> tuple[str, str, dict[str, Any]]:
    resolved, name = _locate(path)
    try:
        info = os.lstat(resolved)
    except (FileNotFoundError, NotADirectoryError):
        raise _Refused(404, f"Could not find the file {path} in container {ref}") from None
    link = os.path.realpath(resolved) if st.S_ISLNK(info.st_mode) else ""
    ns = info.st_mtime_ns
    mtime = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + f".{ns % 10**9:09d}Z"
    entry = {"name": os.path.basename(path.rstrip("/")) or "/", "size": info.st_size,
             "mode": _go_mode(info.st_mode), "mtime": mtime, "linkTarget": link}
    return resolved, name, entry


def _owner(spec: str) -> tuple[int, int]:
    """uid/gid of a container user ("name", "uid", "uid:gid", "name:group") from its own files."""
    user, _, group = spec.partition(":")

    def lookup(file: str, name: str) -> tuple[int, int] | None:
        try:
            with open(file, errors="replace") as f:
                for line in f:
                    fields = line.rstrip("\n").split(":")
                    if len(fields) >= 4 and fields[0] == name:
                        return int(fields[2]), int(fields[3])
        except (OSError, ValueError):
            pass
        return None

    if user.isdigit():
        uid, gid = int(user), int(user)
    else:
        found = lookup("/etc/passwd", user)
        if found is None:
            raise _Refused(400, f"unable to find user {user}: no matching entries in passwd file")
        uid, gid = found
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            found = lookup("/etc/group", group)
            if found is None:
                raise _Refused(400, f"unable to find group {group}: no matching entries in group file")
            gid = found[0]
    return uid, gid


def _member_path(dest: str, name: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _Refused(400, f"invalid tar entry {name!r}: it leaves the extraction point")
    return os.path.join(dest, *parts) if parts else dest


def _put(request: dict[str, Any], out: IO[bytes]) -> None:
    path, ref = request["path"], request["ref"]
    try:
        dest = os.path.realpath("/" + path.lstrip("/"))
        info = os.stat(dest)
    except (FileNotFoundError, NotADirectoryError):
        raise _Refused(404, f"Could not find the file {path} in container {ref}") from None
    if not st.S_ISDIR(info.st_mode):
        raise _Refused(400, "extraction point is not a directory")
    owner = _owner(request["owner"]) if request.get("owner") else None
    strict = request.get("no_overwrite_dir_non_dir")
    with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as tar:
        for member in tar:
            target = _member_path(dest, member.name)
            if target == dest and member.isdir():
                continue
            member.name = os.path.relpath(target, dest)
            try:
                existing = os.lstat(target)
            except (FileNotFoundError, NotADirectoryError):
                existing = None
            if existing is not None:
                is_dir = st.S_ISDIR(existing.st_mode)
                if strict and is_dir and not member.isdir():
                    raise _Refused(400, f"cannot overwrite directory {target!r} with non-directory {member.name!r}")
                if strict and not is_dir and member.isdir():
                    raise _Refused(400, f"cannot overwrite non-directory {target!r} with directory {member.name!r}")
                if is_dir and not member.isdir():
                    shutil.rmtree(target)
                elif not is_dir:
                    os.unlink(target)  # never write through a symlink the container left there
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tar.extract(member, dest, set_attrs=True, numeric_owner=True)
            if owner is not None:
                os.lchown(target, *owner)
    out.write(json.dumps({"stat": {}}).encode() + b"\n")


def _get(request: dict[str, Any], out: IO[bytes]) -> None:
    resolved, name, entry = _path_stat(request["path"], request["ref"])
    out.write(json.dumps({"stat": entry}).encode() + b"\n")
    out.flush()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.add(resolved, arcname=name, recursive=True)


def child_main(argv: list[str]) -> int:
    request = json.loads(argv[0])
    out = sys.stdout.buffer
    tarfile.pwd = None  # type: ignore[attr-defined]  # numeric owners only: no NSS inside the container
    tarfile.grp = None  # type: ignore[attr-defined]
    try:
        _enter(request["enter"])
        if request["op"] == "stat":
            out.write(json.dumps({"stat": _path_stat(request["path"], request["ref"])[2]}).encode() + b"\n")
        elif request["op"] == "get":
            _get(request, out)
        else:
            _put(request, out)
    except _Refused as exc:
        out.write(json.dumps({"error": str(exc), "status": exc.status}).encode() + b"\n")
        return 1
    except OSError as exc:
        status = 400 if exc.errno in (30, 20, 21, 39) else 500  # EROFS, ENOTDIR, EISDIR, ENOTEMPTY
        message = "container rootfs is marked read-only" if exc.errno == 30 else str(exc)
        out.write(json.dumps({"error": message, "status": status}).encode() + b"\n")
        return 1
    except (tarfile.TarError, CoracleError, ValueError) as exc:
        out.write(json.dumps({"error": f"invalid archive: {exc}", "status": 400}).encode() + b"\n")
        return 1
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
