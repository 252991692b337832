"""System verbs: inspect (any object), version, info, events, system df/prune/check."""

from __future__ import annotations

import os
import sys
import time

from coracle.cli.client import ApiError, DaemonUnreachable, quote_name
from coracle.cli.commands import CommandError, confirm, filters, parser, print_json, template_each
from coracle.cli.main import Cli

TYPE_CHECKING = False  # typing is for checkers only: it costs start-up time
if TYPE_CHECKING:
    from typing import Any

_INSPECT_PATHS = {"container": "/containers/{}/json", "image": "/images/{}/json", "network": "/networks/{}",
                 "volume": "/volumes/{}"}
_MISSING = {"container": "No such container", "image": "No such image", "network": "No such network",
            "volume": "No such volume"}


def inspect_objects(cli: Cli, name: str, args: list[str], kind: str | None = None) -> int:
    """`inspect` for one kind (container/image/network inspect) or any (`inspect --type`)."""
    what = kind.upper() if kind else "NAME|ID"
    p = parser(name, f"[OPTIONS] {what} [{what}...]", "Return low-level information on objects")
    p.add_argument("-f", "--format", help="format output using a custom template")
    p.add_argument("-s", "--size", action="store_true", help="display total file sizes if the type is container")
    if kind is None:
        p.add_argument("--type", choices=sorted(_INSPECT_PATHS), help="only inspect objects of the given type")
    p.add_argument("names", nargs="+")
    opts = p.parse_args(args)
    kinds = [kind or opts.type] if (kind or opts.type) else list(_INSPECT_PATHS)
    found, missing = [], []
    for ident in opts.names:
        for k in kinds:
            query = {"size": True} if k == "container" and opts.size else None
            try:
                found.append(cli.client.get(_INSPECT_PATHS[k].format(quote_name(ident)), query))
                break
            except ApiError as exc:
                if exc.status != 404:
                    raise
        else:
            missing.append(ident)
    if opts.format:
        template_each(cli, opts.format, found)
    else:
        print_json(cli, found)
    for ident in missing:
        what = _MISSING[kinds[0]] if len(kinds) == 1 else "No such object"
        cli.err(f"Error: {what}: {ident}")
    return 1 if missing else 0


# ----- version and info -----------------------------------------------------------

def _client_version() -> dict[str, Any]:
    from coracle import __version__

    machine = os.uname().machine  # what platform.machine() says, without importing platform
    python = "{}.{}.{}".format(*sys.version_info[:3])
    return {"Platform": {"Name": "coracle"}, "Version": __version__, "ApiVersion": "1.47",
            "DefaultAPIVersion": "1.47", "GoVersion": "python" + python,
            "GitCommit": "", "BuiltTime": "", "Os": "linux",
            "Arch": {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine), "Context": "default"}


VERSION_TEMPLATE = """Client:
 Version:           {{.Client.Version}}
 API version:       {{.Client.ApiVersion}}
 Python version:    {{.Client.GoVersion}}
 OS/Arch:           {{.Client.Os}}/{{.Client.Arch}}
 Context:           {{.Client.Context}}
{{- if .Server}}

Server:{{if .Server.Platform.Name}} {{.Server.Platform.Name}}{{end}}
{{- range $c := .Server.Components}}
 {{$c.Name}}:
  Version:          {{$c.Version}}
{{- if eq $c.Name "Engine"}}
  API version:      {{index $c.Details "ApiVersion"}} (minimum version {{index $c.Details "MinAPIVersion"}})
  Go version:       {{index $c.Details "GoVersion"}}
  Git commit:       {{index $c.Details "GitCommit"}}
  Built:            {{index $c.Details "BuildTime"}}
  OS/Arch:          {{index $c.Details "Os"}}/{{index $c.Details "Arch"}}
  Experimental:     {{index $c.Details "Experimental"}}
{{- end}}
{{- end}}
{{- end}}
"""


