"""The container record's conversions: stored shape -> typed record -> stored shape loses nothing.

The fixture holds real records written by the daemon before the mounts and network
entries were typed (through the docker CLI and SDK): created with networks asked
for, running on the default bridge and on a user network with every kind of mount,
stopped, connected while stopped, renamed, in host, none and container mode. A
daemon upgraded in place reads these from its store and its `config.json` files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from coracle.api import render
from coracle.engine.container import Container, MountPoint, NetworkAttachment
from coracle.network.driver import EndpointOptions

RECORDS: list[dict[str, Any]] = json.loads((Path(__file__).parent / "stored_records.json").read_text())


def _named(name: str) -> dict[str, Any]:
    return next(r for r in RECORDS if r["Name"] == "/" + name)


@pytest.mark.parametrize("rec", RECORDS, ids=[r["Name"].lstrip("/") for r in RECORDS])
def test_a_record_written_before_is_stored_back_unchanged(rec: dict[str, Any]) -> None:
    c = Container.from_stored(rec)
    assert c.stored() == rec
    assert json.loads(json.dumps(c.stored())) == rec  # and as the file beside the container holds it
    assert Container.from_stored(c.stored()) == c


def test_mounts_are_typed_by_kind() -> None:
    web = Container.from_stored(_named("web"))
    by_destination = {m.destination: m for m in web.mounts}
    named, bind, anon, tmpfs = (by_destination[d] for d in ("/data", "/x", "/anon", "/t"))
    assert (named.type, named.name, named.driver, named.rw, named.anonymous) == ("volume", "named", "local", True,
                                                                                  False)
    assert named.source.endswith("/volumes/named/_data") and named.copies_up
    assert (bind.type, bind.source, bind.rw, bind.mode, bind.propagation) == ("bind", "/tmp/h4/bindsrc", False,
                                                                             "ro", "rprivate")
    assert anon.anonymous and anon.is_volume and not bind.is_volume
    assert (tmpfs.type, tmpfs.source, tmpfs.mode) == ("tmpfs", "", "size=1m")
    assert "Name" not in bind.stored() and "Driver" not in tmpfs.stored()  # a volume's keys only


def test_volumes_from_read_only_keeps_each_mount_but_its_access() -> None:
    heir, web = Container.from_stored(_named("heir")), Container.from_stored(_named("web"))
    shared = [m for m in web.mounts if m.type in ("volume", "bind")]
    assert heir.mounts == [m.with_access(False) for m in shared]
    assert MountPoint.from_stored({**_named("web")["Mounts"][0], "Mode": "nocopy"}).copies_up is False


def test_a_planned_network_shows_what_the_client_asked_as_it_asked() -> None:
    cli = Container.from_stored(_named("planned-cli")).networks["fixnet"]
    sdk = Container.from_stored(_named("planned-sdk")).networks["fixnet"]
    assert cli.endpoint is None and sdk.endpoint is None
    assert cli.stored() == {"IPAMConfig": {"IPv4Address": "10.231.0.40"}, "Links": None, "Aliases": ["db"],
                            "MacAddress": "", "DriverOpts": None}
    assert sdk.stored() == {"Aliases": ["cache"]}
    assert cli.options("fixnet") == EndpointOptions("fixnet", ("db",), {"IPv4Address": "10.231.0.40"})
    assert NetworkAttachment.planned({"Aliases": ["x"], "NetworkID": "n" * 64}).stored() == {"Aliases": ["x"]}


def test_a_joined_network_is_the_network_layers_endpoint_and_a_stop_clears_its_addresses() -> None:
    rec = _named("two-renamed")
    c = Container.from_stored(rec)
    fixnet = c.networks["fixnet"].endpoint
    assert fixnet is not None and fixnet.ipv4 == "10.231.0.2" and fixnet.ipv4_prefixlen == 24
    assert fixnet.aliases == ("api",) and fixnet.network_id and fixnet.id and "two-renamed" in fixnet.dns_names
    assert c.networks["fixnet"].address == "10.231.0.2" and set(c.networks) == {"fixnet", "bridge"}
    c.unwire()
    before = rec["NetworkSettings"]["Networks"]["fixnet"]
    cleared = {k: "" for k in ("IPAddress", "Gateway", "MacAddress", "EndpointID")}
    assert c.networks["fixnet"].stored() == {**before, **cleared}  # the network and its options stay listed
    assert c.networks["fixnet"].options("fixnet") == EndpointOptions("fixnet", ("api",))
    assert c.stored()["NetworkSettings"]["Ports"] == {} and c.network_settings.ports == {}


def test_a_network_connected_while_stopped_is_recorded_as_the_network_layer_answered() -> None:
    wish = Container.from_stored(_named("wish"))
    assert wish.networks["bridge"].endpoint is None  # planned at create
    fixnet = wish.networks["fixnet"]
    assert fixnet.endpoint is not None and fixnet.endpoint.id == "" and fixnet.network_id and fixnet.address == ""


def test_rename_and_adoption_change_one_field_each() -> None:
    c = Container.from_stored(_named("web"))
    c.rename_in_networks({"bridge": ["web2"], "gone": ["x"]})
    c.networks["bridge"].reassign("b" * 64)
    entry = c.stored()["NetworkSettings"]["Networks"]["bridge"]
    assert entry["DNSNames"] == ["web2"] and entry["NetworkID"] == "b" * 64 and "gone" not in c.networks
    before = {k: v for k, v in _named("web")["NetworkSettings"]["Networks"]["bridge"].items()
              if k not in ("DNSNames", "NetworkID")}
    assert {k: v for k, v in entry.items() if k not in ("DNSNames", "NetworkID")} == before


def test_leave_forgets_the_network_wherever_it_was_named() -> None:
    c = Container.from_stored(_named("planned-cli"))
    c.leave(("fixnet",), {"IPAddress": ""})
    stored = c.stored()
    assert stored["NetworkSettings"]["Networks"] == {} and stored["NetworkingConfig"]["EndpointsConfig"] == {}


def test_the_api_shows_dockers_shape_with_defaults_for_what_is_not_stored() -> None:
    planned = Container.from_stored(_named("planned-sdk"))
    shown = render.inspect(planned, [])["NetworkSettings"]["Networks"]["fixnet"]
    assert shown["Aliases"] == ["cache"] and shown["IPAddress"] == "" and shown["NetworkID"] == ""
    web = _named("web")
    assert render.inspect(Container.from_stored(web), [])["Mounts"] == web["Mounts"]
    row = render.summary(Container.from_stored(web))
    assert row["Mounts"] == web["Mounts"] and row["NetworkSettings"]["Networks"] == web["NetworkSettings"]["Networks"]
    assert {p.get("PublicPort") for p in row["Ports"]} == {18080}
