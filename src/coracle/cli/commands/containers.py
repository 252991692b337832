"""Container verbs: run, create, start/stop/kill/restart/rm, ps, logs, exec, attach, cp, stats ..."""

from __future__ import annotations

import _thread
import os
import sys
import time

from coracle.cli import wirejson
from coracle.cli.client import ApiError, Client, quote_name
from coracle.cli.flags import REMAINDER
from coracle.cli.commands import CommandError, each, filters, parser, save_stream
from coracle.cli.main import Cli
from coracle.cli.runconfig import UsageError, add_container_flags, create_body, env_entries

TYPE_CHECKING = False  # typing is for checkers only: it costs start-up time
if TYPE_CHECKING:
    from typing import Any

# The terminal plumbing (coracle.cli.streams, contextlib) is imported by the verbs that stream:
# `ps` and the other one-request verbs start without it.


def _path(cid: str, suffix: str = "") -> str:
    return f"/containers/{quote_name(cid)}{suffix}"


def start_error_status(message: str) -> int:
    """docker's exit status for a container that could not start: 127 not found, 126 cannot invoke, else 125."""
    if any(s in message for s in ("executable file not found", "no such file or directory",
                                  "system cannot find the file specified")):
        return 127
    if "permission denied" in message or "is a directory" in message:
        return 126
    return 125


def detach_sequence(keys: str | None) -> bytes:
    """`ctrl-p,ctrl-q` (docker's default) -> b"\\x10\\x11"."""
    out = b""
    for key in (keys or "ctrl-p,ctrl-q").split(","):
        key = key.strip()
        if key.startswith("ctrl-") and len(key) == 6:
            ch = key[5].lower()
            if "a" <= ch <= "z":
                out += bytes([ord(ch) - ord("a") + 1])
                continue
            special = {"@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31}
            if ch in special:
                out += bytes([special[ch]])
                continue
        if len(key) == 1:
            out += key.encode()
            continue
        raise UsageError(f"invalid detach keys ({keys}) provided")
    return out


# ----- create / run ---------------------------------------------------------------

def _parse_run(name: str, args: list[str], run: bool) -> Any:
    p = parser(name, "[OPTIONS] IMAGE [COMMAND] [ARG...]",
               "Create and run a new container from an image" if run else "Create a new container",
               help_flag=False)
    if run:
        p.add_argument("-d", "--detach", action="store_true", help="run container in background and print container ID")
        p.add_argument("--sig-proxy", default="true", help="proxy received signals to the process")
    add_container_flags(p)
    opts = p.parse_args(args)
    if opts.command and opts.command[0] == "--":
        opts.command = opts.command[1:]
    return opts


def _image_ref(image: str) -> tuple[str, str]:
    """(repository, tag) for pulling: `busybox` -> ("busybox", "latest"); digests kept whole."""
    if "@" in image:
        return image, ""
    slash, colon = image.rfind("/"), image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon + 1:]
    return image, "latest"


