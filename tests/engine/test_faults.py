"""Crash points inside the network layer and image pulls: kill the daemon there, restart, check.

Each test counts what a user could trip over afterwards (veths, leases, nft map
elements, half-written blobs) and checks the container or image can be used
normally once the daemon is back.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from pathlib import Path

import pytest

from harness import Daemon, start_registry, unique

REGISTRY = "/usr/bin/docker-registry"


def veths(d: Daemon) -> int:
    return d.netns_exec("ip", "-o", "link").stdout.count("veth")


def nft_elements(d: Daemon) -> int:
    out = d.netns_exec("nft", "-j", "list", "table", "ip", "coracle", check=False).stdout
    if not out:
        return 0
    return sum(len(item["map"].get("elem", [])) for item in json.loads(out)["nftables"] if "map" in item)


def leases(d: Daemon) -> int:
    db = sqlite3.connect(d.data_root / "state.db")
    try:
        return db.execute("SELECT COUNT(*) FROM net_leases").fetchone()[0]
    finally:
        db.close()


def crash_while(d: Daemon, point: str, method: str, path: str, body: object | None = None) -> None:
    d.stop()
    d.start(env={"CORACLE_FAULT": point})
    with contextlib.suppress(Exception):  # the daemon dies mid-request, as injected
        d.api(method, path, body)
    d.proc.wait(10)  # type: ignore[union-attr]  # the daemon was started above
    assert d.proc.returncode == 99, d.log.read_text()[-2000:]  # type: ignore[union-attr]  # started
    d.start()


@pytest.mark.parametrize("point", ["network-after-lease", "network-after-veth", "network-after-nft"])
def test_crash_inside_network_setup(fresh_daemon: Daemon, point: str) -> None:
    d = fresh_daemon
    d.start()
    status, body = d.api("POST", "/containers/create", {
        "Image": "busybox", "Cmd": ["sleep", "300"],
        "HostConfig": {"PortBindings": {"80/tcp": [{"HostPort": "18090"}]}}})
    assert status == 201, body
    cid = body["Id"]
    before = (veths(d), leases(d), nft_elements(d))
    crash_while(d, point, "POST", f"/containers/{cid}/start")
    assert (veths(d), leases(d), nft_elements(d)) == before
    status, body = d.api("POST", f"/containers/{cid}/start")
    assert status == 204, body
    status, info = d.api("GET", f"/containers/{cid}/json")
    assert info["State"]["Running"] and info["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"] == "18090"


def test_crash_during_live_connect(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    d.start()
    net = unique("fn")
    assert d.api("POST", "/networks/create", {"Name": net})[0] == 201
    status, body = d.api("POST", "/containers/create", {"Image": "busybox", "Cmd": ["sleep", "300"]})
    cid = body["Id"]
    assert d.api("POST", f"/containers/{cid}/start")[0] == 204
    before = (veths(d), leases(d))
    crash_while(d, "network-after-veth", "POST", f"/networks/{net}/connect", {"Container": cid})
    assert (veths(d), leases(d)) == before
    status, body = d.api("POST", f"/networks/{net}/connect", {"Container": cid})
    assert status == 200, body
    out = d.netns_exec("nsenter", f"--net=/proc/{_pid(d, cid)}/ns/net", "ip", "-o", "link").stdout
    assert "eth1" in out


def _pid(d: Daemon, cid: str) -> int:
    return d.api("GET", f"/containers/{cid}/json")[1]["State"]["Pid"]


@pytest.mark.skipif(not os.path.exists(REGISTRY), reason="needs Debian's docker-registry")
def test_crash_mid_pull_leaves_no_trusted_half_and_the_next_pull_works(fresh_daemon: Daemon, tmp_path: Path) -> None:
    d = fresh_daemon
    d.start()
    registry, port = start_registry(d.netns, tmp_path)
    repo = f"127.0.0.1:{port}/faults/app"
    try:
        status, body = d.api("POST", "/containers/create",
                             {"Image": "busybox", "Cmd": ["sh", "-c", "echo v1 > /marker"]})
        cid = body["Id"]
        d.api("POST", f"/containers/{cid}/start")
        d.api("POST", f"/containers/{cid}/wait")
        assert d.api("POST", f"/commit?container={cid}&repo={repo}&tag=1")[0] == 201
        assert d.api("DELETE", f"/containers/{cid}")[0] == 204
        status, out = d.api("POST", f"/images/{repo}/push?tag=1")
        assert status == 200 and "error" not in str(out), out
        status, out = d.api("DELETE", f"/images/{repo}:1")
        assert status == 200, out
        crash_while(d, "pull-after-blob", "POST", f"/images/create?fromImage={repo}&tag=1")
        status, _ = d.api("GET", f"/images/{repo}:1/json")
        assert status == 404  # nothing half-pulled is visible as an image
        tmp = d.data_root / "images" / "blobs" / "tmp"
        assert not tmp.exists() or not os.listdir(tmp)
        status, out = d.api("POST", f"/images/create?fromImage={repo}&tag=1")
        assert status == 200 and "error" not in str(out), out
        status, body = d.api("POST", "/containers/create", {"Image": f"{repo}:1", "Cmd": ["cat", "/marker"],
                                                              "HostConfig": {"NetworkMode": "none"}})
        cid = body["Id"]
        d.api("POST", f"/containers/{cid}/start")
        assert d.api("POST", f"/containers/{cid}/wait")[1]["StatusCode"] == 0
        status, logs = d.api("GET", f"/containers/{cid}/logs?stdout=1")
        assert "v1" in str(logs)
    finally:
        registry.kill()
        registry.wait()


def test_system_check_reports_with_dry_run_and_repairs_without(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    d.start()
    stray = d.data_root / "containers" / ("f" * 64)
    (stray / "upper").mkdir(parents=True)
    out = d.cli("system", "check", "--dry-run", "--format", "json").stdout
    assert str(stray) in out and stray.exists()
    d.cli("system", "check")
    assert not stray.exists()
    assert str(stray) not in d.cli("system", "check", "--dry-run", "--format", "json").stdout
