"""The `coracle` command against a fake Engine API: what a user sees and the exit status they get."""

from __future__ import annotations

import json
import re

from fakeengine import FakeEngine, coracle


def test_ps_table_like_docker(engine: FakeEngine) -> None:
    res = coracle(engine.host, "ps")
    assert res.returncode == 0
    lines = res.stdout.splitlines()
    assert re.match(r"CONTAINER ID {3}IMAGE {5}COMMAND {6,}CREATED {6,}STATUS {6,}PORTS {6,}NAMES$", lines[0])
    assert len(lines) == 2  # only the running one
    web = next(c for c in engine.containers.values() if c["Name"] == "/web")
    assert lines[1].startswith(web["Id"][:12] + "   busybox   \"httpd -f\"")
    assert "About a minute ago" in lines[1] and "Up 30 seconds" in lines[1]
    assert "0.0.0.0:8080->80/tcp" in lines[1] and lines[1].endswith("web")
    # columns line up under their headers
    assert lines[1].index("Up 30") == lines[0].index("STATUS")


def test_ps_all_quiet_and_format(engine: FakeEngine) -> None:
    res = coracle(engine.host, "ps", "-aq")
    assert sorted(res.stdout.split()) == sorted(c["Id"][:12] for c in engine.containers.values())
    res = coracle(engine.host, "ps", "-a", "--format", "{{.Names}}|{{.State}}|{{.Label \"app\"}}")
    assert sorted(res.stdout.splitlines()) == ["old|exited|old", "web|running|web"]
    res = coracle(engine.host, "ps", "--format", "table {{.Names}}\\t{{.Status}}")
    assert res.stdout.splitlines() == ["NAMES     STATUS", "web       Up 30 seconds"]
    res = coracle(engine.host, "ps", "--format", "json")
    assert json.loads(res.stdout)["Names"] == "web"
    res = coracle(engine.host, "container", "ls", "--no-trunc", "-q")
    assert res.stdout.strip() in {c["Id"] for c in engine.containers.values()}


def test_inspect_with_template_and_json(engine: FakeEngine) -> None:
    res = coracle(engine.host, "inspect", "-f", "{{.State.Status}} {{.Config.Image}} {{json .Config.Cmd}}", "web")
    assert (res.returncode, res.stdout) == (0, 'running busybox ["httpd","-f"]\n')
    res = coracle(engine.host, "container", "inspect", "web", "old")
    assert [c["Name"] for c in json.loads(res.stdout)] == ["/web", "/old"]
    assert res.stdout.startswith("[\n    {\n        \"Id\"")  # docker's 4-space indent


def test_inspect_missing_object(engine: FakeEngine) -> None:
    res = coracle(engine.host, "inspect", "-f", "{{.Name}}", "web", "nope")
    assert res.returncode == 1
    assert res.stdout == "/web\n"
    assert res.stderr == "Error: No such object: nope\n"
    res = coracle(engine.host, "container", "inspect", "nope")
    assert res.stderr == "Error: No such container: nope\n" and res.stdout == "[]\n"


def test_run_detached_prints_full_id_and_sends_dockers_body(engine: FakeEngine) -> None:
    res = coracle(engine.host, "run", "-d", "--name", "api", "-m", "64m", "--cpus", "1.5", "-p", "8080:80",
                  "-v", "/a:/b:ro", "busybox", "sh", "-c", "sleep 100")
    assert res.returncode == 0, res.stderr
    assert re.fullmatch(r"[0-9a-f]{64}\n", res.stdout)
    cid = res.stdout.strip()
    assert engine.containers[cid]["State"]["Running"]
    sent = engine.created[-1]
    assert sent["name"] == "api"
    body = sent["body"]
    assert body["Cmd"] == ["sh", "-c", "sleep 100"]
    assert body["HostConfig"]["Memory"] == 64 << 20 and body["HostConfig"]["NanoCpus"] == 1_500_000_000
    assert body["HostConfig"]["PortBindings"] == {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}
    assert body["HostConfig"]["Binds"] == ["/a:/b:ro"]
    assert body["AttachStdout"] is False


def test_run_attached_demultiplexes_and_exits_with_the_containers_status(engine: FakeEngine) -> None:
    res = coracle(engine.host, "run", "busybox", "sh", "-c", "exit 3")
    assert res.returncode == 3
    assert res.stdout == "out:sh -c exit 3\n"
    assert res.stderr == "err\n"


def test_run_interactive_forwards_stdin_and_half_closes(engine: FakeEngine) -> None:
    res = coracle(engine.host, "run", "-i", "--rm", "busybox", "cat", stdin=b"hello from stdin\n")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "out:cat\nstdin:hello from stdin\n"  # output after our EOF still arrived
    body = engine.created[-1]["body"]
    assert body["OpenStdin"] and body["AttachStdin"] and body["StdinOnce"] and body["HostConfig"]["AutoRemove"]


