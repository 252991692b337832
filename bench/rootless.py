"""Rootless mode, side by side: `python -m bench.rootless [--repeat N] [--seconds S]`.

- `run --rm` start latency of rootless coracle (bridge, none) and rootless
  Podman (bridge through its rootless network namespace, none), medians;
- iperf3 through a published port (LAN neighbour -> host port -> container)
  and from a container to the LAN neighbour, and the round trip of a TCP
  connection and of a UDP datagram through a published port, rootless coracle
  as a ratio of rootful coracle on the same topology (the two take turns);
  rootless, the container -> outside path is measured twice: through the
  keeper's relay (rootless/outbound.py) and, with its SYNs passed on, through
  pasta's tap as before;
- the uplink alone: pasta vs slirp4netns from a bare user+network namespace
  to the LAN neighbour, the measurement the choice of pasta rests on.

Everything runs in throwaway namespaces with a throwaway user (the tests'
RootlessUser); the figures go to stdout as JSON and a short table.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import secrets
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "rootless")]

import harness  # noqa: E402
from rootless_support import LAN_HOST, LAN_PEER, RootlessUser  # noqa: E402

from coracle.rootless.outbound import PASS, QUEUED  # noqa: E402

HOST_LIBS = ["-v", "/usr:/usr:ro", "-v", "/lib:/lib:ro", "-v", "/lib64:/lib64:ro"]  # iperf3 from the host
PORT = 15201
ECHO_PORT = 15300


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
def _lan_server(ns: str, port: int, *argv: str) -> Iterator[None]:
    """A server in namespace `ns`, from when it listens on TCP `port`."""
    server = subprocess.Popen(_lan(ns, *argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not subprocess.run(_lan(ns, "ss", "-Htln", f"sport = :{port}"), capture_output=True, text=True).stdout:
        time.sleep(0.1)
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


ECHO_SERVER = """
import socket, threading
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("", 5000))
    while True:
        data, peer = s.recvfrom(100)
        s.sendto(data, peer)
threading.Thread(target=udp, daemon=True).start()
t = socket.socket()
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("", 5000))
t.listen(64)
while True:
    c, _ = t.accept()
    c.sendall(c.recv(100))
    c.close()
"""

ROUND_TRIPS = """
import socket, statistics, sys, time
addr, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
tcp, udp = [], []
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(2)
for _ in range(n):
    start = time.perf_counter()
    with socket.create_connection((addr, port), timeout=2) as s:
        s.sendall(b"x")
        s.recv(10)
    tcp.append(time.perf_counter() - start)
    start = time.perf_counter()
    u.sendto(b"x", (addr, port))
    u.recv(10)
    udp.append(time.perf_counter() - start)
