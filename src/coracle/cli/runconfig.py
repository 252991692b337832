"""`run`/`create` flags and their translation into the POST /containers/create body.

One function, `create_body`, turns parsed flags into exactly the JSON docker's
CLI would send, so the daemon sees the same request from either client.
"""

from __future__ import annotations

import os

from coracle.cli.flags import REMAINDER
from coracle.cli.units import parse_bytes, parse_duration

TYPE_CHECKING = False  # typing is for checkers only: it costs start-up time
if TYPE_CHECKING:
    import argparse

    from coracle.cli.flags import Flags
    from typing import Any
    from collections.abc import Callable


class UsageError(Exception):
    """Flags that cannot be turned into a request (docker exits 125 for these on run/create)."""


class FlagError(UsageError):
    """A flag the verb does not know or cannot parse: docker's plain message (no "docker: " before it)."""


def add_resource_flags(a: Any) -> None:
    """The cgroup limit flags, shared by run/create and update."""
    a("-m", "--memory", help="memory limit")
    a("--memory-swap", help="swap limit equal to memory plus swap: '-1' to enable unlimited swap")
    a("--memory-reservation", help="memory soft limit")
    a("--cpus", help="number of CPUs")
    a("-c", "--cpu-shares", type=int, help="CPU shares (relative weight)")
    a("--cpu-quota", type=int, help="limit CPU CFS (Completely Fair Scheduler) quota")
    a("--cpu-period", type=int, help="limit CPU CFS (Completely Fair Scheduler) period")
    a("--cpuset-cpus", help="CPUs in which to allow execution (0-3, 0,1)")
    a("--cpuset-mems", help="MEMs in which to allow execution (0-3, 0,1)")
    a("--pids-limit", type=int, help="tune container pids limit (set -1 for unlimited)")
    a("--blkio-weight", type=int, help="block IO (relative weight), between 10 and 1000, or 0 to disable")