def version(cli: Cli, name: str, args: list[str]) -> int:
    from coracle.cli.gotemplate import Template

    p = parser(name, "[OPTIONS]", "Show the version information")
    p.add_argument("-f", "--format", help="format output using a custom template")
    opts = p.parse_args(args)
    data: dict[str, Any] = {"Client": _client_version(), "Server": None}
    failure = None
    try:
        data["Server"] = cli.client.get("/version")
    except (ApiError, DaemonUnreachable) as exc:
        failure = exc
    template = Template((opts.format or VERSION_TEMPLATE).replace("\\t", "\t").replace("\\n", "\n"))
    cli.out(template.execute(data) + ("\n" if opts.format else ""))
    if failure is not None:
        raise failure
    return 0


def info(cli: Cli, name: str, args: list[str]) -> int:
    from coracle.cli.units import bytes_size

    p = parser(name, "[OPTIONS]", "Display system-wide information")
    p.add_argument("-f", "--format", help="format output using a custom template")
    opts = p.parse_args(args)
    data = cli.client.get("/info")
    if opts.format:
        template_each(cli, opts.format, [{**data, "ClientInfo": _client_version()}])
        return 0
    client = _client_version()
    lines = ["Client:", f" Version:    {client['Version']}", f" Context:    {client['Context']}",
             " Debug Mode: false", "", "Server:",
             f" Containers: {data.get('Containers', 0)}", f"  Running: {data.get('ContainersRunning', 0)}",
             f"  Paused: {data.get('ContainersPaused', 0)}", f"  Stopped: {data.get('ContainersStopped', 0)}",
             f" Images: {data.get('Images', 0)}", f" Server Version: {data.get('ServerVersion', '')}",
             f" Storage Driver: {data.get('Driver', '')}", f" Logging Driver: {data.get('LoggingDriver', '')}",
             f" Cgroup Driver: {data.get('CgroupDriver', '')}", f" Cgroup Version: {data.get('CgroupVersion', '')}"]
    plugins = data.get("Plugins") or {}
    if plugins:
        lines.append(" Plugins:")
        lines += [f"  {kind}: {' '.join(names)}" for kind, names in plugins.items() if names]
    runtimes = data.get("Runtimes") or {}
    if runtimes:
        lines.append(f" Runtimes: {' '.join(runtimes)}")
        lines.append(f" Default Runtime: {data.get('DefaultRuntime', '')}")
    if data.get("SecurityOptions"):
        lines.append(" Security Options:")
        lines += [f"  {opt.removeprefix('name=')}" for opt in data["SecurityOptions"]]
    lines += [f" Kernel Version: {data.get('KernelVersion', '')}",
              f" Operating System: {data.get('OperatingSystem', '')}",
              f" OSType: {data.get('OSType', '')}", f" Architecture: {data.get('Architecture', '')}",
              f" CPUs: {data.get('NCPU', 0)}", f" Total Memory: {bytes_size(data.get('MemTotal') or 0)}",
              f" Name: {data.get('Name', '')}", f" ID: {data.get('ID', '')}",
              f" Docker Root Dir: {data.get('DockerRootDir', '')}",
              f" Debug Mode: {str(data.get('Debug', False)).lower()}",
              f" Experimental: {str(data.get('ExperimentalBuild', False)).lower()}",
              f" Live Restore Enabled: {str(data.get('LiveRestoreEnabled', False)).lower()}"]
    cli.out("\n".join(lines) + "\n")
    for warning in data.get("Warnings") or []:
        cli.err(warning)
    return 0


# ----- events ------------------------------------------------------------------------

def format_event(ev: dict[str, Any]) -> str:
    """docker's default event line: `<RFC3339Nano local time> <type> <action> <id> (k=v, ...)`."""
    nanos = ev.get("timeNano") or int(ev.get("time", 0) * 1e9)
    seconds, frac = divmod(int(nanos), 1_000_000_000)
    local = time.localtime(seconds)
    offset = time.strftime("%z", local)
    zone = "Z" if offset == "+0000" else f"{offset[:3]}:{offset[3:]}"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", local) + (f".{frac:09d}".rstrip("0") if frac else "") + zone
    actor = ev.get("Actor") or {}
    attrs = actor.get("Attributes") or {}
    tail = f" ({', '.join(f'{k}={attrs[k]}' for k in sorted(attrs))})" if attrs else ""
    return f"{stamp} {ev.get('Type', '')} {ev.get('Action', '')} {actor.get('ID', '')}{tail}"