def _create(cli: Cli, opts: Any, body: dict[str, Any], out: Any, run: bool) -> dict[str, Any]:
    """POST /containers/create, honouring --cidfile as docker does: an existing file is refused (its
    container may still run), the file is made before the container and removed if creating fails,
    and holds the ID (without a newline) once the container exists."""
    if not opts.cidfile:
        return _create_or_pull(cli, opts, body, out)
    prefix, status = ("coracle: ", 125) if run else ("", 1)
    if os.path.lexists(opts.cidfile):
        raise CommandError(f"{prefix}container ID file found, make sure the other container isn't running or "
                           f"delete {opts.cidfile}", status)
    try:
        fd = os.open(opts.cidfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as exc:
        raise CommandError(f"{prefix}failed to create the container ID file: {exc}", status) from None
    with os.fdopen(fd, "w") as cidfile:
        try:
            created = _create_or_pull(cli, opts, body, out)
        except BaseException:
            os.unlink(opts.cidfile)
            raise
        cidfile.write(created["Id"])
    return created


def _create_or_pull(cli: Cli, opts: Any, body: dict[str, Any], out: Any) -> dict[str, Any]:
    """POST /containers/create; pull and retry once when the image is missing (unless --pull=never)."""
    repo, tag = _image_ref(opts.image)
    display = f"{repo}:{tag}" if tag else repo
    if opts.pull == "always":
        _pull(cli, repo, tag, out)
    try:
        return cli.client.post("/containers/create", {"name": opts.name}, body)
    except ApiError as exc:
        if exc.status != 404 or "image" not in exc.message.lower() or opts.pull == "never":
            raise
    cli.err(f"Unable to find image '{display}' locally")
    _pull(cli, repo, tag, out)
    return cli.client.post("/containers/create", {"name": opts.name}, body)


def _pull(cli: Cli, repo: str, tag: str, out: Any) -> None:
    from coracle.cli.commands.images import pull_image  # only a run that pulls pays for the image verbs

    pull_image(cli, repo, tag, out=out)


def _start_failed(cli: Cli, exc: ApiError) -> int:
    cli.err(f"coracle: Error response from daemon: {exc.message}")
    return start_error_status(exc.message)


def create(cli: Cli, name: str, args: list[str]) -> int:
    from coracle.cli.streams import terminal_size

    opts = _parse_run(name, args, run=False)
    body = create_body(opts, detach=False, console=terminal_size() if opts.tty else None)
    created = _create(cli, opts, body, sys.stderr, run=False)
    for warning in created.get("Warnings") or []:
        cli.err(f"WARNING: {warning}")
    cli.out(created["Id"] + "\n")
    return 0


def run(cli: Cli, name: str, args: list[str]) -> int:
    from coracle.cli.streams import stdin_is_tty, terminal_size

    opts = _parse_run(name, args, run=True)
    if opts.detach and opts.attach:
        raise CommandError("conflicting options: cannot specify both --attach and --detach", 1)
    if opts.interactive and opts.tty and not opts.detach and not stdin_is_tty():
        raise CommandError("the input device is not a TTY", 1)
    body = create_body(opts, detach=opts.detach, console=terminal_size() if opts.tty else None)
    created = _create(cli, opts, body, sys.stderr, run=True)
    for warning in created.get("Warnings") or []:
        cli.err(f"WARNING: {warning}")
    cid = created["Id"]
    if opts.detach:
        try:
            cli.client.post(_path(cid, "/start"))
        except ApiError as exc:
            return _start_failed(cli, exc)
        cli.out(cid + "\n")
        return 0
    return attach_and_start(cli, cid, tty=opts.tty, stdin=body["AttachStdin"], detach_keys=opts.detach_keys,
                            condition="removed" if opts.rm else "next-exit", run=True,
                            stdout=body["AttachStdout"], stderr=body["AttachStderr"])


class _Exit:
    """POST /wait sent (and acknowledged, see `registered`) before start, so even an instant exit is caught."""

    def __init__(self, host: str | None, cid: str, condition: str) -> None:
        self.client = Client(host)
        self.sock = self.client.send("POST", _path(cid, "/wait"), {"condition": condition})
        self.status: int | None = None
        self.done: Any = None  # a lock held until the answer is read (`_thread`: see coracle.cli.streams)

    def registered(self) -> None:
        """The daemon's answer head: the wait is in place (ApiError if it was refused)."""
        try:
            self.resp = self.client.answer(self.sock, "POST")
        except BaseException:
            self.sock.close()
            raise
        self.done = _thread.allocate_lock()
        self.done.acquire()
        _thread.start_new_thread(self._read, ())

    def abandon(self) -> None:
        self.sock.close()

    def _read(self) -> None:
        try:
            doc = wirejson.loads(self.resp.read() or b"{}")
            self.status = int(doc.get("StatusCode", 0))
        except (OSError, ValueError):
            self.status = None
        finally:
            self.resp.close()
            self.done.release()

    def result(self) -> int | None:
        if self.done is not None:
            with self.done:
                pass
        return self.status


def _hijacked_session(cli: Cli, sock: Any, multiplexed: bool, first: bytes, *, stdin: bool, tty: bool,
                      detach_keys: str | None) -> bool:
    """Pump stdin and output until the daemon ends the stream; True when the user detached."""
    from coracle.cli.streams import forward_stdin, pump_output

    detached: list[bool] = []
    keys = detach_sequence(detach_keys) if tty and stdin else b""
    if stdin:
        forward_stdin(sock, watch=keys, on_detach=lambda: detached.append(True))
    pump_output(sock, multiplexed, first)
    sock.close()
    return bool(detached)


def attach_and_start(cli: Cli, cid: str, *, tty: bool, stdin: bool, detach_keys: str | None, condition: str,
                     run: bool = False, stdout: bool = True, stderr: bool = True) -> int:
    """docker run (attached) / start -a: attach, register the wait, start, stream, return the exit status."""
    from coracle.cli.streams import follow_resizes, raw_terminal

    query = {"stream": True, "stdin": stdin, "stdout": stdout, "stderr": stderr, "detachKeys": detach_keys}
    pending = cli.client.send_upgrade(_path(cid, "/attach"), query)
    try:
        exit_ = _Exit(cli.host, cid, condition)  # sent beside the attach: both answers come in one round trip
    except BaseException:
        pending.close()
        raise
    try:
        sock, multiplexed, first = cli.client.upgraded(pending)
    except BaseException:
        exit_.abandon()
        raise
    try:
        exit_.registered()
    except BaseException:
        sock.close()
        raise
    try:
        cli.client.post(_path(cid, "/start"))
    except ApiError as exc:
        sock.close()
        if run:
            return _start_failed(cli, exc)
        raise
    def resize(h: int, w: int) -> None:
        cli.client.post(_path(cid, "/resize"), {"h": h, "w": w})

    with raw_terminal(0, tty and stdin), follow_resizes(resize, tty):
        detached = _hijacked_session(cli, sock, multiplexed, first, stdin=stdin, tty=tty, detach_keys=detach_keys)
    if detached:
        return 0
    status = exit_.result()
    return 0 if status is None else status


# ----- simple lifecycle verbs -------------------------------------------------------

def start(cli: Cli, name: str, args: list[str]) -> int:
    p = parser(name, "[OPTIONS] CONTAINER [CONTAINER...]", "Start one or more stopped containers")
    p.add_argument("-a", "--attach", action="store_true", help="attach STDOUT/STDERR and forward signals")
    p.add_argument("-i", "--interactive", action="store_true", help="attach container's STDIN")
    p.add_argument("--detach-keys", help="override the key sequence for detaching a container")
    p.add_argument("containers", nargs="+")
    opts = p.parse_args(args)
    if opts.attach or opts.interactive:
        if len(opts.containers) > 1:
            raise CommandError("Error: you cannot start and attach multiple containers at once", 1)
        info = cli.client.get(_path(opts.containers[0], "/json"))
        stdin = opts.interactive and info["Config"].get("OpenStdin", False)
        return attach_and_start(cli, info["Id"], tty=info["Config"].get("Tty", False), stdin=stdin,
                                detach_keys=opts.detach_keys, condition="next-exit")
    return each(cli, opts.containers, lambda c: cli.client.post(_path(c, "/start")), "failed to start containers")


def _stop_verb(cli: Cli, name: str, args: list[str], endpoint: str, summary: str) -> int:
    """stop and restart: the same flags, a different endpoint."""
    p = parser(name, "[OPTIONS] CONTAINER [CONTAINER...]", summary)
    p.add_argument("-t", "--time", "--timeout", dest="time", type=int, help="seconds to wait before killing")
    p.add_argument("-s", "--signal", help="signal to send to the container")
    p.add_argument("containers", nargs="+")
    opts = p.parse_args(args)
    query = {"t": opts.time, "signal": opts.signal}
    return each(cli, opts.containers, lambda c: cli.client.post(_path(c, endpoint), query))


def stop(cli: Cli, name: str, args: list[str]) -> int:
    return _stop_verb(cli, name, args, "/stop", "Stop one or more running containers")


def restart(cli: Cli, name: str, args: list[str]) -> int:
    return _stop_verb(cli, name, args, "/restart", "Restart one or more containers")


def kill(cli: Cli, name: str, args: list[str]) -> int:
    p = parser(name, "[OPTIONS] CONTAINER [CONTAINER...]", "Kill one or more running containers")
    p.add_argument("-s", "--signal", help="signal to send to the container")
    p.add_argument("containers", nargs="+")
    opts = p.parse_args(args)
    return each(cli, opts.containers, lambda c: cli.client.post(_path(c, "/kill"), {"signal": opts.signal}))


def rm(cli: Cli, name: str, args: list[str]) -> int:
    p = parser(name, "[OPTIONS] CONTAINER [CONTAINER...]", "Remove one or more containers")
    p.add_argument("-f", "--force", action="store_true", help="force the removal of a running container")
    p.add_argument("-v", "--volumes", action="store_true", help="remove anonymous volumes")
    p.add_argument("-l", "--link", action="store_true", help="remove the specified link")
    p.add_argument("containers", nargs="+")
    opts = p.parse_args(args)
    query = {"force": opts.force or None, "v": opts.volumes or None, "link": opts.link or None}
    return each(cli, opts.containers, lambda c: cli.client.call("DELETE", _path(c), query))


def pause(cli: Cli, name: str, args: list[str]) -> int:
    p = parser(name, "CONTAINER [CONTAINER...]", "Pause all processes within one or more containers")
    p.add_argument("containers", nargs="+")
    return each(cli, p.parse_args(args).containers, lambda c: cli.client.post(_path(c, "/pause")))


def unpause(cli: Cli, name: str, args: list[str]) -> int:
    p = parser(name, "CONTAINER [CONTAINER...]", "Unpause all processes within one or more containers")
    p.add_argument("containers", nargs="+")
    return each(cli, p.parse_args(args).containers, lambda c: cli.client.post(_path(c, "/unpause")))


def wait(cli: Cli, name: str, args: list[str]) -> int:
    p = parser(name, "CONTAINER [CONTAINER...]", "Block until one or more containers stop, then print their exit codes")
    p.add_argument("containers", nargs="+")
    failed = False
    for c in p.parse_args(args).containers:
        try:
            result = cli.client.post(_path(c, "/wait"))
        except ApiError as exc:
            cli.err(f"Error response from daemon: {exc.message}")
            failed = True
            continue
        cli.out(f"{result.get('StatusCode', 0)}\n")
    return 1 if failed else 0


def rename(cli: Cli, name: str, args: list[str]) -> int:
    p = parser(name, "CONTAINER NEW_NAME", "Rename a container")
    p.add_argument("container")
    p.add_argument("new_name")
    opts = p.parse_args(args)
    if not opts.new_name.strip():
        raise CommandError("Error: Neither old nor new names may be empty", 1)
    cli.client.post(_path(opts.container, "/rename"), {"name": opts.new_name})
    return 0


def prune(cli: Cli, name: str, args: list[str]) -> int:
    from coracle.cli.commands import confirm
    from coracle.cli.units import human_size

    p = parser(name, "[OPTIONS]", "Remove all stopped containers")
    p.add_argument("-f", "--force", action="store_true", help="do not prompt for confirmation")
    p.add_argument("--filter", action="append", default=[], help="provide filter values (e.g. 'until=<timestamp>')")
    opts = p.parse_args(args)
    if not opts.force and not confirm(
            "WARNING! This will remove all stopped containers.\nAre you sure you want to continue?"):
        return 0
    result = cli.client.post("/containers/prune", {"filters": filters(opts.filter)}) or {}
    deleted = result.get("ContainersDeleted") or []
    if deleted:
        cli.out("Deleted Containers:\n" + "".join(d + "\n" for d in deleted) + "\n")
    cli.out(f"Total reclaimed space: {human_size(result.get('SpaceReclaimed') or 0)}\n")
    return 0


# ----- listing and inspecting -------------------------------------------------------

def ps(cli: Cli, name: str, args: list[str]) -> int:
    from coracle.cli.formatting import PS_TABLE, ContainerRow, render_rows, short_id

    p = parser(name, "[OPTIONS]", "List containers")
    p.add_argument("-a", "--all", action="store_true", help="show all containers (default shows just running)")
    p.add_argument("-q", "--quiet", action="store_true", help="only display container IDs")
    p.add_argument("-n", "--last", type=int, default=-1, help="show n last created containers (includes all states)")
    p.add_argument("-l", "--latest", action="store_true",
                   help="show the latest created container (includes all states)")
    p.add_argument("-f", "--filter", action="append", default=[], help="filter output based on conditions provided")
    p.add_argument("--format", help="format output using a custom template ('table', 'json', or a Go template)")
    p.add_argument("--no-trunc", action="store_true", help="don't truncate output")
    p.add_argument("-s", "--size", action="store_true", help="display total file sizes")
    opts = p.parse_args(args)
    limit = 1 if opts.latest else opts.last
    query = {"all": opts.all or None, "limit": limit if limit > 0 else None, "size": opts.size or None,
             "filters": filters(opts.filter)}
    containers = cli.client.get("/containers/json", query) or []
    if opts.quiet:
        cli.out("".join(short_id(c["Id"], not opts.no_trunc) + "\n" for c in containers))
        return 0
    default = PS_TABLE + ("\t{{.Size}}" if opts.size else "")
    rows = [ContainerRow(c, trunc=not opts.no_trunc) for c in containers]
    cli.out(render_rows(rows, opts.format, default, ContainerRow))
    return 0


def inspect(cli: Cli, name: str, args: list[str]) -> int:
    from coracle.cli.commands.system import inspect_objects

    return inspect_objects(cli, name, args, kind="container")


def top(cli: Cli, name: str, args: list[str]) -> int:
    from coracle.cli.formatting import tabwrite

    p = parser(name, "CONTAINER [ps OPTIONS]", "Display the running processes of a container")
    p.add_argument("container")
    p.add_argument("ps_args", nargs=REMAINDER)
    opts = p.parse_args(args)
    result = cli.client.get(_path(opts.container, "/top"), {"ps_args": " ".join(opts.ps_args) or None})
    lines = ["\t".join(result.get("Titles") or [])]
    lines += ["\t".join(proc) for proc in result.get("Processes") or []]
    cli.out(tabwrite(lines, minwidth=20))
    return 0


def port(cli: Cli, name: str, args: list[str]) -> int:
    p = parser(name, "CONTAINER [PRIVATE_PORT[/PROTO]]", "List port mappings or a specific mapping for the container")
    p.add_argument("container")
    p.add_argument("port", nargs="?")
    opts = p.parse_args(args)
    info = cli.client.get(_path(opts.container, "/json"))
    ports = (info.get("NetworkSettings") or {}).get("Ports") or {}

    def host(binding: dict[str, str]) -> str:
        ip = binding.get("HostIp") or "0.0.0.0"
        return f"[{ip}]:{binding.get('HostPort')}" if ":" in ip else f"{ip}:{binding.get('HostPort')}"

    if opts.port:
        key = opts.port if "/" in opts.port else opts.port + "/tcp"
        bindings = ports.get(key) or []
        if not bindings:
            raise CommandError(f"Error: No public port '{key}' published for {opts.container}", 1)
        cli.out("".join(host(b) + "\n" for b in bindings))
        return 0
    lines = []
    for key in sorted(ports, key=lambda k: (int(k.split("/")[0]), k)):
        lines += [f"{key} -> {host(b)}" for b in ports[key] or []]
    cli.out("".join(line + "\n" for line in lines))
    return 0


def logs(cli: Cli, name: str, args: list[str]) -> int:
    from coracle.cli.streams import Demuxer, write_all
    from coracle.cli.units import api_time

    p = parser(name, "[OPTIONS] CONTAINER", "Fetch the logs of a container")
    p.add_argument("-f", "--follow", action="store_true", help="follow log output")
    p.add_argument("-n", "--tail", default="all", help="number of lines to show from the end of the logs")
    p.add_argument("--since", help="show logs since timestamp or relative (e.g. 42m)")
    p.add_argument("--until", help="show logs before a timestamp or relative (e.g. 42m)")
    p.add_argument("-t", "--timestamps", action="store_true", help="show timestamps")
    p.add_argument("--details", action="store_true", help="show extra details provided to logs")
    p.add_argument("container")
    opts = p.parse_args(args)
    info = cli.client.get(_path(opts.container, "/json"))
    try:
        since = api_time(opts.since) if opts.since else None
        until = api_time(opts.until) if opts.until else None
    except ValueError as exc:
        raise CommandError(f"Error: {exc}", 1) from None
    query = {"stdout": True, "stderr": True, "follow": opts.follow or None, "tail": opts.tail,
             "since": since, "until": until, "timestamps": opts.timestamps or None, "details": opts.details or None}
    resp = cli.client.request("GET", _path(info["Id"], "/logs"), query, stream=True)
    demux = None if info["Config"].get("Tty") else Demuxer()
    while chunk := resp.read1(65536):
        if demux is None:
            write_all(1, chunk)
        else:
            demux.feed(chunk)
    return 0


# ----- exec and attach ----------------------------------------------------------------

def exec_(cli: Cli, name: str, args: list[str]) -> int:
    from coracle.cli.streams import follow_resizes, raw_terminal, stdin_is_tty, terminal_size

    p = parser(name, "[OPTIONS] CONTAINER COMMAND [ARG...]", "Execute a command in a running container")
    p.add_argument("-d", "--detach", action="store_true", help="detached mode: run command in the background")
    p.add_argument("-i", "--interactive", action="store_true", help="keep STDIN open even if not attached")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-TTY")
    p.add_argument("-e", "--env", action="append", default=[], help="set environment variables")
    p.add_argument("--env-file", action="append", default=[], help="read in a file of environment variables")
    p.add_argument("-u", "--user", help="username or UID (format: <name|uid>[:<group|gid>])")
    p.add_argument("-w", "--workdir", help="working directory inside the container")
    p.add_argument("--privileged", action="store_true", help="give extended privileges to the command")
    p.add_argument("--detach-keys", help="override the key sequence for detaching a container")
    p.add_argument("container")
    p.add_argument("command", nargs=REMAINDER)
    p.counts = (2, None)
    opts = p.parse_args(args)
    p.require(1 + len(opts.command))
    if opts.interactive and opts.tty and not opts.detach and not stdin_is_tty():
        raise CommandError("the input device is not a TTY", 1)
    console = terminal_size() if opts.tty else None
    config = {"User": opts.user or "", "Privileged": opts.privileged, "Tty": opts.tty,
              "AttachStdin": opts.interactive and not opts.detach, "AttachStdout": not opts.detach,
              "AttachStderr": not opts.detach, "Detach": opts.detach, "DetachKeys": opts.detach_keys or "",
              "Env": env_entries(opts.env, opts.env_file), "WorkingDir": opts.workdir or "", "Cmd": opts.command}
    if console:
        config["ConsoleSize"] = list(console)
    exec_id = cli.client.post(_path(opts.container, "/exec"), body=config)["Id"]
    start_body = {"Detach": opts.detach, "Tty": opts.tty, **({"ConsoleSize": list(console)} if console else {})}
    path = f"/exec/{exec_id}/start"
    try:
        if opts.detach:
            cli.client.post(path, body=start_body)
            return 0
        sock, multiplexed, first = cli.client.hijack(path, body=start_body)
    except ApiError as exc:
        status = start_error_status(exc.message)
        cli.err(f"Error response from daemon: {exc.message}")
        return status if status != 125 else 1
    with raw_terminal(0, opts.tty and opts.interactive), \
            follow_resizes(lambda h, w: cli.client.post(f"/exec/{exec_id}/resize", {"h": h, "w": w}), opts.tty):
        _hijacked_session(cli, sock, multiplexed, first, stdin=opts.interactive, tty=opts.tty,
                          detach_keys=opts.detach_keys)
    for _ in range(100):  # the exit code is recorded a moment after the stream ends
        info = cli.client.get(f"/exec/{exec_id}/json")
        if info.get("ExitCode") is not None:  # set while Running too when the stream was cut
            return int(info["ExitCode"])
        time.sleep(0.02)
    return 0


def attach(cli: Cli, name: str, args: list[str]) -> int:
    from coracle.cli.streams import follow_resizes, raw_terminal, stdin_is_tty

    p = parser(name, "[OPTIONS] CONTAINER",
               "Attach local standard input, output, and error streams to a running container")
    p.add_argument("--no-stdin", action="store_true", help="do not attach STDIN")
    p.add_argument("--sig-proxy", default="true", help="proxy all received signals to the process")
    p.add_argument("--detach-keys", help="override the key sequence for detaching a container")
    p.add_argument("container")
    opts = p.parse_args(args)
    info = cli.client.get(_path(opts.container, "/json"))
    if not info["State"].get("Running"):
        raise CommandError("You cannot attach to a stopped container, start it first", 1)
    if info["State"].get("Paused"):
        raise CommandError("You cannot attach to a paused container, unpause it first", 1)
    tty = info["Config"].get("Tty", False)
    stdin = not opts.no_stdin and info["Config"].get("OpenStdin", False)
    if tty and stdin and not stdin_is_tty():
        raise CommandError("the input device is not a TTY", 1)
    query = {"stream": True, "stdin": stdin, "stdout": True, "stderr": True, "detachKeys": opts.detach_keys}
    sock, multiplexed, first = cli.client.hijack(_path(info["Id"], "/attach"), query)
    with raw_terminal(0, tty and stdin), \
            follow_resizes(lambda h, w: cli.client.post(_path(info["Id"], "/resize"), {"h": h, "w": w}), tty):
        detached = _hijacked_session(cli, sock, multiplexed, first, stdin=stdin, tty=tty, detach_keys=opts.detach_keys)
    if detached:
        return 0
    state = cli.client.get(_path(info["Id"], "/json"))["State"]
    if state.get("Running"):
        state = cli.client.post(_path(info["Id"], "/wait"))
        return int(state.get("StatusCode", 0))
    return int(state.get("ExitCode", 0))


# ----- update, stats, cp ----------------------------------------------------------------

def update(cli: Cli, name: str, args: list[str]) -> int:
    from coracle.cli.runconfig import _bytes, _cpus, _restart, add_resource_flags

    p = parser(name, "[OPTIONS] CONTAINER [CONTAINER...]", "Update configuration of one or more containers")
    a = p.add_argument
    add_resource_flags(a)
    a("--restart", help="restart policy to apply when a container exits")
    a("containers", nargs="+")
    opts = p.parse_args(args)
    body: dict[str, Any] = {}
    for key, value in (("Memory", _bytes(opts.memory, "-m, --memory") if opts.memory else None),
                       ("MemorySwap", _bytes(opts.memory_swap, "--memory-swap") if opts.memory_swap else None),
                       ("MemoryReservation", _bytes(opts.memory_reservation, "--memory-reservation")
                        if opts.memory_reservation else None),
                       ("NanoCpus", _cpus(opts.cpus) if opts.cpus else None), ("CpuShares", opts.cpu_shares),
                       ("CpuQuota", opts.cpu_quota), ("CpuPeriod", opts.cpu_period),
                       ("CpusetCpus", opts.cpuset_cpus), ("CpusetMems", opts.cpuset_mems),
                       ("PidsLimit", opts.pids_limit), ("BlkioWeight", opts.blkio_weight),
                       ("RestartPolicy", _restart(opts.restart) if opts.restart else None)):
        if value is not None:
            body[key] = value
    if not body:
        raise CommandError("you must provide one or more flags when using this command", 1)

    def apply(c: str) -> None:
        result = cli.client.post(_path(c, "/update"), body=body) or {}
        for warning in result.get("Warnings") or []:
            cli.err(f"WARNING: {warning}")

    return each(cli, opts.containers, apply)


def stats(cli: Cli, name: str, args: list[str]) -> int:
    from coracle.cli.formatting import STATS_TABLE, StatsRow, render_rows

    p = parser(name, "[OPTIONS] [CONTAINER...]", "Display a live stream of container(s) resource usage statistics")
    p.add_argument("-a", "--all", action="store_true", help="show all containers (default shows just running)")
    p.add_argument("--no-stream", action="store_true", help="disable streaming stats and only pull the first result")
    p.add_argument("--no-trunc", action="store_true", help="do not truncate output")
    p.add_argument("--format", help="format output using a custom template")
    p.add_argument("containers", nargs="*")
    opts = p.parse_args(args)
    names = opts.containers or [c["Id"] for c in cli.client.get("/containers/json", {"all": opts.all or None}) or []]
    latest: dict[str, dict[str, Any]] = {}
    errors: list[str] = []

    def sample(container: str) -> None:
        client = Client(cli.host)
        try:
            for doc in client.json_stream("GET", _path(container, "/stats"), {"stream": not opts.no_stream}):
                latest[container] = doc
                if opts.no_stream:
                    return
        except ApiError as exc:
            errors.append(exc.message)
        finally:
            client.close()

    import threading

    threads = [threading.Thread(target=sample, args=(c,), daemon=True) for c in names]
    for t in threads:
        t.start()

    def render() -> str:
        rows = [StatsRow(c, latest[c], trunc=not opts.no_trunc) for c in names if c in latest]
        return render_rows(rows, opts.format, STATS_TABLE, StatsRow)

    if opts.no_stream:
        for t in threads:
            t.join()
        for message in errors:
            cli.err(f"Error response from daemon: {message}")
        cli.out(render())
        return 1 if errors and not latest else 0
    while any(t.is_alive() for t in threads):
        time.sleep(1)
        cli.out("\033[2J\033[H" + render())
        sys.stdout.flush()
    return 0


def _stat_path(cli: Cli, container: str, path: str) -> dict[str, Any] | None:
    """HEAD /containers/{id}/archive: the X-Docker-Container-Path-Stat of `path`, None if absent."""
    import base64

    try:
        resp = cli.client.request("HEAD", _path(container, "/archive"), {"path": path})
    except ApiError as exc:
        if exc.status == 404 and "container" not in exc.message.lower():
            return None
        raise
    resp.read()
    header = resp.getheader("X-Docker-Container-Path-Stat")
    return wirejson.loads(base64.b64decode(header)) if header else {}


def diff(cli: Cli, name: str, args: list[str]) -> int:
    p = parser(name, "CONTAINER", "Inspect changes to files or directories on a container's filesystem")
    p.add_argument("container")
    opts = p.parse_args(args)
    changes = cli.client.get(_path(opts.container, "/changes")) or []
    cli.out("".join(f"{'CAD'[c['Kind']]} {c['Path']}\n" for c in changes))  # Docker's letters for kinds 0, 1, 2
    return 0


def export(cli: Cli, name: str, args: list[str]) -> int:
    p = parser(name, "[OPTIONS] CONTAINER", "Export a container's filesystem as a tar archive")
    p.add_argument("-o", "--output", help="write to a file, instead of STDOUT")
    p.add_argument("container")
    opts = p.parse_args(args)
    save_stream(cli.client.request("GET", _path(opts.container, "/export"), stream=True), opts.output)
    return 0


def cp(cli: Cli, name: str, args: list[str]) -> int:
    p = parser(name, "[OPTIONS] CONTAINER:SRC_PATH DEST_PATH|-\n"
               "\tcoracle cp [OPTIONS] SRC_PATH|- CONTAINER:DEST_PATH",
               "Copy files/folders between a container and the local filesystem")
    p.add_argument("-a", "--archive", action="store_true", help="archive mode (copy all uid/gid information)")
    p.add_argument("-L", "--follow-link", action="store_true", help="always follow symbol link in SRC_PATH")
    p.add_argument("-q", "--quiet", action="store_true", help="suppress progress output")
    p.add_argument("src")
    p.add_argument("dest")
    opts = p.parse_args(args)

    def split(arg: str) -> tuple[str | None, str]:
        if ":" in arg and not arg.startswith(("/", ".")):
            container, _, path = arg.partition(":")
            return container, path
        return None, arg

    src_ctr, src = split(opts.src)
    dst_ctr, dst = split(opts.dest)
    if (src_ctr is None) == (dst_ctr is None):
        raise CommandError("copying between containers is not supported" if src_ctr else
                           "must specify at least one container source", 1)
    if src_ctr is not None:
        return _copy_from(cli, src_ctr, src, dst, opts.quiet)
    # dst_ctr is set: exactly one side names a container (checked above)
    return _copy_to(cli, src, dst_ctr, dst, opts.quiet, opts.follow_link)  # type: ignore[arg-type]


def _copy_from(cli: Cli, container: str, src: str, dest: str, quiet: bool) -> int:
    import tarfile

    from coracle.cli.units import human_size

    resp = cli.client.request("GET", _path(container, "/archive"), {"path": src}, stream=True)
    if dest == "-":
        while chunk := resp.read1(1 << 20):
            sys.stdout.buffer.write(chunk)
        return 0
    into = os.path.isdir(dest)
    if not into and dest.endswith("/"):
        raise CommandError(f"Error: invalid destination path: {dest} does not exist", 1)
    target_dir = dest if into else (os.path.dirname(dest.rstrip("/")) or ".")
    rename = None if into else os.path.basename(dest.rstrip("/"))
    total = 0
    with tarfile.open(fileobj=resp, mode="r|") as tar:
        for member in tar:
            parts = member.name.lstrip("./").split("/") if member.name not in (".", "./") else []
            if not parts or ".." in parts or member.name.startswith("/"):
                continue
            if rename:
                parts[0] = rename
            member.name = "/".join(parts)
            total += member.size
            if hasattr(tarfile, "tar_filter"):  # Python >= 3.11.4: no absolute paths or escapes
                tar.extract(member, target_dir, filter="tar")
            elif not (member.issym() or member.islnk()) or not (
                    member.linkname.startswith("/") or ".." in member.linkname.split("/")):
                tar.extract(member, target_dir)  # older: names were checked above, links here
    if not quiet:
        cli.err(f"Successfully copied {human_size(total)} to {dest}")
    return 0


def _copy_to(cli: Cli, src: str, container: str, dest: str, quiet: bool, follow: bool) -> int:
    import tarfile
    import tempfile

    from coracle.cli.units import human_size

    if src == "-":
        cli.client.request("PUT", _path(container, "/archive"), {"path": dest}, sys.stdin.buffer,
                           content_type="application/x-tar").read()
        return 0
    if not os.path.lexists(src):
        raise CommandError(f"lstat {os.path.abspath(src)}: no such file or directory", 1)
    stat = _stat_path(cli, container, dest)
    if stat is not None and stat.get("mode", 0) & (1 << 31):  # a directory: copy into it
        target, arcname = dest, os.path.basename(os.path.normpath(src))
    elif stat is None and dest.endswith("/"):
        raise CommandError(f"Error response from daemon: Could not find the file {dest} in container {container}", 1)
    else:
        target, arcname = os.path.dirname(dest.rstrip("/")) or "/", os.path.basename(dest.rstrip("/"))
    with tempfile.TemporaryFile() as spool:
        with tarfile.open(fileobj=spool, mode="w") as tar:
            tar.dereference = follow
            tar.add(src, arcname=arcname)
        size = spool.tell()
        spool.seek(0)
        cli.client.request("PUT", _path(container, "/archive"), {"path": target}, spool.read(),
                           content_type="application/x-tar").read()
    if not quiet:
        cli.err(f"Successfully copied {human_size(size)} to {container}:{dest}")
    return 0