def test_run_pulls_a_missing_image_then_retries(engine: FakeEngine) -> None:
    res = coracle(engine.host, "run", "-d", "alpine")
    assert res.returncode == 0, res.stderr
    assert engine.pulled == ["alpine:latest"]
    assert res.stderr.startswith("Unable to find image 'alpine:latest' locally\n")
    assert "Status: Downloaded newer image for alpine:latest" in res.stderr
    assert "Downloading" not in res.stderr  # byte progress is for terminals only


def test_run_errors_use_dockers_exit_statuses(engine: FakeEngine) -> None:
    res = coracle(engine.host, "run", "unobtainable")
    assert res.returncode == 125
    assert res.stderr.splitlines()[-1] == "coracle: Error response from daemon: pull access denied for unobtainable"
    res = coracle(engine.host, "run", "busybox", "nosuchcmd")
    assert res.returncode == 127
    assert "executable file not found" in res.stderr and res.stderr.startswith("coracle: Error response from daemon:")
    res = coracle(engine.host, "run", "--memory", "lots", "busybox")
    assert res.returncode == 125
    assert res.stderr == ('coracle: invalid argument "lots" for "-m, --memory" flag: invalid size: \'lots\'\n'
                          "See 'coracle run --help'.\n")


def test_daemon_errors_are_one_line(engine: FakeEngine) -> None:
    res = coracle(engine.host, "rm", "nope")
    assert (res.returncode, res.stderr) == (1, "Error response from daemon: No such container: nope\n")
    res = coracle(engine.host, "rm", "web")
    assert res.returncode == 1 and res.stderr.startswith("Error response from daemon: cannot remove container")
    res = coracle(engine.host, "rm", "-f", "web", "old")
    assert (res.returncode, res.stdout) == (0, "web\nold\n")
    assert not engine.containers


def test_exec_returns_the_commands_status(engine: FakeEngine) -> None:
    res = coracle(engine.host, "exec", "web", "sh", "-c", "exit 7")
    assert (res.returncode, res.stdout) == (7, "exec:sh -c exit 7\n")
    res = coracle(engine.host, "exec", "old", "true")
    assert res.returncode == 1 and "is not running" in res.stderr


def test_logs_keep_stdout_and_stderr_apart(engine: FakeEngine) -> None:
    res = coracle(engine.host, "logs", "web")
    assert (res.returncode, res.stdout, res.stderr) == (0, "line one\nline two\n", "problem\n")


def test_version_talks_to_the_daemon(engine: FakeEngine) -> None:
    res = coracle(engine.host, "version", "--format", "{{.Server.Version}} {{.Server.ApiVersion}}")
    assert (res.returncode, res.stdout) == (0, "27.0.0 1.47\n")


def test_no_daemon(tmp_path: object) -> None:
    res = coracle(f"unix://{tmp_path}/absent.sock", "ps")
    assert res.returncode == 1
    assert res.stderr == (f"Cannot connect to the coracle daemon at unix://{tmp_path}/absent.sock."
                          " Is coracled running?\n")
    res = coracle(f"unix://{tmp_path}/absent.sock", "-H", "unix:///nonexistent/x.sock", "ps")
    assert "unix:///nonexistent/x.sock" in res.stderr  # -H wins over the environment


def test_unknown_command_and_flag(engine: FakeEngine) -> None:
    res = coracle(engine.host, "frobnicate")
    assert res.returncode == 1 and "'frobnicate' is not a coracle command" in res.stderr
    res = coracle(engine.host, "ps", "--frobnicate")
    assert res.returncode == 125 and res.stderr.startswith("unknown flag: --frobnicate")  # docker: no prefix


def test_load_streams_a_big_file_chunked_and_save_writes_the_archive(engine: FakeEngine, tmp_path: object) -> None:
    archive = f"{tmp_path}/image.tar"
    with open(archive, "wb") as f:
        f.write(b"x" * (3 << 20))
    res = coracle(engine.host, "load", "-i", archive)
    assert (res.returncode, res.stdout) == (0, f"Loaded image: loaded:{3 << 20}\n")
    res = coracle(engine.host, "load", stdin=b"y" * 1000)
    assert res.stdout == "Loaded image: loaded:1000\n"
    out = f"{tmp_path}/saved.tar"
    res = coracle(engine.host, "save", "-o", out, "busybox", "alpine:3")
    assert res.returncode == 0
    with open(out, "rb") as f:
        assert f.read() == b"tar-of-busybox;tar-of-alpine:3;"


def test_run_without_a_daemon_is_125_like_docker(tmp_path: object) -> None:
    res = coracle(f"unix://{tmp_path}/absent.sock", "run", "busybox")
    assert res.returncode == 125
    assert res.stderr.startswith("coracle: Cannot connect to the coracle daemon at unix://")