def events(cli: Cli, name: str, args: list[str]) -> int:
    from coracle.cli.gotemplate import Template
    from coracle.cli.units import api_time

    p = parser(name, "[OPTIONS]", "Get real time events from the server")
    p.add_argument("--since", help="show all events created since timestamp")
    p.add_argument("--until", help="stream events until this timestamp")
    p.add_argument("-f", "--filter", action="append", default=[], help="filter output based on conditions provided")
    p.add_argument("--format", help="format output using a custom template")
    opts = p.parse_args(args)
    try:
        query = {"since": api_time(opts.since) if opts.since else None,
                 "until": api_time(opts.until) if opts.until else None, "filters": filters(opts.filter)}
    except ValueError as exc:
        raise CommandError(f"Error: {exc}", 1) from None
    fmt = "{{json .}}" if opts.format == "json" else opts.format
    template = Template(fmt.replace("\\t", "\t").replace("\\n", "\n")) if fmt else None
    for ev in cli.client.json_stream("GET", "/events", query):
        cli.out((template.execute(ev) if template else format_event(ev)) + "\n")
        sys.stdout.flush()
    return 0


# ----- system df / prune / check ---------------------------------------------------

def df(cli: Cli, name: str, args: list[str]) -> int:
    from coracle.cli.formatting import DF_TABLE, DiskUsageRow, render_rows, usage_rows

    p = parser(name, "[OPTIONS]", "Show coracle disk usage")
    p.add_argument("--format", help="format output using a custom template")
    p.add_argument("-v", "--verbose", action="store_true", help="show detailed information on space usage")
    opts = p.parse_args(args)
    usage = cli.client.get("/system/df") or {}
    if opts.verbose and (not opts.format or opts.format.startswith("table")):
        cli.out(_df_verbose(usage))
    elif opts.verbose:  # one document with every object's row (and no newline), as docker's verbose --format gives
        from coracle.cli.gotemplate import Template

        fmt = "{{json .}}" if opts.format == "json" else opts.format.replace("\\t", "\t").replace("\\n", "\n")
        cli.out(Template(fmt).execute(_df_objects(usage, trunc=False)))
    else:
        cli.out(render_rows(usage_rows(usage), opts.format, DF_TABLE, DiskUsageRow))
    return 0


def _df_objects(usage: dict[str, Any], trunc: bool) -> dict[str, list[Any]]:
    """GET /system/df as docker's verbose rows: each image once (under its first tag), containers
    without their virtual size."""
    from coracle.cli.formatting import BuildCacheRow, ContainerRow, ImageRow, VolumeRow, split_tag

    images = []
    for image in usage.get("Images") or []:
        tags = [t for t in image.get("RepoTags") or [] if t != "<none>:<none>"]
        repo, tag = split_tag(tags[0]) if tags else ("<none>", "<none>")
        images.append(ImageRow(image, repo, tag, "", trunc))
    return {"Images": images,
            "Containers": [ContainerRow({**c, "SizeRootFs": 0}, trunc) for c in usage.get("Containers") or []],
            "Volumes": [VolumeRow(v) for v in usage.get("Volumes") or []],
            "BuildCache": [BuildCacheRow(c, trunc) for c in usage.get("BuildCache") or []]}


