"""5. Data path: iperf3 throughput and TCP connect rate into a container, four ways.

The servers (iperf3 -s, bench.tools.connrate serve) run from the host's
filesystem inside container A's network namespace (nsenter), so the image
needs nothing extra. Clients run in the engine's host netns, or in container
B's netns for the container-to-container path.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from bench import system
from bench.engines import IMAGE, REPO, Client
from bench.measure import Series, describe_error, rotations
from bench.suite import Bench

IPERF_PORT, CONN_PORT = 5201, 9000
PUB_IPERF, PUB_CONN = 15201, 19000
PATHS = ["direct", "published_host_address", "published_loopback", "container_to_container"]


@contextmanager
def server(argv: list[str], ready: str) -> Iterator[subprocess.Popen]:
    """A background server; yields once it printed `ready`, kills it afterwards."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    try:
        seen = []
        for line in proc.stdout:  # type: ignore[union-attr]
            seen.append(line)
            if ready in line:
                break
        else:
            raise RuntimeError(f"server {argv[-3:]} did not start: {''.join(seen)[-500:]}")
        yield proc
    finally:
        proc.kill()
        proc.wait()


class Setup:
    """Containers A (servers, published ports) and B (a peer on the same bridge) of one engine."""

    def __init__(self, client: Client) -> None:
        self.client = client
        client.run("run", "-d", "--name", "dpa", "-p", f"{PUB_IPERF}:{IPERF_PORT}", "-p", f"{PUB_CONN}:{CONN_PORT}",
                   IMAGE, "sleep", "3600")
        client.run("run", "-d", "--name", "dpb", IMAGE, "sleep", "3600")
        self.pid_a, self.pid_b = client.pid("dpa"), client.pid("dpb")
        self.ip_a = client.ip("dpa")

    def targets(self, path: str) -> tuple[list[str], str, int, int]:
        """(nsenter prefix of the client, address, iperf port, connect port) for a path."""
        host = ["nsenter", f"--net={self.client.engine.netns_path}"]
        return {
            "direct": (host, self.ip_a, IPERF_PORT, CONN_PORT),
            "published_host_address": (host, system.HOST_ADDR, PUB_IPERF, PUB_CONN),
            "published_loopback": (host, "127.0.0.1", PUB_IPERF, PUB_CONN),
            "container_to_container": (["nsenter", f"--net=/proc/{self.pid_b}/ns/net"], self.ip_a, IPERF_PORT,
                                       CONN_PORT),
        }[path]

    def servers(self, stack: ExitStack) -> None:
        ns = ["nsenter", f"--net=/proc/{self.pid_a}/ns/net"]
        stack.enter_context(server([*ns, "iperf3", "-s", "-p", str(IPERF_PORT), "--forceflush"], "listening"))
        stack.enter_context(server([*ns, sys.executable, "-m", "bench.tools.connrate", "serve", str(CONN_PORT)],
                                   "listening"))

    def close(self) -> None:
        self.client.run("rm", "-f", "dpa", "dpb", check=False)


def iperf(prefix: list[str], addr: str, port: int, seconds: float) -> float:
    res = system.sh(*prefix, "iperf3", "-c", addr, "-p", str(port), "-t", str(seconds), "-J",
                    timeout=seconds + 30, check=False)
    data = json.loads(res.stdout) if res.stdout.strip() else {}
    if res.returncode != 0 or "error" in data:
        raise RuntimeError(f"iperf3 to {addr}:{port}: {data.get('error') or res.stderr.strip()}")
    return data["end"]["sum_received"]["bits_per_second"] / 1e9


def connect_rate(prefix: list[str], addr: str, port: int, seconds: float) -> float:
    res = system.sh(*prefix, sys.executable, "-m", "bench.tools.connrate", "client", addr, str(port), str(seconds),
                    cwd=REPO, timeout=seconds + 30)
    data = json.loads(res.stdout)
    if not data["connects"]:
        raise RuntimeError(f"no TCP connection to {addr}:{port} succeeded ({data['failures']} failed)")
    return data["rate"]


def run(bench: Bench) -> dict:
    cfg = bench.config
    gbits = {c.label: {p: Series() for p in PATHS} for c in bench.primaries}
    rates = {c.label: {p: Series() for p in PATHS} for c in bench.primaries}
    broken: dict[str, str] = {}
    with ExitStack() as stack:
        setups = {}
        for client in bench.primaries:
            try:
                setup = Setup(client)
                stack.callback(setup.close)
                setup.servers(stack)
                setups[client.label] = setup
            except Exception as exc:
                client.run("rm", "-f", "dpa", "dpb", check=False)
                broken[client.label] = describe_error(exc)
        for order in rotations([c for c in bench.primaries if c.label in setups], cfg.datapath_repeat):
            for path in PATHS:
                for client in order:
                    prefix, addr, iperf_port, conn_port = setups[client.label].targets(path)
                    _sample(gbits[client.label][path],
                            lambda t=(prefix, addr, iperf_port): iperf(*t, cfg.iperf_seconds))
                    _sample(rates[client.label][path],
                            lambda t=(prefix, addr, conn_port): connect_rate(*t, cfg.connect_seconds))
    results = {}
    for client in bench.primaries:
        label = client.label
        results[label] = ({"error": broken[label]} if label in broken else
                          {"gbit_per_s": {p: s.summary() for p, s in gbits[label].items()},
                           "connects_per_s": {p: s.summary() for p, s in rates[label].items()}})
    return {"results": results, "paths": PATHS,
            "commands": {
                "containers": "run -d --name dpa -p 15201:5201 -p 19000:9000 busybox:latest sleep 3600; "
                              "run -d --name dpb busybox:latest sleep 3600",
                "servers": "nsenter --net=/proc/<dpa pid>/ns/net iperf3 -s -p 5201; "
                           "nsenter --net=/proc/<dpa pid>/ns/net python -m bench.tools.connrate serve 9000",
                "iperf3": "nsenter --net=<host netns | dpb netns> iperf3 -c <addr> -p <port> "
                          f"-t {cfg.iperf_seconds} -J",
                "connect rate": f"nsenter --net=<...> python -m bench.tools.connrate client <addr> <port> "
                                f"{cfg.connect_seconds}",
                "addresses": {"direct": "<dpa IP>:5201", "published_host_address": f"{system.HOST_ADDR}:15201",
                              "published_loopback": "127.0.0.1:15201", "container_to_container": "<dpa IP>:5201"},
            }}


def _sample(series: Series, fn) -> None:  # type: ignore[no-untyped-def]
    if series.error:
        return
    try:
        series.samples.append(fn())
    except Exception as exc:
        series.error = describe_error(exc)