print(statistics.median(tcp) * 1e6, statistics.median(udp) * 1e6)
"""


@dataclasses.dataclass
class Side:
    """One engine of the comparison: how to drive it, its LAN neighbour's namespace, and for the
    rootless one, its rootless network namespace (where outbound TCP can be sent to pasta)."""
    docker: list[str]
    as_argv: Callable[[list[str]], list[str]]
    lan_ns: str
    rootless_netns: Callable[[], str] | None = None

    def run(self, *args: str) -> str:
        done = subprocess.run(self.as_argv([*self.docker, *args]), capture_output=True, text=True, timeout=300)
        if done.returncode:
            raise RuntimeError(f"docker {args[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
        return done.stdout

    @contextlib.contextmanager
    def servers(self) -> Iterator[None]:
        """An iperf3 server and an echo server (TCP and UDP) in containers, published."""
        tag = secrets.token_hex(2)
        self.run("run", "-d", "--name", f"iperf{tag}", "-p", f"{PORT}:5201", *HOST_LIBS, "busybox",
                 "/usr/bin/iperf3", "-s")
        self.run("run", "-d", "--name", f"echo{tag}", "-p", f"{ECHO_PORT}:5000/tcp", "-p", f"{ECHO_PORT}:5000/udp",
                 *HOST_LIBS, "busybox", "/usr/bin/python3", "-c", ECHO_SERVER)
        try:
            time.sleep(1)
            yield
        finally:
            self.run("rm", "-f", f"iperf{tag}", f"echo{tag}")

    def round(self, seconds: int) -> dict[str, float]:
        """One measurement of each path (the servers running)."""
        published = subprocess.run(_lan(self.lan_ns, "iperf3", "-J", "-t", str(seconds), "-c", LAN_HOST, "-p",
                                        str(PORT)), check=True, capture_output=True, text=True).stdout
        out = {"published port, Gbit/s": _gbits(published), **self.outbound(seconds, "")}
        if self.rootless_netns:
            with _through_pasta(self.rootless_netns()):
                out.update(self.outbound(seconds, " through pasta"))
        trips = subprocess.run(_lan(self.lan_ns, "python3", "-c", ROUND_TRIPS, LAN_HOST, str(ECHO_PORT), "200"),
                               check=True, capture_output=True, text=True).stdout.split()
        return {**out, "published TCP connect+echo, us": float(trips[0]), "published UDP echo, us": float(trips[1])}

    def outbound(self, seconds: int, how: str) -> dict[str, float]:
        """iperf3 from a container to the LAN neighbour, and round trips to an echo server there."""
        with _lan_server(self.lan_ns, 5202, "iperf3", "-s", "-p", "5202"):
            bulk = _gbits(self.run("run", "--rm", *HOST_LIBS, "busybox", "/usr/bin/iperf3", "-J", "-t", str(seconds),
                                   "-c", LAN_PEER, "-p", "5202"))
        with _lan_server(self.lan_ns, 5000, "python3", "-c", ECHO_SERVER):
            trips = self.run("run", "--rm", *HOST_LIBS, "busybox", "/usr/bin/python3", "-c", ROUND_TRIPS, LAN_PEER,
                             "5000", "200").split()
        return {f"container to outside{how}, Gbit/s": bulk, f"container to outside{how}, TCP connect+echo, us":
                float(trips[0])}


def _rootless_netns(user: RootlessUser) -> str:
    holder = json.loads(Path(user.runtime_dir, "coracle", "rootless", "holder.json").read_text())
    return f"/proc/{holder['network']}/ns/net"


@contextlib.contextmanager
def _through_pasta(netns: str) -> Iterator[None]:
    """Outbound TCP of the rootless namespace through pasta's tap, as before the relay: its SYNs
    are marked PASS before the keeper's queue sees them."""
    table = f"""table ip bench_pasta {{
        chain pass {{ type filter hook prerouting priority -155; meta mark {QUEUED} meta mark set {PASS}; }}
    }}"""
    nsenter = ["nsenter", f"--net={netns}", "nft"]
    subprocess.run([*nsenter, "-f", "-"], input=table, check=True, text=True)
    try:
        yield
    finally:
        subprocess.run([*nsenter, "delete", "table", "ip", "bench_pasta"], check=True)


@contextlib.contextmanager
def rootful() -> Iterator[Side]:
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
        yield Side(["docker", "-H", d.host], lambda argv: argv, lan)
    finally:
        d.destroy()
        subprocess.run(["ip", "netns", "del", lan], capture_output=True)


def datapaths(rootless: Side, rounds: int, seconds: int) -> dict[str, dict[str, float]]:
    """Rootless and rootful coracle take turns `rounds` times on the same paths; medians."""
    runs: dict[str, dict[str, list[float]]] = {"rootless coracle": {}, "rootful coracle": {}}
    with rootful() as root, rootless.servers(), root.servers():
        for _ in range(rounds):
            for name, side in (("rootless coracle", rootless), ("rootful coracle", root)):
                for key, value in side.round(seconds).items():
                    runs[name].setdefault(key, []).append(value)
    out = {name: {k: statistics.median(v) for k, v in by.items()} for name, by in runs.items()}
    out["rootless / rootful"] = {k: v / out["rootful coracle"][k.replace(" through pasta", "")]
                                 for k, v in out["rootless coracle"].items()}
    return out


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
    with _lan_server(user.lan_ns, 5203, "iperf3", "-s", "-p", "5203"):
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
    p.add_argument("--datapaths-only", action="store_true", help="only the published port and outbound paths")
    args = p.parse_args()
    user = RootlessUser(secrets.token_hex(3))
    results: dict[str, dict[str, float]] = {}
    try:
        user.create()
        user.start_daemon()
        if not args.datapaths_only:
            results["uplink alone, Gbit/s"] = uplinks(user, args.seconds, max(3, args.repeat // 3))
        if args.uplinks_only:
            print(json.dumps(results, indent=2))
            return
        if not args.datapaths_only:
            results["run --rm latency, s (median)"] = latency(user, args.repeat)
        rootless = Side(["docker", "-H", f"unix://{user.sock}"], user.as_user, user.lan_ns,
                        lambda: _rootless_netns(user))
        results.update(datapaths(rootless, max(3, args.repeat // 3), args.seconds))
    finally:
        left = user.destroy()
    print(json.dumps(results, indent=2))
    if left:
        print("left behind:", left, file=sys.stderr)


if __name__ == "__main__":
    main()
