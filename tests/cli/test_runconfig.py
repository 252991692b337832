"""docker-style flags -> the POST /containers/create body docker's CLI would send."""

from __future__ import annotations

from typing import Any

import pytest

from coracle.cli.commands import parser
from coracle.cli.commands.containers import _image_ref, detach_sequence, start_error_status
from coracle.cli.runconfig import UsageError, add_container_flags, create_body, parse_publish


def body(*argv: str, detach: bool = True, console: tuple[int, int] | None = None) -> dict[str, Any]:
    p = parser("run", "[OPTIONS] IMAGE [COMMAND] [ARG...]", help_flag=False)
    p.add_argument("-d", "--detach", action="store_true")
    add_container_flags(p)
    return create_body(p.parse_args(list(argv)), detach=detach, console=console)


def test_the_classic_run_line() -> None:
    b = body("-m", "64m", "--cpus", "1.5", "-p", "8080:80", "-v", "/a:/b:ro", "busybox", "sh")
    host = b["HostConfig"]
    assert b["Image"] == "busybox" and b["Cmd"] == ["sh"]
    assert host["Memory"] == 67108864
    assert host["NanoCpus"] == 1500000000
    assert host["PortBindings"] == {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}
    assert b["ExposedPorts"] == {"80/tcp": {}}
    assert host["Binds"] == ["/a:/b:ro"]
    assert host["NetworkMode"] == "default"
    assert host["RestartPolicy"] == {"Name": "no", "MaximumRetryCount": 0}
    assert b["Entrypoint"] is None and b["Tty"] is False and b["OpenStdin"] is False


def test_command_keeps_its_own_flags() -> None:
    b = body("--rm", "busybox", "sh", "-c", "echo -n hi; ls -l")
    assert b["Cmd"] == ["sh", "-c", "echo -n hi; ls -l"]
    assert b["HostConfig"]["AutoRemove"] is True


def test_attached_interactive_tty() -> None:
    b = body("-it", "busybox", detach=False, console=(24, 80))
    assert (b["AttachStdin"], b["AttachStdout"], b["AttachStderr"]) == (True, True, True)
    assert b["OpenStdin"] and b["StdinOnce"] and b["Tty"]
    assert b["HostConfig"]["ConsoleSize"] == [24, 80]
    detached = body("-i", "busybox", detach=True)
    assert detached["OpenStdin"] and not detached["AttachStdin"] and not detached["StdinOnce"]


def test_identity_env_and_labels(tmp_path: Any, monkeypatch: Any) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("# comment\n\nFROM_FILE=1\nPASSED\n")
    monkeypatch.setenv("PASSED", "through")
    monkeypatch.delenv("UNSET_VAR", raising=False)
    b = body("-e", "A=1", "-e", "UNSET_VAR", "--env-file", str(env_file), "-w", "/srv", "-u", "1000:1000",
             "-h", "box", "--entrypoint", "/bin/sh", "-l", "app=shop", "--label", "flag", "busybox")
    assert b["Env"] == ["FROM_FILE=1", "PASSED=through", "A=1", "UNSET_VAR"]
    assert (b["WorkingDir"], b["User"], b["Hostname"]) == ("/srv", "1000:1000", "box")
    assert b["Entrypoint"] == ["/bin/sh"]
    assert b["Labels"] == {"app": "shop", "flag": ""}
    assert body("--entrypoint", "", "busybox")["Entrypoint"] == [""]


def test_resources() -> None:
    host = body("--memory-swap", "-1", "--memory-reservation", "32m", "-c", "512", "--cpu-quota", "50000",
                "--cpu-period", "100000", "--cpuset-cpus", "0-1", "--cpuset-mems", "0", "--pids-limit", "64",
                "--blkio-weight", "300", "--oom-kill-disable", "--cgroup-parent", "mygroup",
                "--ulimit", "nofile=1024:2048", "--ulimit", "nproc=64", "--shm-size", "128m", "busybox")["HostConfig"]
    assert host["MemorySwap"] == -1 and host["MemoryReservation"] == 32 << 20
    assert (host["CpuShares"], host["CpuQuota"], host["CpuPeriod"]) == (512, 50000, 100000)
    assert (host["CpusetCpus"], host["CpusetMems"], host["PidsLimit"]) == ("0-1", "0", 64)
    assert host["BlkioWeight"] == 300 and host["OomKillDisable"] is True and host["CgroupParent"] == "mygroup"
    assert host["Ulimits"] == [{"Name": "nofile", "Soft": 1024, "Hard": 2048},
                               {"Name": "nproc", "Soft": 64, "Hard": 64}]
    assert host["ShmSize"] == 128 << 20


def test_security_devices_and_namespaces() -> None:
    host = body("--cap-add", "NET_ADMIN", "--cap-drop", "ALL", "--privileged", "--security-opt", "no-new-privileges",
                "--device", "/dev/fuse", "--device", "/dev/sda:/dev/xvda:r", "--group-add", "audio",
                "--sysctl", "net.ipv4.ip_forward=1", "--userns", "host", "--init", "--read-only",
                "--tmpfs", "/run:rw,size=64m", "--tmpfs", "/tmp", "busybox")["HostConfig"]
    assert host["CapAdd"] == ["NET_ADMIN"] and host["CapDrop"] == ["ALL"] and host["Privileged"] is True
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["Devices"] == [
        {"PathOnHost": "/dev/fuse", "PathInContainer": "/dev/fuse", "CgroupPermissions": "rwm"},
        {"PathOnHost": "/dev/sda", "PathInContainer": "/dev/xvda", "CgroupPermissions": "r"}]
    assert host["GroupAdd"] == ["audio"] and host["Sysctls"] == {"net.ipv4.ip_forward": "1"}
    assert host["UsernsMode"] == "host" and host["Init"] is True and host["ReadonlyRootfs"] is True
    assert host["Tmpfs"] == {"/run": "rw,size=64m", "/tmp": ""}
    assert body("busybox")["HostConfig"]["Init"] is None  # unset: the daemon's default applies


