"""`docker build` (the docker CLI, classic builder protocol) against coracled.

Each test builds from a real context directory and then looks at the image the
way a user would: `docker inspect`, `docker history`, and files, owners and
modes seen from inside a container of the image.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from build_helpers import Docker, write
from harness import Daemon, unique


def inspect(docker: Docker, ref: str) -> dict:
    return json.loads(docker("image", "inspect", ref).stdout)[0]


def history(docker: Docker, ref: str) -> list[str]:
    lines = docker("history", "--no-trunc", "--format", "{{json .CreatedBy}}", ref).stdout.splitlines()
    return [json.loads(line) for line in lines]


def test_metadata_instructions_make_the_image_config(docker: Docker, tmp_path: Path) -> None:
    tag = unique("meta")
    write(tmp_path, {"Dockerfile": """\
# syntax=docker/dockerfile:1
FROM busybox
ENV GREETING="hello world" \\
    PATH=/opt/bin:$PATH
LABEL org.example.name="demo app" version=1.0
EXPOSE 8080 53/udp
WORKDIR /srv
WORKDIR app
USER 1000:1000
VOLUME ["/data"]
STOPSIGNAL SIGINT
HEALTHCHECK --interval=5s --retries=2 CMD wget -q -O- localhost:8080
SHELL ["/bin/sh", "-ec"]
ENTRYPOINT ["/bin/sh", "-c"]
CMD echo $GREETING
ONBUILD RUN echo triggered
"""})
    docker("build", "-t", tag, str(tmp_path))
    config = inspect(docker, tag)["Config"]
    assert "GREETING=hello world" in config["Env"]
    assert "PATH=/opt/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in config["Env"]
    assert config["Labels"] == {"org.example.name": "demo app", "version": "1.0"}
    assert config["ExposedPorts"] == {"8080/tcp": {}, "53/udp": {}}
    assert config["WorkingDir"] == "/srv/app"
    assert config["User"] == "1000:1000"
    assert config["Volumes"] == {"/data": {}}
    assert config["StopSignal"] == "SIGINT"
    assert config["Healthcheck"] == {"Test": ["CMD-SHELL", "wget -q -O- localhost:8080"], "Interval": 5_000_000_000,
                                     "Retries": 2}
    assert config["Shell"] == ["/bin/sh", "-ec"]
    assert config["Entrypoint"] == ["/bin/sh", "-c"]
    assert config["Cmd"] == ["/bin/sh", "-ec", "echo $GREETING"]
    assert config["OnBuild"] == ["RUN echo triggered"]
    assert history(docker, tag)[0] == "/bin/sh -c #(nop)  ONBUILD RUN echo triggered"

    child = unique("child")
    write(tmp_path / "child", {"Dockerfile": f"FROM {tag}\nUSER 0\nCMD [\"true\"]\n"})
    out = docker("build", "-t", child, str(tmp_path / "child")).stdout
    assert "# Executing 1 build trigger" in out and "triggered" in out
    assert not inspect(docker, child)["Config"].get("OnBuild")


def test_run_steps_are_containers_and_layers(docker: Docker, tmp_path: Path) -> None:
    tag = unique("run")
    write(tmp_path, {"Dockerfile": """\
FROM busybox
RUN mkdir -p /opt/app && echo one > /opt/app/one && echo gone > /opt/app/gone
RUN ["/bin/sh", "-c", "rm /opt/app/gone && echo two > /opt/app/two && id -u > /opt/app/uid"]
RUN grep CapEff /proc/self/status | cut -f2 > /opt/app/capeff; \\
    grep Seccomp: /proc/self/status | cut -f2 > /opt/app/seccomp
RUN <<SCRIPT
echo from a heredoc > /opt/app/heredoc
echo second line >> /opt/app/heredoc
SCRIPT
"""})
    out = docker("build", "-t", tag, str(tmp_path)).stdout
    assert out.count("Running in") == 4
    listing = docker("run", "--rm", tag, "sh", "-c",
                     "cd /opt/app && ls && cat one two uid capeff seccomp heredoc").stdout
    assert listing.split() == ["capeff", "heredoc", "one", "seccomp", "two", "uid",
                               "one", "two", "0", "00000000a80425fb", "2", "from", "a", "heredoc", "second", "line"]
    steps = history(docker, tag)
    assert steps[3].startswith("/bin/sh -c mkdir -p /opt/app")
    assert steps[2].startswith("/bin/sh -c rm /opt/app/gone")
    # the deleted file is a whiteout in the second RUN's layer: gone from the image
    assert docker("run", "--rm", tag, "ls", "/opt/app/gone", check=False).returncode != 0
    assert docker("ps", "-aq", "--filter", "label=coracle.build").stdout.strip() == ""


def test_copy_and_add(docker: Docker, tmp_path: Path) -> None:
    tag = unique("copy")
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        data = b"from the archive\n"
        info = tarfile.TarInfo("pkg/readme.txt")
        info.size, info.uid, info.gid, info.mode = len(data), 7, 8, 0o640
        tar.addfile(info, io.BytesIO(data))
    write(tmp_path, {
        "Dockerfile": """\
