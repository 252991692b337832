"""`coracle build` (the native CLI) and the BuildKit Dockerfile features people now write:
RUN --mount (cache, bind, secret), COPY --link, and independent stages built in parallel."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from build_helpers import Docker, write
from harness import Daemon, unique


def test_plain_progress_shows_steps_cache_hits_and_times(daemon: Daemon, docker: Docker, tmp_path: Path) -> None:
    tag = unique("native")
    write(tmp_path, {"Dockerfile": "FROM busybox\nRUN echo compiling\nCOPY app.txt /app.txt\n",
                     "app.txt": "v1\n", "notes/skip.md": "x\n", ".dockerignore": "notes\n"})
    first = daemon.cli("build", "-t", tag, "--label", "team=core", str(tmp_path)).stdout
    lines = first.splitlines()
    assert lines[0].startswith("[1/4] FROM busybox")
    assert lines[1] == "[2/4] RUN echo compiling" and lines[2] == "    compiling" and lines[3].startswith("  done ")
    assert lines[4].startswith("[3/4] COPY app.txt /app.txt  ") and lines[4].endswith("s")
    assert f"Successfully tagged {tag}:latest" in first
    assert json.loads(docker("image", "inspect", tag).stdout)[0]["Config"]["Labels"] == {"team": "core"}

    again = daemon.cli("build", "-t", tag, "--label", "team=core", str(tmp_path)).stdout
    assert "[2/4] RUN echo compiling  CACHED" in again and "[3/4] COPY app.txt /app.txt  CACHED" in again

    live = daemon.cli("build", "--progress", "tty", "-t", tag, "--label", "team=core", str(tmp_path)).stdout
    assert "\x1b[K[2/4] RUN echo compiling  CACHED" in live  # the running step's line is redrawn in place

    quiet = daemon.cli("build", "-q", "-t", tag, "--label", "team=core", str(tmp_path)).stdout
    assert quiet.strip() == json.loads(docker("image", "inspect", tag).stdout)[0]["Id"]

    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN exit 5\n")
    failed = daemon.cli("build", str(tmp_path), check=False)
    assert failed.returncode == 5 and "[2/2] RUN exit 5  ERROR" in failed.stdout
    assert "The command '/bin/sh -c exit 5' returned a non-zero code: 5" in failed.stderr

    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN true\n\nBOGUS\n")
    failed = daemon.cli("build", str(tmp_path), check=False)
    assert failed.returncode == 1 and "dockerfile parse error on line 4: unknown instruction: BOGUS" in failed.stderr


def test_dockerfile_from_elsewhere_and_stdin(daemon: Daemon, docker: Docker, tmp_path: Path) -> None:
    context = write(tmp_path / "ctx", {"data.txt": "data\n"})
    outside = tmp_path / "build.Dockerfile"
    outside.write_text("FROM busybox\nCOPY data.txt /\n")
    tag = unique("elsewhere")
    daemon.cli("build", "-f", str(outside), "-t", tag, str(context))
    assert docker("run", "--rm", tag, "cat", "/data.txt").stdout == "data\n"
    daemon.cli("build", "-t", tag, "-", input="FROM busybox\nENV FROM_STDIN=1\n")
    assert "FROM_STDIN=1" in json.loads(docker("image", "inspect", tag).stdout)[0]["Config"]["Env"]


def test_secret_mount_is_in_no_layer_and_no_history(daemon: Daemon, docker: Docker, tmp_path: Path) -> None:
    tag = unique("secret")
    secret = "s3cr3t-" + unique("v")
    (tmp_path / "token").write_text(secret)
    digest = hashlib.sha256(secret.encode()).hexdigest()
    write(tmp_path / "ctx", {"Dockerfile": f"""\
FROM busybox
RUN --mount=type=secret,id=token test "$(sha256sum < /run/secrets/token)" = "{digest}  -" && echo secret-was-readable
RUN --mount=type=secret,id=token,target=/etc/app-token,required=true wc -c < /etc/app-token > /token-length
"""})
    out = daemon.cli("build", "-t", tag, "--secret", f"id=token,src={tmp_path / 'token'}", str(tmp_path / "ctx")).stdout
    assert "secret-was-readable" in out
    assert docker("run", "--rm", tag, "sh", "-c", "cat /token-length; ls /etc/app-token /run/secrets/token",
                  check=False).stdout.split()[0] == str(len(secret))
    docker("save", "-o", str(tmp_path / "saved.tar"), tag)
    saved = (tmp_path / "saved.tar").read_bytes()
    assert secret.encode() not in saved
    names = _layer_names(saved)
    assert "token-length" in names and "etc/app-token" not in names and "run/secrets/token" not in names
    assert secret not in docker("history", "--no-trunc", tag).stdout
    assert secret not in docker("image", "inspect", tag).stdout
    write(tmp_path / "ctx", {"Dockerfile": "FROM busybox\nRUN --mount=type=secret,id=token,required=true true\n"})
    missing = daemon.cli("build", str(tmp_path / "ctx"), check=False)
    assert missing.returncode != 0 and "secret token is required" in missing.stderr


def test_cache_and_bind_mounts(daemon: Daemon, docker: Docker, tmp_path: Path) -> None:
    tag = unique("mounts")
    write(tmp_path, {"Dockerfile": """\