def add_container_flags(p: Flags) -> None:
    """The flags shared by `run` and `create` (docker's names and short forms; `-h` is --hostname)."""
    a = p.add_argument
    a("--help", action="help", help="print usage")
    a("-i", "--interactive", action="store_true", help="keep STDIN open even if not attached")
    a("-a", "--attach", action="append", default=[], help="attach to STDIN, STDOUT or STDERR")
    a("--cidfile", help="write the container ID to the file")
    a("-t", "--tty", action="store_true", help="allocate a pseudo-TTY")
    a("--name", help="assign a name to the container")
    a("-e", "--env", action="append", default=[], help="set environment variables")
    a("--env-file", action="append", default=[], help="read in a file of environment variables")
    a("-w", "--workdir", help="working directory inside the container")
    a("-u", "--user", help="username or UID (format: <name|uid>[:<group|gid>])")
    a("-h", "--hostname", help="container host name")
    a("--domainname", help="container NIS domain name")
    a("--entrypoint", help="overwrite the default ENTRYPOINT of the image")
    a("-v", "--volume", action="append", default=[], help="bind mount a volume (HOST:CTR[:ro])")
    a("--tmpfs", action="append", default=[], help="mount a tmpfs directory (PATH[:OPTIONS])")
    a("--mount", action="append", default=[], help="attach a filesystem mount to the container")
    a("--volumes-from", action="append", default=[], help="mount volumes from the specified container(s)")
    a("--read-only", action="store_true", help="mount the container's root filesystem as read only")
    a("-l", "--label", action="append", default=[], help="set meta data on a container")
    a("--restart", default="no", help="restart policy (no, always, unless-stopped, on-failure[:max-retries])")
    a("--rm", action="store_true", help="automatically remove the container when it exits")
    a("--network", "--net", dest="network", help="connect a container to a network")
    a("--ip", help="IPv4 address (e.g., 172.30.100.104)")
    a("--ip6", help="IPv6 address")
    a("--network-alias", "--net-alias", dest="network_alias", action="append", default=[],
      help="add network-scoped alias for the container")
    a("--mac-address", help="container MAC address (e.g., 92:d0:c6:0a:29:33)")
    a("-p", "--publish", action="append", default=[], help="publish a container's port(s) to the host")
    a("-P", "--publish-all", action="store_true", help="publish all exposed ports to random ports")
    a("--expose", action="append", default=[], help="expose a port or a range of ports")
    a("--dns", action="append", default=[], help="set custom DNS servers")
    a("--dns-search", action="append", default=[], help="set custom DNS search domains")
    a("--dns-option", "--dns-opt", dest="dns_option", action="append", default=[], help="set DNS options")
    a("--add-host", action="append", default=[], help="add a custom host-to-IP mapping (host:ip)")
    a("--link", action="append", default=[], help="add link to another container (name[:alias])")
    add_resource_flags(a)
    a("--oom-kill-disable", action="store_true", help="disable OOM Killer")
    a("--oom-score-adj", type=_go_int("--oom-score-adj"), default=0, help="tune host's OOM preferences (-1000 to 1000)")
    a("--cgroup-parent", help="optional parent cgroup for the container")
    a("--init", action="store_true", default=None, help="run an init inside the container")
    a("--cap-add", action="append", default=[], help="add Linux capabilities")
    a("--cap-drop", action="append", default=[], help="drop Linux capabilities")
    a("--privileged", action="store_true", help="give extended privileges to this container")
    a("--security-opt", action="append", default=[], help="security options")
    a("--device", action="append", default=[], help="add a host device to the container")
    a("--group-add", action="append", default=[], help="add additional groups to join")
    a("--ulimit", action="append", default=[], help="ulimit options (name=soft[:hard])")
    a("--sysctl", action="append", default=[], help="sysctl options")
    a("--health-cmd", help="command to run to check health")
    a("--health-interval", help="time between running the check (ms|s|m|h)")
    a("--health-timeout", help="maximum time to allow one check to run (ms|s|m|h)")
    a("--health-start-period", help="start period for the container to initialize (ms|s|m|h)")
    a("--health-start-interval", help="time between running the check during the start period (ms|s|m|h)")
    a("--health-retries", type=int, default=0, help="consecutive failures needed to report unhealthy")
    a("--no-healthcheck", action="store_true", help="disable any container-specified HEALTHCHECK")
    a("--stop-signal", help="signal to stop the container")
    a("--stop-timeout", type=int, help="timeout (in seconds) to stop a container")
    a("--log-driver", help="logging driver for the container")
    a("--log-opt", action="append", default=[], help="log driver options")
    a("--userns", help="user namespace to use")
    a("--pid", help="PID namespace to use")
    a("--ipc", help="IPC mode to use")
    a("--uts", help="UTS namespace to use")
    a("--shm-size", help="size of /dev/shm")
    a("--detach-keys", help="override the key sequence for detaching a container")
    a("--pull", default="missing", choices=["always", "missing", "never"], help="pull image before running")
    a("--platform", help="set platform if server is multi-platform capable")
    a("image", help="the image to run")
    a("command", nargs=REMAINDER, help="the command and its arguments")


# ----- small parsers (each raises UsageError in docker's words) ---------------

def _flag_error(value: str, flag: str, why: str) -> UsageError:
    return UsageError(f'invalid argument "{value}" for "{flag}" flag: {why}')


_MOUNT_KEYS = {"src": "source", "source": "source", "dst": "target", "destination": "target", "target": "target",
               "ro": "readonly", "readonly": "readonly"}