FROM busybox
RUN echo 'app:x:1234:2345::/home/app:/bin/sh' >> /etc/passwd && echo 'app:x:2345:' >> /etc/group && echo 'staff2:x:3456:' >> /etc/group
COPY a.txt b.txt /dst/
COPY *.conf /conf/
COPY --chown=app:app --chmod=640 a.txt /owned/a
COPY --chown=app b.txt dir /owned-dir/
COPY --chown=55:staff2 b.txt /numeric
COPY dir /tree
COPY ["a.txt", "/single file"]
ADD pkg.tar.gz /unpacked/
COPY <<EOF /etc/motd
hello ${NAME:-stranger}
EOF
ARG NAME=builder
COPY <<EOF /etc/motd2
hello ${NAME:-stranger}
EOF
""",  # noqa: E501  (the user-making RUN line reads as one shell command)
        "a.txt": "A\n", "b.txt": "B\n", "x.conf": "x\n", "y.conf": "y\n", "dir/sub/deep.txt": "deep\n",
        "dir/top.txt": "top\n", "secret.key": "never\n", "logs/a.log": "log\n", "logs/keep.log": "kept\n",
        ".dockerignore": "secret.key\nlogs/*.log\n!logs/keep.log\n",
    })
    (tmp_path / "pkg.tar.gz").write_bytes(archive.getvalue())
    (tmp_path / "dir" / "top.txt").chmod(0o751)
    docker("build", "-t", tag, str(tmp_path))

    def sh(script: str) -> str:
        return docker("run", "--rm", tag, "sh", "-c", script).stdout

    assert sh("cat /dst/a.txt /dst/b.txt /conf/x.conf /conf/y.conf") == "A\nB\nx\ny\n"
    assert sh("stat -c '%u:%g %a' /owned/a /dst/a.txt") == "1234:2345 640\n0:0 644\n"
    # a user alone gets its uid as gid (Docker's rule); a directory the COPY creates is owned too
    assert sh("stat -c '%u:%g %n' /owned-dir /owned-dir/b.txt /owned-dir/sub/deep.txt /numeric") == \
        "1234:1234 /owned-dir\n1234:1234 /owned-dir/b.txt\n1234:1234 /owned-dir/sub/deep.txt\n55:3456 /numeric\n"
    assert sh("cat /tree/sub/deep.txt; stat -c '%a %u' /tree/top.txt") == "deep\n751 0\n"
    assert sh("cat '/single file'") == "A\n"
    assert sh("cat /unpacked/pkg/readme.txt; stat -c '%u:%g %a' /unpacked/pkg/readme.txt") == \
        "from the archive\n7:8 640\n"
    assert sh("cat /etc/motd /etc/motd2") == "hello stranger\nhello builder\n"

    # .dockerignore: ignored files cannot be copied; `!` brings one back
    write(tmp_path, {"Dockerfile": "FROM busybox\nCOPY logs /logs\nRUN ls /logs\n"})
    out = docker("build", str(tmp_path)).stdout
    assert "keep.log" in out and "a.log" not in out, out
    write(tmp_path, {"Dockerfile": "FROM busybox\nCOPY secret.key /\n"})
    failed = docker("build", str(tmp_path), check=False)
    assert failed.returncode != 0 and "secret.key" in failed.stderr and "not found" in failed.stderr


def test_run_output_is_shown_in_the_build_progress(docker: Docker, tmp_path: Path) -> None:
    # stdout and stderr of a RUN step, including one write larger than a monitor packet's read size
    write(tmp_path, {"Dockerfile": "FROM busybox\nRUN echo to-stdout; echo to-stderr >&2; "
                                   "head -c 100000 /dev/zero | tr '\\0' x; echo; echo last-line\n"})
    out = docker("build", "--no-cache", str(tmp_path)).stdout
    assert "to-stdout" in out and "to-stderr" in out and "last-line" in out, out[:2000]
    assert "x" * 100000 in out


def test_add_of_an_unreachable_url_is_a_clear_error(docker: Docker, tmp_path: Path) -> None:
    write(tmp_path, {"Dockerfile": "FROM busybox\nADD http://127.0.0.1:9/file.txt /\n"})
    res = docker("build", str(tmp_path), check=False)
    assert res.returncode == 1
    assert "failed to download http://127.0.0.1:9/file.txt" in res.stderr and "refused" in res.stderr


def test_multi_stage_target_and_copy_from(docker: Docker, tmp_path: Path) -> None:
    tag = unique("stages")
    write(tmp_path, {"Dockerfile": """\
