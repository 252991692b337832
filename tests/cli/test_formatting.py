"""docker's table layout, units and wording."""

from __future__ import annotations

import pytest
from typing import Any

from coracle.cli.formatting import (IMAGES_TABLE, ContainerRow, ImageRow, NetworkRow, StatsRow, display_ports,
                                    ellipsis, image_rows, render_rows, split_tag, tabwrite)
from coracle.cli.units import api_time, bytes_size, human_duration, human_size, parse_bytes, parse_iso


@pytest.mark.parametrize("seconds, text", [
    (0.5, "Less than a second"), (1, "1 second"), (59, "59 seconds"), (60, "About a minute"),
    (119, "About a minute"), (120, "2 minutes"), (3599, "59 minutes"), (3600, "About an hour"),
    (2 * 3600, "2 hours"), (47 * 3600, "47 hours"), (48 * 3600, "2 days"), (14 * 86400, "2 weeks"),
    (60 * 86400, "2 months"), (800 * 86400, "2 years"),
])
def test_human_duration_matches_go_units(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def test_sizes() -> None:
    sizes = (0, 999, 1000, 4_260_000, 1_234_567_890)
    assert [human_size(n) for n in sizes] == ["0B", "999B", "1kB", "4.26MB", "1.23GB"]
    assert bytes_size(1536 * 1024) == "1.5MiB" and bytes_size(212 * 1024) == "212KiB"
    assert [parse_bytes(t) for t in ("64m", "1g", "512k", "100", "1.5g", "64MB", "2GiB")] == \
        [64 << 20, 1 << 30, 512 << 10, 100, 3 << 29, 64 << 20, 2 << 30]
    with pytest.raises(ValueError):
        parse_bytes("lots")


def test_times() -> None:
    assert parse_iso("2026-11-28T15:14:04.5Z") == 1795878844.5
    assert parse_iso("2026-11-28T16:14:04+01:00") == 1795878844.0
    assert api_time("1700000000") == "1700000000"
    assert float(api_time("10m", now=1000.0)) == 400.0
    assert float(api_time("2026-11-28T15:14:04Z")) == 1795878844.0
    with pytest.raises(ValueError, match="failed to parse"):
        api_time("yesterday")


def test_tabwriter_like_go() -> None:
    # minwidth 10, padding 3; the last cell is not padded
    assert tabwrite(["A\tBBBBBBBBBBBB\tC", "DD\tE\tF"]) == "A         BBBBBBBBBBBB   C\nDD        E              F\n"


def test_ellipsis() -> None:
    assert ellipsis("sh -c 'sleep 1000; echo hi'", 20) == "sh -c 'sleep 1000; …"
    assert ellipsis("short", 20) == "short"
    assert ellipsis("日本語のコマンド", 7) == "日本語…"  # wide characters count twice


def test_ports_column() -> None:
    ports = [{"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"},
             {"IP": "::", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"},
             {"IP": "0.0.0.0", "PrivatePort": 81, "PublicPort": 8081, "Type": "tcp"},
             {"PrivatePort": 53, "Type": "udp"}]
    assert display_ports(ports) == "53/udp, 0.0.0.0:8080-8081->80-81/tcp, [::]:8080->80/tcp"
    assert display_ports([]) == ""


def test_container_row_fields() -> None:
    c = {"Id": "f" * 64, "Names": ["/web", "/other/link"], "Image": "sha256:" + "a" * 64,
         "Command": "sh -c 'sleep 1000; echo hi'", "Created": 1000, "Ports": [], "State": "exited",
         "Status": "Exited (3) 2 minutes ago", "SizeRw": 2048, "SizeRootFs": 4_260_000,
         "Labels": {"b": "2", "a": "1"}, "Mounts": [{"Name": "", "Source": "/srv/some/long/path", "Driver": ""}],
         "NetworkSettings": {"Networks": {"n2": {}, "bridge": {}}}}
    row = ContainerRow(c, now=1000 + 300)
    assert (row.ID, row.Names, row.Image) == ("f" * 12, "web", "a" * 12)
    assert row.Command == '"sh -c \'sleep 1000; …"'
    assert row.RunningFor == "5 minutes ago"
    assert row.Size == "2.05kB (virtual 4.26MB)"
    assert (row.Labels, row.Label("a"), row.Label("zz")) == ("a=1,b=2", "1", "")
    assert row.Mounts == "/srv/some/long…" and row.Networks == "bridge,n2"
    full = ContainerRow(c, trunc=False)
    assert full.Names == "web,other/link" and full.ID == "f" * 64


def test_images_table() -> None:
    images: list[dict[str, Any]] = [{"Id": "sha256:" + "b" * 64, "RepoTags": ["busybox:latest", "localhost:5000/bb:1"],
               "RepoDigests": ["busybox@sha256:" + "d" * 64], "Created": 0, "Size": 4_260_000},
              {"Id": "sha256:" + "c" * 64, "RepoTags": None, "RepoDigests": None, "Created": 0, "Size": 10}]
    rows = image_rows(images, now=14 * 86400)
    assert [(r.Repository, r.Tag) for r in rows] == [("busybox", "latest"), ("localhost:5000/bb", "1"),
                                                     ("<none>", "<none>")]
    assert rows[0].Digest == "sha256:" + "d" * 64 and rows[1].Digest == "<none>"
    out = render_rows(rows, None, IMAGES_TABLE, ImageRow).splitlines()
    assert out[0] == "REPOSITORY          TAG       IMAGE ID       CREATED       SIZE"
    assert out[1] == "busybox             latest    bbbbbbbbbbbb   2 weeks ago   4.26MB"
    assert split_tag("localhost:5000/app") == ("localhost:5000/app", "<none>")


def test_network_and_stats_rows() -> None:
    net = NetworkRow({"Id": "e" * 64, "Name": "backend", "Driver": "bridge", "Scope": "local", "Internal": True})
    assert render_rows([net], "{{.ID}} {{.Name}} {{.Driver}} {{.Scope}} {{.Internal}}", "", NetworkRow) == \
        "eeeeeeeeeeee backend bridge local true\n"
    stats = StatsRow("web", {
        "id": "a" * 64, "name": "/web",
        "cpu_stats": {"cpu_usage": {"total_usage": 3_000_000_000}, "system_cpu_usage": 20_000_000_000,
                      "online_cpus": 2},
        "precpu_stats": {"cpu_usage": {"total_usage": 2_000_000_000}, "system_cpu_usage": 10_000_000_000},
        "memory_stats": {"usage": 10 << 20, "limit": 100 << 20, "stats": {"total_inactive_file": 5 << 20}},
        "networks": {"eth0": {"rx_bytes": 1450, "tx_bytes": 516}},
        "blkio_stats": {"io_service_bytes_recursive": [{"op": "Read", "value": 4096}, {"op": "Write", "value": 0}]},
        "pids_stats": {"current": 3}})
    assert (stats.CPUPerc, stats.MemUsage, stats.MemPerc) == ("20.00%", "5MiB / 100MiB", "5.00%")
    assert (stats.NetIO, stats.BlockIO, stats.PIDs, stats.Name) == ("1.45kB / 516B", "4.1kB / 0B", "3", "web")


def test_table_header_for_custom_formats() -> None:
    c = {"Id": "f" * 64, "Names": ["/web"], "Labels": {"app": "shop"}, "Created": 0}
    out = render_rows([ContainerRow(c)], 'table {{.ID}}\\t{{.Label "app"}}\\t{{.Names}}', "", ContainerRow)
    assert out == "CONTAINER ID   LABEL     NAMES\nffffffffffff   shop      web\n"