def parse_mount(spec: str) -> dict[str, Any]:
    """`--mount type=volume,source=v,target=/d,readonly,volume-nocopy,...` -> a HostConfig.Mounts entry."""
    mount: dict[str, Any] = {"Type": "volume"}
    for field in filter(None, spec.split(",")):
        key, sep, value = field.partition("=")
        key = _MOUNT_KEYS.get(key.lower(), key.lower())
        if key in ("readonly", "volume-nocopy") and not sep:
            value = "true"
        elif not sep:
            raise _flag_error(spec, "--mount", f"invalid field '{field}' must be a key=value pair")
        if key in ("readonly", "volume-nocopy") and value.lower() not in ("1", "true", "0", "false"):
            raise _flag_error(spec, "--mount", f"invalid value for {key}: {value}")
        on = value.lower() in ("1", "true")
        if key == "type":
            mount["Type"] = value
        elif key == "source":
            mount["Source"] = value
        elif key == "target":
            mount["Target"] = value
        elif key == "readonly":
            mount["ReadOnly"] = on
        elif key == "bind-propagation":
            mount.setdefault("BindOptions", {})["Propagation"] = value
        elif key == "volume-nocopy":
            mount.setdefault("VolumeOptions", {})["NoCopy"] = on
        elif key == "volume-label":
            mount.setdefault("VolumeOptions", {}).setdefault("Labels", {}).update(
                _key_values([value], "--mount volume-label"))
        elif key == "volume-driver":
            mount.setdefault("VolumeOptions", {}).setdefault("DriverConfig", {})["Name"] = value
        elif key == "volume-opt":
            mount.setdefault("VolumeOptions", {}).setdefault("DriverConfig", {}).setdefault("Options", {}).update(
                _key_values([value], "--mount volume-opt"))
        elif key == "tmpfs-size":
            mount.setdefault("TmpfsOptions", {})["SizeBytes"] = _bytes(value, "--mount tmpfs-size")
        elif key == "tmpfs-mode":
            try:
                mount.setdefault("TmpfsOptions", {})["Mode"] = int(value, 8)
            except ValueError:
                raise _flag_error(spec, "--mount", f"invalid value for tmpfs-mode: {value}") from None
        else:
            raise _flag_error(spec, "--mount", f"unexpected key '{key}' in '{field}'")
    if not mount.get("Target"):
        raise _flag_error(spec, "--mount", "target is required")
    for prefix, key, kind in (("volume", "VolumeOptions", "volume"), ("bind", "BindOptions", "bind"),
                              ("tmpfs", "TmpfsOptions", "tmpfs")):
        if key in mount and mount["Type"] != kind:
            raise _flag_error(spec, "--mount", f"cannot mix '{prefix}-*' options with mount type '{mount['Type']}'")
    return mount


def _go_int(flag: str) -> Callable[[str], int]:
    """An integer flag that refuses other text in docker's words."""
    def parse(value: str) -> int:
        try:
            return int(value)
        except ValueError:
            raise _flag_error(value, flag, f'strconv.ParseInt: parsing "{value}": invalid syntax') from None
    return parse


def _attach_streams(values: list[str]) -> set[str]:
    """`-a stdin -a STDERR` -> {"stdin", "stderr"}; anything else refused as docker refuses it."""
    streams = {v.lower() for v in values}
    for value in values:
        if value.lower() not in ("stdin", "stdout", "stderr"):
            raise _flag_error(value, "-a, --attach", "valid streams are STDIN, STDOUT and STDERR")
    return streams


def _bytes(value: str | None, flag: str) -> int:
    if value is None:
        return 0
    if value.strip() == "-1":
        return -1
    try:
        return parse_bytes(value)
    except ValueError as exc:
        raise _flag_error(value, flag, str(exc)) from None


def _key_values(items: list[str], flag: str, allow_bare: bool = True) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key or (not sep and not allow_bare):
            raise _flag_error(item, flag, "must be formatted as key=value")
        out[key] = value
    return out