ARG BASE=busybox
FROM $BASE AS builder
ARG BASE
RUN mkdir /out && echo "built on $BASE" > /out/result && echo side > /out/side
FROM busybox AS broken
RUN exit 7
FROM ${BASE} AS final
COPY --from=builder /out/result /app/result
COPY --from=0 /out /everything
FROM final AS tested
RUN test -f /app/result
"""})
    out = docker("build", "--target", "final", "-t", tag, str(tmp_path)).stdout
    assert "exit 7" not in out  # a stage the target does not need is skipped
    assert docker("run", "--rm", tag, "cat", "/app/result", "/everything/side").stdout == "built on busybox\nside\n"
    res = docker("build", "--target", "nosuch", str(tmp_path), check=False)
    assert res.returncode != 0 and "failed to reach build target nosuch" in res.stderr
    res = docker("build", "--target", "broken", str(tmp_path), check=False)
    assert res.returncode == 7
    assert "The command '/bin/sh -c exit 7' returned a non-zero code: 7" in res.stderr


def test_build_args(docker: Docker, tmp_path: Path) -> None:
    tag = unique("args")
    write(tmp_path, {"Dockerfile": """\
ARG VERSION=1.0
FROM busybox
ARG VERSION
ARG MODE=debug
ARG UNSET
ENV APP_VERSION=$VERSION APP_MODE=${MODE:+mode-$MODE} FALLBACK=${UNSET:-none}
RUN echo "$VERSION $MODE" > /args
"""})
    out = docker("build", "--build-arg", "MODE=release", "--build-arg", "EXTRA=1", "-t", tag, str(tmp_path)).stdout
    assert "[Warning] One or more build-args [EXTRA] were not consumed" in out
    env = inspect(docker, tag)["Config"]["Env"]
    assert "APP_VERSION=1.0" in env and "APP_MODE=mode-release" in env and "FALLBACK=none" in env
    assert not any(e.startswith(("MODE=", "VERSION=")) for e in env)  # build args are not kept in the image
    assert docker("run", "--rm", tag, "cat", "/args").stdout == "1.0 release\n"
    assert history(docker, tag)[0] == '|2 MODE=release VERSION=1.0 /bin/sh -c echo "$VERSION $MODE" > /args'

    # predefined proxy args reach RUN without an ARG, and stay out of the history and the image
    write(tmp_path, {"Dockerfile": "FROM busybox\nRUN echo \"$HTTP_PROXY\" > /proxy\n"})
    out = docker("build", "--build-arg", "HTTP_PROXY=http://proxy.invalid:3128", "-t", tag, str(tmp_path)).stdout
    assert "not consumed" not in out
    assert docker("run", "--rm", tag, "cat", "/proxy").stdout == "http://proxy.invalid:3128\n"
    assert history(docker, tag)[0] == '/bin/sh -c echo "$HTTP_PROXY" > /proxy'
    assert not any("PROXY" in e for e in inspect(docker, tag)["Config"]["Env"])


def test_failing_run_and_syntax_errors(docker: Docker, tmp_path: Path) -> None:
    write(tmp_path, {"Dockerfile": "FROM busybox\nRUN echo about to fail && exit 3\n"})
    res = docker("build", str(tmp_path), check=False)
    assert res.returncode == 3
    assert "about to fail" in res.stdout
    assert "The command '/bin/sh -c echo about to fail && exit 3' returned a non-zero code: 3" in res.stderr
    # as Docker: the failed step's container stays for a look (`docker logs`), unless --force-rm
    kept = docker("ps", "-aq", "--filter", "label=coracle.build").stdout.split()
    assert len(kept) == 1 and docker("logs", kept[0]).stdout == "about to fail\n"
    assert json.loads(docker("inspect", kept[0]).stdout)[0]["State"]["ExitCode"] == 3
    docker("rm", kept[0])
    res = docker("build", "--force-rm", str(tmp_path), check=False)
    assert res.returncode == 3 and docker("ps", "-aq", "--filter", "label=coracle.build").stdout.strip() == ""
    write(tmp_path / "ok", {"Dockerfile": "FROM busybox\nRUN echo fine\n"})
    docker("build", "--rm=false", str(tmp_path / "ok"))
    assert len(docker("ps", "-aq", "--filter", "label=coracle.build").stdout.split()) == 1  # --rm=false keeps it

    write(tmp_path, {"Dockerfile": "FROM busybox\nCOPY --exclude=*.md . /app\n"})
    res = docker("build", str(tmp_path), check=False)
    assert res.returncode == 1 and "COPY --exclude is not supported by this builder" in res.stderr

    write(tmp_path, {"Dockerfile": "FROM busybox\nRUN true\nFROBNICATE now\n"})
    res = docker("build", str(tmp_path), check=False)
    assert res.returncode == 1
    assert "dockerfile parse error on line 3: unknown instruction: FROBNICATE" in res.stderr


def test_cache_rules(docker: Docker, tmp_path: Path) -> None:
    tag = unique("cache")
    write(tmp_path, {"Dockerfile": """\
