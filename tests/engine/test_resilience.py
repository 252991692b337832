"""What keeps working while the daemon is away, under a log flood, and on a full disk."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from harness import Daemon, unique


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_ports_and_names_answer_while_the_daemon_is_down_and_after(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    d.start()
    net = unique("rn")
    assert d.api("POST", "/networks/create", {"Name": net})[0] == 201
    status, body = d.api("POST", "/containers/create?name=websrv", {
        "Image": "busybox", "Cmd": ["sh", "-c", "echo up > /index.html; httpd -f -p 80 -h /"],
        "HostConfig": {"NetworkMode": net, "PortBindings": {"80/tcp": [{"HostPort": "18100"}]}}})
    web = body["Id"]
    assert d.api("POST", f"/containers/{web}/start")[0] == 204
    status, body = d.api("POST", "/containers/create", {"Image": "busybox", "Cmd": ["sleep", "300"],
                                                          "HostConfig": {"NetworkMode": net}})
    client = body["Id"]
    assert d.api("POST", f"/containers/{client}/start")[0] == 204
    client_pid = d.api("GET", f"/containers/{client}/json")[1]["State"]["Pid"]
    time.sleep(0.3)

    def fetch_port() -> str:
        return d.netns_exec("busybox", "wget", "-q", "-O", "-", "http://127.0.0.1:18100/", check=False).stdout.strip()

    def fetch_by_name() -> str:
        return subprocess.run(["nsenter", "-t", str(client_pid), "-n", "-m", "busybox", "wget", "-q", "-O", "-",
                               "http://websrv/"], capture_output=True, text=True, timeout=10).stdout.strip()

    assert fetch_port() == "up" and fetch_by_name() == "up"
    d.stop()
    assert fetch_port() == "up"  # the kernel keeps forwarding: no proxy process to lose
    d.start()
    assert fetch_port() == "up"
    assert fetch_by_name() == "up"  # the resolver came back with the daemon


def test_a_log_flood_neither_blocks_the_daemon_nor_grows_the_monitor(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    d.start()
    status, body = d.api("POST", "/containers/create", {
        "Image": "busybox", "Cmd": ["sh", "-c", "yes 0123456789012345678901234567890123456789"],
        "HostConfig": {"NetworkMode": "none", "LogConfig": {"Type": "json-file",
                                                            "Config": {"max-size": "1m", "max-file": "2"}}}})
    cid = body["Id"]
    monitor = d.monitor_pid()
    assert monitor
    before = rss_kib(monitor)
    assert d.api("POST", f"/containers/{cid}/start")[0] == 204
    for _ in range(20):  # ps keeps answering during the flood
        assert d.api("GET", "/containers/json")[0] == 200
        time.sleep(0.1)
    after = rss_kib(monitor)
    d.api("POST", f"/containers/{cid}/kill")
    logs = sorted(p.name for p in (d.data_root / "containers" / cid).glob(f"{cid}-json.log*"))
    assert len(logs) == 2  # rotated, and no more files than max-file
    assert all((d.data_root / "containers" / cid / name).stat().st_size <= 1 << 20 for name in logs)
    assert after - before < 16 * 1024  # KiB: the flood is not buffered in memory


def test_a_full_data_root_gives_a_clear_error_and_leaves_nothing(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    d.root.mkdir(parents=True, exist_ok=True)
    d.data_root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "coracle-full", str(d.data_root)], check=True)
    try:
        d.start()
        status, body = d.api("POST", "/containers/create", {"Image": "busybox", "Cmd": ["true"]})
        assert status == 201, body
        filler = d.data_root / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=64"], capture_output=True)
        status, body = d.api("POST", "/containers/create", {"Image": "busybox", "Cmd": ["true"]})
        assert status >= 500 and "no space left" in str(body), body
        status, listed = d.api("GET", "/containers/json?all=1")
        assert status == 200 and len(listed) == 1
        assert len(list((d.data_root / "containers").iterdir())) == 1  # no half-made container left
        filler.unlink()
        status, body = d.api("POST", "/containers/create", {"Image": "busybox", "Cmd": ["true"]})
        assert status == 201, body  # and it works again once there is room
    finally:
        d.destroy()
        subprocess.run(["umount", "-l", str(d.data_root)], capture_output=True)