def env_entries(items: list[str], files: list[str]) -> list[str]:
    """`-e K=V`, `-e K` (taken from our environment if set) and --env-file lines, in docker's order."""
    entries: list[str] = []
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError as exc:
            raise UsageError(f"open {path}: {exc.strerror.lower() if exc.strerror else exc}") from None
        entries += [line.lstrip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    entries += items
    out = []
    for item in entries:
        name, sep, _ = item.partition("=")
        if not name:
            raise UsageError(f"invalid environment variable: {item}")
        if not sep and name in os.environ:
            item = f"{name}={os.environ[name]}"
        out.append(item)
    return out


def _port_range(text: str, flag: str, value: str) -> list[int]:
    import re  # imported where used: it costs every command start-up time

    m = re.fullmatch(r"(\d+)(?:-(\d+))?", text)
    if not m:
        raise _flag_error(value, flag, f"invalid containerPort: {text}" if flag == "-p" else f"invalid port {text}")
    lo = int(m.group(1))
    hi = int(m.group(2) or lo)
    if not 0 < lo <= hi <= 65535:
        raise _flag_error(value, flag, f"invalid port range: {text}")
    return list(range(lo, hi + 1))


def parse_publish(specs: list[str]) -> tuple[dict[str, dict], dict[str, list[dict[str, str]]]]:
    """`-p [ip:][hostPort:]containerPort[/proto]` -> (ExposedPorts, PortBindings)."""
    if specs:
        import re  # imported where used: it costs every command start-up time

    exposed: dict[str, dict] = {}
    bindings: dict[str, list[dict[str, str]]] = {}
    for spec in specs:
        rest, _, proto = spec.partition("/")
        proto = proto or "tcp"
        if proto not in ("tcp", "udp", "sctp"):
            raise _flag_error(spec, "-p, --publish", f"invalid proto: {proto}")
        ip = ""
        m = re.match(r"^\[([0-9a-fA-F:.]+)\]:(.*)$", rest)  # [::1]:8080:80
        if m:
            ip, rest = m.group(1), m.group(2)
            parts = rest.split(":")
            host, container = (parts[0], parts[1]) if len(parts) == 2 else ("", parts[0])
        else:
            parts = rest.split(":")
            if len(parts) == 1:
                host, container = "", parts[0]
            elif len(parts) == 2:
                host, container = parts
            elif len(parts) == 3:
                ip, host, container = parts
            else:
                raise _flag_error(spec, "-p, --publish",
                                  f"invalid publish opts format (should be name=value but got '{spec}')")
        cports = _port_range(container, "-p", spec)
        hports = _port_range(host, "-p", spec) if host else []
        if hports and len(hports) != len(cports) and len(hports) != 1 and len(cports) != 1:
            raise _flag_error(spec, "-p, --publish",
                              f"invalid ranges specified for container and host Ports: {container} and {host}")
        for i, cport in enumerate(cports):
            key = f"{cport}/{proto}"
            exposed[key] = {}
            if len(hports) == len(cports):
                hport = str(hports[i])
            elif hports and len(cports) == 1:
                hport = host  # a host range for one container port: the daemon picks within it
            else:
                hport = ""
            bindings.setdefault(key, []).append({"HostIp": ip, "HostPort": hport})
    return exposed, bindings


def _restart(value: str) -> dict[str, Any]:
    name, _, count = value.partition(":")
    if name not in ("no", "always", "unless-stopped", "on-failure"):
        raise UsageError(f"invalid restart policy format: unknown policy '{name}'")
    if count and name != "on-failure":
        raise UsageError("invalid restart policy format: maximum retry count can only be used with 'on-failure'")
    if count and not count.isdigit():
        raise UsageError("invalid restart policy format: maximum retry count must be an integer")
    return {"Name": name, "MaximumRetryCount": int(count or 0)}


def _device(spec: str) -> dict[str, str]:
    import re  # imported where used: it costs every command start-up time

    parts = spec.split(":")
    host = parts[0]
    ctr, perms = host, "rwm"
    if len(parts) == 2:
        if re.fullmatch(r"[rwm]+", parts[1]):
            perms = parts[1]
        else:
            ctr = parts[1]
    elif len(parts) == 3:
        ctr, perms = parts[1], parts[2]
    elif len(parts) > 3:
        raise UsageError(f"invalid device specification: {spec}")
    return {"PathOnHost": host, "PathInContainer": ctr, "CgroupPermissions": perms}


def _ulimit(spec: str) -> dict[str, Any]:
    name, sep, limits = spec.partition("=")
    soft, _, hard = limits.partition(":")
    try:
        if not sep:
            raise ValueError
        return {"Name": name, "Soft": int(soft), "Hard": int(hard or soft)}
    except ValueError:
        raise _flag_error(spec, "--ulimit", f"invalid ulimit argument: {spec}") from None


def _healthcheck(args: argparse.Namespace) -> dict[str, Any] | None:
    """--health-* and --no-healthcheck -> Config.Healthcheck, with docker's checks and messages."""
    durations = {"Interval": ("--health-interval", args.health_interval),
                 "Timeout": ("--health-timeout", args.health_timeout),
                 "StartPeriod": ("--health-start-period", args.health_start_period),
                 "StartInterval": ("--health-start-interval", args.health_start_interval)}
    given = args.health_cmd is not None or args.health_retries or any(v is not None for _, v in durations.values())
    if args.no_healthcheck:
        if given:
            raise UsageError("--no-healthcheck conflicts with --health-* options")
        return {"Test": ["NONE"]}
    if not given:
        return None
    check: dict[str, Any] = {"Test": ["CMD-SHELL", args.health_cmd] if args.health_cmd else None}
    for key, (flag, text) in durations.items():
        try:
            seconds = parse_duration(text) if text is not None else 0.0
        except ValueError:
            raise _flag_error(text or "", flag, "invalid duration") from None
        if seconds < 0:
            raise UsageError(f"{flag} cannot be negative")
        check[key] = int(seconds * 1e9)
    if args.health_retries < 0:
        raise UsageError("--health-retries cannot be negative")
    check["Retries"] = args.health_retries
    return check


def _cpus(value: str) -> int:
    try:
        cpus = float(value)
    except ValueError:
        raise _flag_error(value, "--cpus", "failed to parse " + repr(value) + " as a rational number") from None
    return int(round(cpus * 1e9))


def _extra_host(spec: str) -> str:
    host, sep, ip = spec.partition("=") if "=" in spec else spec.partition(":")
    if not sep or not host or not ip:
        raise _flag_error(spec, "--add-host", f"bad format for add-host: \"{spec}\"")
    return f"{host}:{ip}"


# ----- the body ---------------------------------------------------------------

def create_body(args: argparse.Namespace, *, detach: bool = True,
                console: tuple[int, int] | None = None) -> dict[str, Any]:
    """Parsed run/create flags -> the POST /containers/create JSON, as docker's CLI builds it."""
    if args.rm and args.restart not in (None, "", "no"):
        raise UsageError("Conflicting options: --restart and --rm")
    exposed, bindings = parse_publish(args.publish)
    for spec in args.expose:
        port, _, proto = spec.partition("/")
        for p in _port_range(port, "--expose", spec):
            exposed[f"{p}/{proto or 'tcp'}"] = {}
    volumes: dict[str, dict[str, Any]] = {v: {} for v in args.volume if ":" not in v}
    binds = [v for v in args.volume if ":" in v]
    for bind in binds:
        if not bind.split(":")[1]:
            raise UsageError(f"invalid volume specification: '{bind}'")
    tmpfs = {}
    for spec in args.tmpfs:
        path, _, opts = spec.partition(":")
        tmpfs[path] = opts
    # docker attaches stdout and stderr unless -a picks streams; -i adds stdin; a detached run attaches none
    streams = _attach_streams(args.attach)
    attach_in = not detach and (args.interactive or "stdin" in streams)
    config: dict[str, Any] = {
        "Hostname": args.hostname or "",
        "Domainname": args.domainname or "",
        "User": args.user or "",
        "AttachStdin": attach_in,
        "AttachStdout": not detach and (not streams or "stdout" in streams),
        "AttachStderr": not detach and (not streams or "stderr" in streams),
        "Tty": args.tty,
        "OpenStdin": args.interactive,
        "StdinOnce": attach_in and args.interactive,
        "Env": env_entries(args.env, args.env_file),
        "Cmd": args.command or None,
        "Image": args.image,
        "WorkingDir": args.workdir or "",
        "Entrypoint": None if args.entrypoint is None else [args.entrypoint] if args.entrypoint else [""],
        "Labels": _key_values(args.label, "--label"),
    }
    if exposed:
        config["ExposedPorts"] = exposed
    if volumes:
        config["Volumes"] = volumes
    check = _healthcheck(args)
    if check:
        config["Healthcheck"] = check
    if args.stop_signal:
        config["StopSignal"] = args.stop_signal
    if args.stop_timeout is not None:
        config["StopTimeout"] = args.stop_timeout
    host: dict[str, Any] = {
        "Binds": binds or None,
        "NetworkMode": args.network or "default",
        "PortBindings": bindings,
        "RestartPolicy": _restart(args.restart or "no"),
        "AutoRemove": args.rm,
        "PublishAllPorts": args.publish_all,
        "ReadonlyRootfs": args.read_only,
        "Privileged": args.privileged,
        "CapAdd": args.cap_add or None,
        "CapDrop": args.cap_drop or None,
        "SecurityOpt": args.security_opt or None,
        "Dns": args.dns,
        "DnsSearch": args.dns_search,
        "DnsOptions": args.dns_option,
        "ExtraHosts": [_extra_host(h) for h in args.add_host] or None,
        "Links": args.link or None,
        "GroupAdd": args.group_add or None,
        "UsernsMode": args.userns or "",
        "PidMode": args.pid or "",
        "IpcMode": args.ipc or "",
        "UTSMode": args.uts or "",
        "CgroupParent": args.cgroup_parent or "",
        "Memory": _bytes(args.memory, "-m, --memory"),
        "MemorySwap": _bytes(args.memory_swap, "--memory-swap"),
        "MemoryReservation": _bytes(args.memory_reservation, "--memory-reservation"),
        "NanoCpus": _cpus(args.cpus) if args.cpus else 0,
        "CpuShares": args.cpu_shares or 0,
        "CpuQuota": args.cpu_quota or 0,
        "CpuPeriod": args.cpu_period or 0,
        "CpusetCpus": args.cpuset_cpus or "",
        "CpusetMems": args.cpuset_mems or "",
        "PidsLimit": args.pids_limit,
        "BlkioWeight": args.blkio_weight or 0,
        "OomKillDisable": args.oom_kill_disable,
        "OomScoreAdj": args.oom_score_adj,
        "Devices": [_device(d) for d in args.device],
        "Ulimits": [_ulimit(u) for u in args.ulimit],
        "Sysctls": _key_values(args.sysctl, "--sysctl", allow_bare=False),
        "Tmpfs": tmpfs,
        "Mounts": [parse_mount(m) for m in args.mount],
        "VolumesFrom": args.volumes_from or None,
        "LogConfig": {"Type": args.log_driver or "",
                      "Config": _key_values(args.log_opt, "--log-opt", allow_bare=False)},
        "Init": args.init,
    }
    if args.shm_size:
        host["ShmSize"] = _bytes(args.shm_size, "--shm-size")
    if console is not None:
        host["ConsoleSize"] = list(console)
    if args.cpus and (args.cpu_quota or args.cpu_period):
        raise UsageError("Conflicting options: Nano CPUs and CPU Period cannot both be set")
    config["HostConfig"] = host
    endpoint: dict[str, Any] = {}
    if args.ip or args.ip6:
        endpoint["IPAMConfig"] = {k: v for k, v in (("IPv4Address", args.ip), ("IPv6Address", args.ip6)) if v}
    if args.network_alias:
        endpoint["Aliases"] = args.network_alias
    if args.mac_address:
        endpoint["MacAddress"] = args.mac_address
    if endpoint:
        network = args.network or "default"
        config["NetworkingConfig"] = {"EndpointsConfig": {network: endpoint}}
    return config
