"""Volume verbs: create, ls, inspect, rm, prune."""

from __future__ import annotations

from coracle.cli.client import quote_name
from coracle.cli.commands import confirm, each, filters, parser
from coracle.cli.commands.networks import _key_values
from coracle.cli.main import Cli

TYPE_CHECKING = False  # typing is for checkers only: it costs start-up time
if TYPE_CHECKING:
    from typing import Any


def create(cli: Cli, name: str, args: list[str]) -> int:
    p = parser(name, "[OPTIONS] [VOLUME]", "Create a volume")
    p.add_argument("-d", "--driver", default="local", help="specify volume driver name")
    p.add_argument("--name", help="specify volume name")
    p.add_argument("-o", "--opt", action="append", default=[], help="set driver specific options")
    p.add_argument("--label", action="append", default=[], help="set metadata for a volume")
    p.add_argument("volume", nargs="?")
    opts = p.parse_args(args)
    if opts.name and opts.volume and opts.name != opts.volume:
        from coracle.cli.runconfig import UsageError

        raise UsageError("conflicting options: cannot specify a volume-name through both --name and as a "
                         "positional arg")
    body: dict[str, Any] = {"Name": opts.volume or opts.name or "", "Driver": opts.driver,
                            "DriverOpts": _key_values(opts.opt, "-o, --opt"),
                            "Labels": _key_values(opts.label, "--label")}
    cli.out(cli.client.post("/volumes/create", body=body)["Name"] + "\n")
    return 0


def ls(cli: Cli, name: str, args: list[str]) -> int:
    from coracle.cli.formatting import VOLUMES_TABLE, VolumeRow, render_rows

    p = parser(name, "[OPTIONS]", "List volumes")
    p.add_argument("-f", "--filter", action="append", default=[], help="provide filter values (e.g. 'dangling=true')")
    p.add_argument("--format", help="format output using a custom template")
    p.add_argument("-q", "--quiet", action="store_true", help="only display volume names")
    opts = p.parse_args(args)
    vols = sorted((cli.client.get("/volumes", {"filters": filters(opts.filter)}) or {}).get("Volumes") or [],
                  key=lambda v: v.get("Name", ""))
    if opts.quiet:
        cli.out("".join(v["Name"] + "\n" for v in vols))
        return 0
    cli.out(render_rows([VolumeRow(v) for v in vols], opts.format, VOLUMES_TABLE, VolumeRow))
    return 0


def inspect(cli: Cli, name: str, args: list[str]) -> int:
    from coracle.cli.commands.system import inspect_objects

    return inspect_objects(cli, name, args, kind="volume")


def rm(cli: Cli, name: str, args: list[str]) -> int:
    p = parser(name, "[OPTIONS] VOLUME [VOLUME...]", "Remove one or more volumes")
    p.add_argument("-f", "--force", action="store_true", help="force the removal of one or more volumes")
    p.add_argument("volumes", nargs="+")
    opts = p.parse_args(args)
    return each(cli, opts.volumes, lambda vol: cli.client.call(
        "DELETE", f"/volumes/{quote_name(vol)}", {"force": True} if opts.force else None))


def prune(cli: Cli, name: str, args: list[str]) -> int:
    from coracle.cli.units import human_size

    p = parser(name, "[OPTIONS]", "Remove unused local volumes")
    p.add_argument("-a", "--all", action="store_true", help="remove all unused volumes, not just anonymous ones")
    p.add_argument("-f", "--force", action="store_true", help="do not prompt for confirmation")
    p.add_argument("--filter", action="append", default=[], help="provide filter values (e.g. 'label=<label>')")
    opts = p.parse_args(args)
    which = "all local volumes" if opts.all else "anonymous local volumes"
    if not opts.force and not confirm(f"WARNING! This will remove {which} not used by at least one container.\n"
                                      "Are you sure you want to continue?"):
        return 0
    wanted = filters(opts.filter + (["all=true"] if opts.all else [])) or {}
    result = cli.client.post("/volumes/prune", {"filters": wanted}) or {}
    deleted = result.get("VolumesDeleted") or []
    if deleted:
        cli.out("Deleted Volumes:\n" + "".join(v + "\n" for v in deleted) + "\n")
    cli.out(f"Total reclaimed space: {human_size(result.get('SpaceReclaimed') or 0)}\n")
    return 0
