"""Overlay networks across simulated hosts: throughput against the underlay, and convergence.

    .venv/bin/python -m bench.overlay [--repeat N] [--seconds S]

World: tests/multihost/cluster.py (hosts as network namespaces on one underlay
bridge, a coracled per host, etcd). Measured:

- throughput: iperf3 (TCP, one stream, S seconds) host h0 -> host h1 over the
  underlay, and container on h0 -> container on h1 over the overlay (the
  host's iperf3 binary run inside the containers' network namespaces), taken
  alternately; the figure is the ratio of the medians.
- convergence: from the moment `run -d` is sent to host h1 until a container
  on h0 resolves the new name through its embedded resolver and completes a
  TCP connection to it (polled every 5 ms from inside that container's
  namespace); median and spread over N containers.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", "tests"), os.path.join(HERE, "..", "tests", "multihost")]

from cluster import Cluster, cluster  # noqa: E402
from dnslib import QTYPE, DNSRecord  # noqa: E402

from coracle.runtime.syscalls import netns as enter  # noqa: E402


def iperf(client_ns: str, server_ns: str, server_ip: str, seconds: int) -> float:
    """Gbit/s of one TCP stream from client_ns to an iperf3 server in server_ns."""
    server = subprocess.Popen(["nsenter", f"--net={server_ns}", "iperf3", "-s", "-1", "-B", server_ip],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        out = subprocess.run(["nsenter", f"--net={client_ns}", "iperf3", "-c", server_ip, "-t", str(seconds), "-J"],
                             capture_output=True, text=True, check=True).stdout
        return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        server.kill()
        server.wait()


def reachable_by_name(ns: str, name: str, port: int) -> bool:
    """Inside `ns`: the embedded resolver knows `name` and a TCP connection to it succeeds."""
    with enter(ns):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with udp, tcp:
        udp.settimeout(0.2)
        tcp.settimeout(0.2)
        try:
            udp.sendto(DNSRecord.question(name, "A").pack(), ("127.0.0.11", 53))
            answer = DNSRecord.parse(udp.recv(512))
            ips = [str(rr.rdata) for rr in answer.rr if rr.rtype == QTYPE.A]
            if not ips:
                return False
            tcp.connect((ips[0], port))
            return True
        except OSError:
            return False


def convergence(c: Cluster, net: str, observer_ns: str, count: int) -> tuple[list[float], list[float]]:
    """(from `run -d` sent, from `run -d` returned) until the observer reaches the new container by name."""
    total, after = [], []
    for i in range(count):
        name = f"conv{i}{os.getpid()}"
        started = time.monotonic()
        c.hosts[1].docker("run", "-d", "--name", name, "--network", net, "busybox", "httpd", "-f", "-p", "80")
        returned = time.monotonic()
        while not reachable_by_name(observer_ns, name, 80):
            time.sleep(0.005)
        total.append(time.monotonic() - started)
        after.append(time.monotonic() - returned)
    return total, after


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--seconds", type=int, default=5)
    opts = p.parse_args()
    with cluster(hosts=2) as c:
        h0, h1 = c.hosts
        net = c.overlay()
        for host, name in ((h0, "ipa"), (h1, "ipb")):
            host.docker("run", "-d", "--name", name, "--network", net, "busybox", "sleep", "3600")
        a_ns, b_ns = f"/proc/{h0.pid_of('ipa')}/ns/net", f"/proc/{h1.pid_of('ipb')}/ns/net"
        b_ip = h1.address_of("ipb", net)
        under, over = [], []
        for _ in range(opts.repeat):
            under.append(iperf(f"/run/netns/{h0.daemon.netns}", f"/run/netns/{h1.daemon.netns}", h1.ip, opts.seconds))
            over.append(iperf(a_ns, b_ns, b_ip, opts.seconds))
        conv, after = convergence(c, net, a_ns, max(opts.repeat, 10))
    u, o = statistics.median(under), statistics.median(over)
    print(f"underlay host->host      {u:.2f} Gbit/s (median of {len(under)}: {', '.join(f'{x:.2f}' for x in under)})")
    print(f"overlay container->cont. {o:.2f} Gbit/s (median of {len(over)}: {', '.join(f'{x:.2f}' for x in over)})")
    print(f"ratio overlay/underlay   {o / u:.2f}")
    print(f"convergence run -d on h1 -> reachable by name from h0: median {statistics.median(conv) * 1000:.0f} ms, "
          f"min {min(conv) * 1000:.0f} ms, max {max(conv) * 1000:.0f} ms over {len(conv)}; "
          f"after run -d returned: median {statistics.median(after) * 1000:.0f} ms, max {max(after) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