FROM busybox
RUN echo first > /first
COPY early.txt /early.txt
RUN echo middle > /middle
COPY late.txt /late.txt
RUN cat /late.txt > /copy-of-late
""", "early.txt": "early\n", "late.txt": "late v1\n"})
    first = docker("build", "-t", tag, str(tmp_path)).stdout
    assert "Using cache" not in first
    image_id = inspect(docker, tag)["Id"]

    again = docker("build", "-t", tag, str(tmp_path)).stdout
    assert again.count("Using cache") == 5 and "Running in" not in again
    assert inspect(docker, tag)["Id"] == image_id

    (tmp_path / "late.txt").write_text("late v2\n")
    changed = docker("build", "-t", tag, str(tmp_path)).stdout
    steps = changed.split("Step ")[1:]
    assert ["Using cache" in s for s in steps] == [False, True, True, True, False, False]
    assert docker("run", "--rm", tag, "cat", "/copy-of-late").stdout == "late v2\n"

    (tmp_path / "late.txt").touch()  # times are not content: still a hit
    assert docker("build", "-t", tag, str(tmp_path)).stdout.count("Using cache") == 5

    no_cache = docker("build", "--no-cache", "-t", tag, str(tmp_path)).stdout
    assert "Using cache" not in no_cache and no_cache.count("Running in") == 3

    images = docker("images", "-q").stdout.split()
    assert len(images) == len(set(images))  # build steps are cache, not images
    rows = [json.loads(line) for line in docker("system", "df", "--format", "{{json .}}").stdout.splitlines()]
    build_cache = next(r for r in rows if r["Type"] == "Build Cache")
    assert int(build_cache["TotalCount"]) >= 5
    assert "Total reclaimed space" in docker("builder", "prune", "-f").stdout
    assert "Using cache" not in docker("build", "-t", tag, str(tmp_path)).stdout


def test_sources_outside_the_context_are_refused(docker: Docker, tmp_path: Path) -> None:
    write(tmp_path / "ctx", {"Dockerfile": "FROM busybox\nCOPY ../outside.txt /\n"})
    (tmp_path / "outside.txt").write_text("outside\n")
    res = docker("build", str(tmp_path / "ctx"), check=False)
    assert res.returncode == 1 and "forbidden path outside the build context: ../outside.txt" in res.stderr


def test_add_of_a_url(daemon: Daemon, docker: Docker, tmp_path: Path) -> None:
    """The file comes from an HTTP server inside the daemon's own network namespace."""
    served = tmp_path / "www"
    write(served, {"tool.sh": "echo fetched\n"})
    port = 20000 + int.from_bytes(os.urandom(2), "big") % 20000
    server = subprocess.Popen(["ip", "netns", "exec", daemon.netns, sys.executable, "-m", "http.server",
                               "--bind", "127.0.0.1", str(port)], cwd=served, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), 1)"
            if daemon.netns_exec(sys.executable, "-c", probe, check=False).returncode == 0:
                break
            time.sleep(0.1)
        tag = unique("url")
        write(tmp_path / "ctx", {"Dockerfile": f"FROM busybox\nADD http://127.0.0.1:{port}/tool.sh /opt/\n"
                                               f"ADD http://127.0.0.1:{port}/tool.sh /renamed.sh\n"})
        docker("build", "--network", "host", "-t", tag, str(tmp_path / "ctx"))
        assert docker("run", "--rm", tag, "sh", "-c", "sh /opt/tool.sh; stat -c '%a %u' /opt/tool.sh /renamed.sh"
                      ).stdout == "fetched\n600 0\n600 0\n"
    finally:
        server.kill()
        server.wait()