FROM busybox AS builder
RUN mkdir /out && echo artefact > /out/result
FROM busybox
RUN --mount=type=cache,target=/var/cache/app echo run >> /var/cache/app/log && cat /var/cache/app/log | wc -l > /runs
RUN --mount=type=bind,from=builder,source=/out,target=/mnt cp /mnt/result /result
RUN --mount=type=bind,target=/ctx,source=src cat /ctx/input.txt > /input
RUN --mount=type=bind,target=/ctx,source=src,rw=true echo scribbled > /ctx/input.txt && cat /ctx/input.txt
RUN --mount=type=bind,from=builder,source=/out,target=/mnt,rw=true echo more >> /mnt/result
COPY --link src/input.txt /linked.txt
""", "src/input.txt": "input\n"})
    daemon.cli("build", "-t", tag, str(tmp_path))
    # (a writable bind mount's writes are thrown away: the COPY after it sees the context as sent)
    assert docker("run", "--rm", tag, "cat", "/runs", "/result", "/input", "/linked.txt").stdout == \
        "1\nartefact\ninput\ninput\n"
    daemon.cli("build", "--no-cache", "-t", tag, str(tmp_path))
    assert docker("run", "--rm", tag, "cat", "/runs").stdout == "2\n"  # the cache directory outlived the build
    listing = docker("run", "--rm", tag, "sh", "-c", "ls -A /var/cache/app /mnt /ctx 2>&1", check=False).stdout
    assert listing.count("No such file or directory") == 3  # mounts and their mount points are in no layer
    usage = json.loads(docker("system", "df", "-v", "--format", "{{json .BuildCache}}").stdout)
    assert any(entry.get("CacheType") == "exec.cachemount" for entry in usage)


def test_independent_stages_build_in_parallel(daemon: Daemon, docker: Docker, tmp_path: Path) -> None:
    """Each stage waits (boundedly) for the other to show up in a shared cache mount: only
    stages that really run at the same time both succeed."""
    tag = unique("parallel")
    wait = ("touch /rv/{me}; i=0; until [ -f /rv/{other} ]; do i=$((i+1)); [ $i -lt 600 ] || exit 9; "
            "sleep 0.1; done; echo {me} > /{me}")
    rendezvous = unique("rv")
    write(tmp_path, {"Dockerfile": f"""\
FROM busybox AS left
RUN --mount=type=cache,id={rendezvous},target=/rv {wait.format(me="left", other="right")}
FROM busybox AS right
RUN --mount=type=cache,id={rendezvous},target=/rv {wait.format(me="right", other="left")}
FROM busybox
COPY --from=left /left /
COPY --from=right /right /
"""})
    daemon.cli("build", "-t", tag, str(tmp_path), timeout=120)
    assert docker("run", "--rm", tag, "cat", "/left", "/right").stdout == "left\nright\n"


def _layer_names(saved: bytes) -> set[str]:
    names = set()
    with tarfile.open(fileobj=io.BytesIO(saved)) as outer:
        for member in outer:
            if member.isfile() and member.name.endswith((".tar", "layer.tar")) or "blobs/sha256/" in member.name:
                data = outer.extractfile(member).read()  # type: ignore[union-attr]  # a regular file member
                try:
                    with tarfile.open(fileobj=io.BytesIO(data)) as layer:
                        names.update(layer.getnames())
                except tarfile.TarError:
                    pass
    return names


def test_context_tar_on_stdin(daemon: Daemon, docker: Docker, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in (("Dockerfile", b"FROM busybox\nCOPY piped.txt /\n"), ("piped.txt", b"piped\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    tag = unique("stdin")
    res = subprocess.run([sys.executable, "-m", "coracle.cli.main", "build", "-t", tag, "-"], input=buf.getvalue(),
                         capture_output=True, env={**os.environ, "CORACLE_HOST": daemon.host}, timeout=120)
    assert res.returncode == 0, res.stderr
    assert docker("run", "--rm", tag, "cat", "/piped.txt").stdout == "piped\n"
