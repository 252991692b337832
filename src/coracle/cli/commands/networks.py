"""Network verbs: create, ls, inspect, rm, prune, connect, disconnect."""

from __future__ import annotations

import ipaddress

from coracle.cli.client import quote_name
from coracle.cli.commands import confirm, each, filters, parser
from coracle.cli.main import Cli
from coracle.cli.runconfig import UsageError

TYPE_CHECKING = False  # typing is for checkers only: it costs start-up time
if TYPE_CHECKING:
    from typing import Any


def _path(net: str, suffix: str = "") -> str:
    return f"/networks/{quote_name(net)}{suffix}"


def _key_values(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key:
            raise UsageError(f'invalid argument "{item}" for "{flag}" flag: must be formatted as key=value')
        out[key] = value
    return out


def ipam_config(subnets: list[str], gateways: list[str], ranges: list[str]) -> list[dict[str, str]]:
    """Pair each --gateway/--ip-range with the --subnet containing it, as docker does."""
    try:
        nets = [ipaddress.ip_network(s, strict=False) for s in subnets]
    except ValueError as exc:
        raise UsageError(f"invalid subnet: {exc}") from None
    configs: list[dict[str, str]] = [{"Subnet": s} for s in subnets]
    if (gateways or ranges) and not subnets:
        raise UsageError("every ip-range or gateway must have a corresponding subnet")

    def owner(value: str, is_range: bool) -> dict[str, str]:
        try:
            addr = ipaddress.ip_network(value, strict=False) if is_range else ipaddress.ip_address(value)
        except ValueError:
            raise UsageError(f"invalid {'ip-range' if is_range else 'gateway'}: {value}") from None
        for net, config in zip(nets, configs, strict=False):
            if addr.version != net.version:
                continue
            if isinstance(addr, ipaddress.IPv4Address | ipaddress.IPv6Address):
                inside = addr in net
            else:
                inside = addr.network_address in net and addr.broadcast_address in net
            if inside:
                return config
        raise UsageError(f"no matching subnet for {'range' if is_range else 'gateway'} {value}")

    for gateway in gateways:
        config = owner(gateway, False)
        if "Gateway" in config:
            raise UsageError("cannot configure multiple gateways for the same subnet")
        config["Gateway"] = gateway
    for ip_range in ranges:
        config = owner(ip_range, True)
        if "IPRange" in config:
            raise UsageError("cannot configure multiple ranges on the same subnet")
        config["IPRange"] = ip_range
    return configs


def create(cli: Cli, name: str, args: list[str]) -> int:
    p = parser(name, "[OPTIONS] NETWORK", "Create a network")
    p.add_argument("-d", "--driver", default="bridge", help="driver to manage the Network")
    p.add_argument("--subnet", action="append", default=[],
                   help="subnet in CIDR format that represents a network segment")
    p.add_argument("--gateway", action="append", default=[], help="IPv4 or IPv6 Gateway for the master subnet")
    p.add_argument("--ip-range", action="append", default=[], help="allocate container ip from a sub-range")
    p.add_argument("--internal", action="store_true", help="restrict external access to the network")
    p.add_argument("-o", "--opt", action="append", default=[], help="set driver specific options")
    p.add_argument("--label", action="append", default=[], help="set metadata on a network")
    p.add_argument("--ipv6", action="store_true", default=None, help="enable or disable IPv6 networking")
    p.add_argument("--attachable", action="store_true", help="enable manual container attachment")
    p.add_argument("--ipam-driver", default="default", help="IP Address Management Driver")
    p.add_argument("network")
    opts = p.parse_args(args)
    body: dict[str, Any] = {
        "Name": opts.network, "CheckDuplicate": True, "Driver": opts.driver, "Internal": opts.internal,
        "Attachable": opts.attachable, "Options": _key_values(opts.opt, "-o, --opt"),
        "Labels": _key_values(opts.label, "--label"),
        "IPAM": {"Driver": opts.ipam_driver, "Config": ipam_config(opts.subnet, opts.gateway, opts.ip_range),
                 "Options": {}},
    }
    if opts.ipv6 is not None:
        body["EnableIPv6"] = opts.ipv6
    result = cli.client.post("/networks/create", body=body) or {}
    if result.get("Warning"):
        cli.err(f"WARNING: {result['Warning']}")
    cli.out(result["Id"] + "\n")
    return 0


def ls(cli: Cli, name: str, args: list[str]) -> int:
    from coracle.cli.formatting import NETWORKS_TABLE, NetworkRow, render_rows, short_id

    p = parser(name, "[OPTIONS]", "List networks")
    p.add_argument("-f", "--filter", action="append", default=[], help="provide filter values (e.g. 'driver=bridge')")
    p.add_argument("--format", help="format output using a custom template")
    p.add_argument("--no-trunc", action="store_true", help="do not truncate the output")
    p.add_argument("-q", "--quiet", action="store_true", help="only display network IDs")
    opts = p.parse_args(args)
    nets = sorted(cli.client.get("/networks", {"filters": filters(opts.filter)}) or [], key=lambda n: n.get("Name", ""))
    if opts.quiet:
        cli.out("".join(short_id(n["Id"], not opts.no_trunc) + "\n" for n in nets))
        return 0
    rows = [NetworkRow(n, trunc=not opts.no_trunc) for n in nets]
    cli.out(render_rows(rows, opts.format, NETWORKS_TABLE, NetworkRow))
    return 0


def inspect(cli: Cli, name: str, args: list[str]) -> int:
    from coracle.cli.commands.system import inspect_objects

    return inspect_objects(cli, name, args, kind="network")


def rm(cli: Cli, name: str, args: list[str]) -> int:
    p = parser(name, "NETWORK [NETWORK...]", "Remove one or more networks")
    p.add_argument("-f", "--force", action="store_true", help="do not error if the network does not exist")
    p.add_argument("networks", nargs="+")
    opts = p.parse_args(args)
    from coracle.cli.client import ApiError

    def remove(net: str) -> None:
        try:
            cli.client.call("DELETE", _path(net))
        except ApiError as exc:
            if not (opts.force and exc.status == 404):
                raise

    return each(cli, opts.networks, remove)


def prune(cli: Cli, name: str, args: list[str]) -> int:
    p = parser(name, "[OPTIONS]", "Remove all unused networks")
    p.add_argument("-f", "--force", action="store_true", help="do not prompt for confirmation")
    p.add_argument("--filter", action="append", default=[], help="provide filter values (e.g. 'until=<timestamp>')")
    opts = p.parse_args(args)
    if not opts.force and not confirm("WARNING! This will remove all custom networks not used by at least one "
                                      "container.\nAre you sure you want to continue?"):
        return 0
    result = cli.client.post("/networks/prune", {"filters": filters(opts.filter)}) or {}
    cli.out(format_deleted_networks(result.get("NetworksDeleted") or []))
    return 0


def format_deleted_networks(deleted: list[str]) -> str:
    return "Deleted Networks:\n" + "".join(n + "\n" for n in deleted) + "\n" if deleted else ""


def connect(cli: Cli, name: str, args: list[str]) -> int:
    p = parser(name, "[OPTIONS] NETWORK CONTAINER", "Connect a container to a network")
    p.add_argument("--ip", help="IPv4 address (e.g., 172.30.100.104)")
    p.add_argument("--ip6", help="IPv6 address")
    p.add_argument("--alias", action="append", default=[], help="add network-scoped alias for the container")
    p.add_argument("--link", action="append", default=[], help="add link to another container")
    p.add_argument("--driver-opt", action="append", default=[], help="driver options for the network")
    p.add_argument("network")
    p.add_argument("container")
    opts = p.parse_args(args)
    endpoint: dict[str, Any] = {}
    if opts.ip or opts.ip6:
        endpoint["IPAMConfig"] = {k: v for k, v in (("IPv4Address", opts.ip), ("IPv6Address", opts.ip6)) if v}
    if opts.alias:
        endpoint["Aliases"] = opts.alias
    if opts.link:
        endpoint["Links"] = opts.link
    if opts.driver_opt:
        endpoint["DriverOpts"] = _key_values(opts.driver_opt, "--driver-opt")
    cli.client.post(_path(opts.network, "/connect"), body={"Container": opts.container, "EndpointConfig": endpoint})
    return 0


def disconnect(cli: Cli, name: str, args: list[str]) -> int:
    p = parser(name, "[OPTIONS] NETWORK CONTAINER", "Disconnect a container from a network")
    p.add_argument("-f", "--force", action="store_true", help="force the container to disconnect from a network")
    p.add_argument("network")
    p.add_argument("container")
    opts = p.parse_args(args)
    cli.client.post(_path(opts.network, "/disconnect"), body={"Container": opts.container, "Force": opts.force})
    return 0