def test_a_failing_stage_stops_the_stages_beside_it(docker: Docker, tmp_path: Path) -> None:
    write(tmp_path, {"Dockerfile": """\
FROM busybox AS slow
RUN echo slow-started && sleep 600
FROM busybox AS broken
RUN sleep 1 && exit 4
FROM busybox
COPY --from=slow /etc/hostname /a
COPY --from=broken /etc/hostname /b
"""})
    res = docker("build", "--force-rm", str(tmp_path), check=False, timeout=120)
    assert res.returncode == 4
    assert "The command '/bin/sh -c sleep 1 && exit 4' returned a non-zero code: 4" in res.stderr
    assert docker("ps", "-aq", "--filter", "label=coracle.build").stdout.strip() == ""


def test_dockerfile_outside_the_context_and_default_builder_choice(daemon: Daemon, tmp_path: Path) -> None:
    """Without DOCKER_BUILDKIT the CLI picks the classic protocol itself; -f outside the context makes it
    append the Dockerfile to the context tar (without the final padding, which Docker accepts)."""
    context = write(tmp_path / "ctx", {"data.txt": "data\n"})
    dockerfile = tmp_path / "elsewhere.Dockerfile"
    dockerfile.write_text("FROM busybox\nCOPY data.txt /data.txt\n")
    tag = unique("outside")
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_BUILDKIT"}
    res = subprocess.run(["docker", "build", "-f", str(dockerfile), "-t", tag, str(context)], capture_output=True,
                         text=True, env={**env, "DOCKER_HOST": daemon.host}, timeout=120)
    assert res.returncode == 0, res.stderr
    assert daemon.docker("run", "--rm", tag, "cat", "/data.txt").stdout == "data\n"


def test_run_network_and_resource_options(docker: Docker, tmp_path: Path) -> None:
    write(tmp_path, {"Dockerfile": "FROM busybox\nRUN grep -w registry.example /etc/hosts && ip -o link | wc -l && "
                                   "cat /sys/fs/cgroup/memory/memory.limit_in_bytes\n"})
    out = docker("build", "--add-host", "registry.example:10.1.2.3", "--network", "none", "--memory", "64m",
                 str(tmp_path)).stdout
    assert "10.1.2.3" in out and "registry.example" in out
    assert "\n1\n" in out  # --network none: loopback only
    assert "\n67108864\n" in out  # the RUN container's cgroup has the build's memory limit


def test_cache_from_an_image_without_cache_records(docker: Docker, tmp_path: Path) -> None:
    """An image whose steps this daemon has no cache records for (pulled, loaded, or pruned away)
    serves as cache when named with --cache-from: its history and layers continue the build's."""
    tag = unique("cachefrom")
    write(tmp_path, {"Dockerfile": "FROM busybox\nENV MODE=prod\nRUN echo built > /built\nCOPY app.txt /app.txt\n"
                                   "CMD [\"cat\", \"/app.txt\"]\n", "app.txt": "app\n"})
    docker("build", "-t", tag, str(tmp_path))
    image_id = inspect(docker, tag)["Id"]
    docker("builder", "prune", "-f")
    out = docker("build", "--cache-from", tag, "-t", tag, str(tmp_path)).stdout
    assert out.count("Using cache") == 4 and "Running in" not in out
    assert inspect(docker, tag)["Id"] == image_id
    (tmp_path / "app.txt").write_text("changed\n")
    out = docker("build", "--cache-from", tag, "-t", tag, str(tmp_path)).stdout
    assert out.count("Using cache") == 2  # ENV and RUN; the COPY of a changed file is not in the source


def test_the_same_layer_twice_and_runs_that_change_nothing(docker: Docker, tmp_path: Path) -> None:
    """COPY of the same file before and after its removal puts one layer in the image twice (overlayfs
    takes a directory once per mount: the second gets its own copy); a RUN that changes nothing adds
    no layer (an empty_layer history entry, as BuildKit)."""
    tag = unique("twice")
    write(tmp_path, {"Dockerfile": "FROM busybox\nCOPY a.txt /x\nRUN rm /x\nCOPY a.txt /x\nRUN true\nRUN echo\n",
                     "a.txt": "same\n"})
    docker("build", "-t", tag, str(tmp_path))
    layers = inspect(docker, tag)["RootFS"]["Layers"]
    assert len(layers) == 4 and layers[1] == layers[3]
    assert docker("run", "--rm", tag, "cat", "/x").stdout == "same\n"
    sizes = docker("history", "--format", "{{.Size}}", tag).stdout.split()
    assert sizes[:2] == ["0B", "0B"]