def test_networking() -> None:
    b = body("--network", "backend", "--ip", "10.1.0.9", "--network-alias", "db", "--mac-address", "02:42:ac:11:00:09",
             "--dns", "9.9.9.9", "--dns-search", "example.com", "--dns-option", "ndots:2",
             "--add-host", "db.local:10.0.0.5", "--add-host", "gw=10.0.0.1", "-P", "--expose", "9000-9001", "busybox")
    host = b["HostConfig"]
    assert host["NetworkMode"] == "backend"
    assert b["NetworkingConfig"] == {"EndpointsConfig": {"backend": {
        "IPAMConfig": {"IPv4Address": "10.1.0.9"}, "Aliases": ["db"], "MacAddress": "02:42:ac:11:00:09"}}}
    assert (host["Dns"], host["DnsSearch"], host["DnsOptions"]) == (["9.9.9.9"], ["example.com"], ["ndots:2"])
    assert host["ExtraHosts"] == ["db.local:10.0.0.5", "gw:10.0.0.1"]
    assert host["PublishAllPorts"] is True
    assert b["ExposedPorts"] == {"9000/tcp": {}, "9001/tcp": {}}


def test_restart_stop_and_logging() -> None:
    b = body("--restart", "on-failure:3", "--stop-signal", "SIGINT", "--stop-timeout", "5",
             "--log-opt", "max-size=1m", "--log-opt", "max-file=2", "busybox")
    assert b["HostConfig"]["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert b["StopSignal"] == "SIGINT" and b["StopTimeout"] == 5
    assert b["HostConfig"]["LogConfig"] == {"Type": "", "Config": {"max-size": "1m", "max-file": "2"}}


@pytest.mark.parametrize("spec, bindings", [
    ("80", {"80/tcp": [{"HostIp": "", "HostPort": ""}]}),
    ("8080:80/udp", {"80/udp": [{"HostIp": "", "HostPort": "8080"}]}),
    ("127.0.0.1:8080:80", {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]}),
    ("127.0.0.1::80", {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}),
    ("[::1]:8080:80", {"80/tcp": [{"HostIp": "::1", "HostPort": "8080"}]}),
    ("8000-8001:80-81", {"80/tcp": [{"HostIp": "", "HostPort": "8000"}],
                         "81/tcp": [{"HostIp": "", "HostPort": "8001"}]}),
    ("8000-8010:80", {"80/tcp": [{"HostIp": "", "HostPort": "8000-8010"}]}),
])
def test_publish_forms(spec: str, bindings: dict[str, Any]) -> None:
    exposed, got = parse_publish([spec])
    assert got == bindings and set(exposed) == set(bindings)


@pytest.mark.parametrize("argv, message", [
    (["-m", "64x", "busybox"], 'invalid argument "64x" for "-m, --memory" flag'),
    (["--cpus", "lots", "busybox"], 'for "--cpus" flag'),
    (["-p", "99999:80", "busybox"], "invalid port range"),
    (["-p", "80/icmp", "busybox"], "invalid proto: icmp"),
    (["--restart", "sometimes", "busybox"], "unknown policy 'sometimes'"),
    (["--restart", "always:3", "busybox"], "only be used with 'on-failure'"),
    (["--rm", "--restart", "always", "busybox"], "Conflicting options: --restart and --rm"),
    (["--ulimit", "nofile", "busybox"], "invalid ulimit argument"),
    (["--sysctl", "novalue", "busybox"], "must be formatted as key=value"),
    (["--add-host", "nohost", "busybox"], "bad format for add-host"),
    (["--cpus", "1", "--cpu-quota", "1000", "busybox"], "Nano CPUs and CPU Period cannot both be set"),
])
def test_bad_flags_say_what_is_wrong(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError) as exc:
        body(*argv)
    assert message in str(exc.value)


def test_unknown_flag_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unrecognized arguments|unknown flag"):
        body("--frobnicate", "busybox")


def test_helpers() -> None:
    assert _image_ref("busybox") == ("busybox", "latest")
    assert _image_ref("localhost:5000/app:1.2") == ("localhost:5000/app", "1.2")
    assert _image_ref("localhost:5000/app") == ("localhost:5000/app", "latest")
    assert _image_ref("app@sha256:abc") == ("app@sha256:abc", "")
    assert detach_sequence(None) == b"\x10\x11"
    assert detach_sequence("ctrl-a,x") == b"\x01x"
    with pytest.raises(UsageError):
        detach_sequence("ctrl-foo")
    assert start_error_status('exec: "nope": executable file not found in $PATH') == 127
    assert start_error_status('exec: "/etc": permission denied') == 126
    assert start_error_status("cgroup setup failed") == 125
