"""Rootless mode, side by side: `python -m bench.rootless [--repeat N] [--seconds S]`.

- `run --rm` start latency of rootless coracle (bridge, none) and rootless
  Podman (bridge through its rootless network namespace, none), medians;
- iperf3 through a published port (LAN neighbour -> host port -> container)
  and from a container to the LAN neighbour, rootless coracle as a ratio of
  rootful coracle on the same topology;
- the uplink alone: pasta vs slirp4netns from a bare user+network namespace
  to the LAN neighbour, the measurement the choice of pasta rests on.

Everything runs in throwaway namespaces with a throwaway user (the tests'
RootlessUser); the figures go to stdout as JSON and a short table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "rootless")]

import harness  # noqa: E402
from rootless_support import LAN_HOST, LAN_PEER, RootlessUser  # noqa: E402

HOST_LIBS = ["-v", "/usr:/usr:ro", "-v", "/lib:/lib:ro", "-v", "/lib64:/lib64:ro"]  # iperf3 from the host
PORT = 15201


def _median_run(argv_of, repeat: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv_of(), check=True, capture_output=True, timeout=120)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _gbits(out: str) -> float:
    end = json.loads(out)["end"]
    return (end.get("sum_received") or end["sum"])["bits_per_second"] / 1e9


@contextlib.contextmanager
def _iperf_server(argv: list[str]) -> Iterator[None]:
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        yield
    finally:
        server.kill()
        server.wait()


def _lan(ns: str, *argv: str) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{ns}", *argv]


def _podman_image(user: RootlessUser) -> None:
    rootfs = harness.busybox_rootfs(user.root / "bbroot")
    archive = user.root / "bb.tar"
    with tarfile.open(archive, "w") as t:
        t.add(rootfs, arcname=".")
    archive.chmod(0o644)
    user.run(["podman", "import", "--change", "ENV PATH=/bin", str(archive), "bb"])


def latency(user: RootlessUser, repeat: int) -> dict[str, float]:
    dock = ["docker", "-H", f"unix://{user.sock}"]
    out = {}
    for mode in ("bridge", "none"):
        out[f"coracle rootless {mode}"] = _median_run(
            lambda m=mode: user.as_user([*dock, "run", "--rm", "--network", m, "busybox", "true"]), repeat)
    _podman_image(user)
    for mode in ("bridge", "none"):
        user.run(["podman", "run", "--rm", "--network", mode, "bb", "true"])  # warm: the rootless netns
        out[f"podman rootless {mode}"] = _median_run(
            lambda m=mode: user.as_user(["podman", "run", "--rm", "--network", m, "bb", "true"]), repeat)
    return out


def _datapath(docker: list[str], as_argv, lan_ns: str, host_addr: str, peer: str,  # type: ignore[no-untyped-def]
              seconds: int) -> dict[str, float]:
    name = f"iperf{secrets.token_hex(2)}"
    subprocess.run(as_argv([*docker, "run", "-d", "--name", name, "-p", f"{PORT}:5201", *HOST_LIBS, "busybox",
                            "/usr/bin/iperf3", "-s"]), check=True, capture_output=True)
    try:
        time.sleep(1)
        published = subprocess.run(_lan(lan_ns, "iperf3", "-J", "-t", str(seconds), "-c", host_addr, "-p", str(PORT)),
                                   check=True, capture_output=True, text=True).stdout
        with _iperf_server(_lan(lan_ns, "iperf3", "-s", "-p", "5202")):
            outbound = subprocess.run(as_argv([*docker, "run", "--rm", *HOST_LIBS, "busybox", "/usr/bin/iperf3",
                                               "-J", "-t", str(seconds), "-c", peer, "-p", "5202"]),
                                      check=True, capture_output=True, text=True).stdout
    finally:
        subprocess.run(as_argv([*docker, "rm", "-f", name]), capture_output=True)
    return {"published port": _gbits(published), "container to outside": _gbits(outbound)}


def rootful(seconds: int) -> dict[str, float]:
    """Rootful coracle in a host namespace with the same LAN neighbour."""
    tag = secrets.token_hex(3)
    d = harness.Daemon(tag)
    lan = f"rfl{tag}"
    d.create_netns()
    try:
        subprocess.run(["ip", "netns", "add", lan], check=True)
        subprocess.run(["ip", "link", "add", "eth0", "netns", d.netns, "type", "veth", "peer", "name", "eth0",
                        "netns", lan], check=True)
        for ns, addr in ((d.netns, LAN_HOST), (lan, LAN_PEER)):
            subprocess.run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0"], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "up"], check=True)
        subprocess.run(["ip", "-n", d.netns, "route", "add", "default", "via", LAN_PEER], check=True)
        d.start()
        return _datapath(["docker", "-H", d.host], lambda argv: argv, lan, LAN_HOST, LAN_PEER, seconds)
    finally:
        d.destroy()
        subprocess.run(["ip", "netns", "del", lan], capture_output=True)


UPLINKS = {
    "pasta": "pasta --config-net -q --no-map-gw -t none -u none -T none -U none --userns /proc/$NP/ns/user "
             "--netns /proc/$NP/ns/net --pid $D/uplink.pid",
    "slirp4netns": "slirp4netns --configure --mtu=65520 --disable-host-loopback $NP tap0 >/dev/null 2>&1 & "
                   "echo $! > $D/uplink.pid; sleep 1",
}


def uplinks(user: RootlessUser, seconds: int, rounds: int) -> dict[str, float]:
    """A bare user+network namespace joined to the LAN by each tool, iperf3 from inside to the
    neighbour; the tools take turns `rounds` times, medians."""
    runs: dict[str, list[float]] = {tool: [] for tool in UPLINKS}
    with _iperf_server(_lan(user.lan_ns, "iperf3", "-s", "-p", "5203")):
        for _ in range(rounds):
            for tool, start in UPLINKS.items():
                script = (f"D={user.home}; unshare -rn sleep 60 & NP=$!; sleep 0.3; {start}; "
                          f"nsenter --preserve-credentials -U -n -t $NP iperf3 -J -t {seconds} -c {LAN_PEER} "
                          f"-p 5203; kill $(cat $D/uplink.pid) $NP")
                runs[tool].append(_gbits(user.run(["sh", "-c", script]).stdout))
    return {tool: statistics.median(values) for tool, values in runs.items()}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.rootless")
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--uplinks-only", action="store_true", help="only pasta vs slirp4netns")
    args = p.parse_args()
    user = RootlessUser(secrets.token_hex(3))
    results: dict[str, dict[str, float]] = {}
    try:
        user.create()
        user.start_daemon()
        results["uplink alone, Gbit/s"] = uplinks(user, args.seconds, max(3, args.repeat // 3))
        if args.uplinks_only:
            print(json.dumps(results, indent=2))
            return
        results["run --rm latency, s (median)"] = latency(user, args.repeat)
        results["rootless coracle, Gbit/s"] = _datapath(["docker", "-H", f"unix://{user.sock}"], user.as_user,
                                                       user.lan_ns, LAN_HOST, LAN_PEER, args.seconds)
    finally:
        left = user.destroy()
    results["rootful coracle, Gbit/s"] = rootful(args.seconds)
    results["rootless / rootful"] = {k: v / results["rootful coracle, Gbit/s"][k]
                                     for k, v in results["rootless coracle, Gbit/s"].items()}
    print(json.dumps(results, indent=2))
    if left:
        print("left behind:", left, file=sys.stderr)


if __name__ == "__main__":
    main()