def _df_verbose(usage: dict[str, Any]) -> str:
    """`system df -v`: docker's four tables."""
    from coracle.cli.formatting import (DF_CACHE_TABLE, DF_CONTAINERS_TABLE, DF_IMAGES_TABLE, BuildCacheRow,
                                        ContainerRow, ImageRow, VolumeRow, render_rows)
    from coracle.cli.units import human_size

    rows = _df_objects(usage, trunc=True)
    cache_size = sum(c.get("Size") or 0 for c in usage.get("BuildCache") or [] if not c.get("Shared"))
    return ("Images space usage:\n\n" + render_rows(rows["Images"], None, DF_IMAGES_TABLE, ImageRow)
            + "\nContainers space usage:\n\n"
            + render_rows(rows["Containers"], None, DF_CONTAINERS_TABLE, ContainerRow)
            + "\nLocal Volumes space usage:\n\n"
            + render_rows(rows["Volumes"], None, "table {{.Name}}\t{{.Links}}\t{{.Size}}", VolumeRow)
            + f"\nBuild cache usage: {human_size(cache_size, 4)}\n\n"
            + render_rows(rows["BuildCache"], None, DF_CACHE_TABLE, BuildCacheRow))


def prune(cli: Cli, name: str, args: list[str]) -> int:
    from coracle.cli.commands.images import format_deleted_images
    from coracle.cli.commands.networks import format_deleted_networks
    from coracle.cli.units import human_size

    p = parser(name, "[OPTIONS]", "Remove unused data")
    p.add_argument("-a", "--all", action="store_true", help="remove all unused images not just dangling ones")
    p.add_argument("-f", "--force", action="store_true", help="do not prompt for confirmation")
    p.add_argument("--volumes", action="store_true", help="prune anonymous volumes")
    p.add_argument("--filter", action="append", default=[], help="provide filter values (e.g. 'label=<key>=<value>')")
    opts = p.parse_args(args)
    images_line = ("all images without at least one container associated to them" if opts.all
                   else "all dangling images")
    warning = ("WARNING! This will remove:\n  - all stopped containers\n  - all networks not used by at least "
               f"one container\n  - {images_line}\n  - unused build cache\n")
    if not opts.force and not confirm(warning + "\nAre you sure you want to continue?"):
        return 0
    flt = filters(opts.filter)
    reclaimed = 0
    result = cli.client.post("/containers/prune", {"filters": flt}) or {}
    if result.get("ContainersDeleted"):
        cli.out("Deleted Containers:\n" + "".join(c + "\n" for c in result["ContainersDeleted"]) + "\n")
    reclaimed += result.get("SpaceReclaimed") or 0
    result = cli.client.post("/networks/prune", {"filters": flt}) or {}
    cli.out(format_deleted_networks(result.get("NetworksDeleted") or []))
    image_filters = dict(flt or {})
    image_filters["dangling"] = ["false" if opts.all else "true"]
    result = cli.client.post("/images/prune", {"filters": image_filters}) or {}
    cli.out(format_deleted_images(result.get("ImagesDeleted") or []))
    reclaimed += result.get("SpaceReclaimed") or 0
    cli.out(f"Total reclaimed space: {human_size(reclaimed)}\n")
    return 0


def check(cli: Cli, name: str, args: list[str]) -> int:
    """coracle's own: compare records with what exists (cgroups, processes, network) and repair it."""
    p = parser(name, "[OPTIONS]", "Find and repair inconsistencies between state and the system")
    p.add_argument("--dry-run", action="store_true", help="only report what would be repaired")
    p.add_argument("--format", help="format output using a custom template ('json' for the raw report)")
    opts = p.parse_args(args)
    report = cli.client.post("/coracle/check", {"dry_run": True if opts.dry_run else None}) or {}
    if opts.format:
        template_each(cli, "{{json .}}" if opts.format == "json" else opts.format, [report])
        return 0
    import json

    lines = []
    for kind, items in report.items():
        if isinstance(items, dict):
            items = [f"{k}: {v}" for k, v in items.items() if v]
        for item in items or []:
            text = item if isinstance(item, str) else json.dumps(item, separators=(", ", ": "))
            lines.append(f"{kind}: {text}")
    verb = "found" if opts.dry_run else "repaired"
    if not lines:
        cli.out("No inconsistencies found.\n")
    else:
        cli.out("".join(line + "\n" for line in lines) + f"{len(lines)} inconsistencies {verb}.\n")
    return 0


def inspect(cli: Cli, name: str, args: list[str]) -> int:
    return inspect_objects(cli, name, args)
