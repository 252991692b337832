"""Overlay networks across simulated hosts: throughput against the underlay, and convergence.

    .venv/bin/python -m bench.overlay [--repeat N] [--seconds S] [--publish]

With --publish the figures and the cluster's picture become the overlay
section of bench/results/latest and docs/benchmarks.md (the other sections
stay as published).

World: tests/multihost/cluster.py (hosts as network namespaces on one underlay
bridge, a coracled per host, etcd). Measured:

- throughput: iperf3 (TCP, one stream, S seconds) host h0 -> host h1 over the
  underlay, and container on h0 -> container on h1 over the overlay (the
  host's iperf3 binary run inside the containers' network namespaces), taken
  alternately; the figure is the ratio of the medians. On a shared machine
  throughput is mostly the share of CPU the two iperf3 processes get, so each
  run also gives its cost: CPU seconds (sender + receiver, as iperf3 reports
  them, softirq work done in their context included) per GB received, which
  the machine's load hardly moves.
- convergence: from the moment `run -d` is sent to host h1 until a container
  on h0 resolves the new name through its embedded resolver and completes a
  TCP connection to it (polled every 5 ms from inside that container's
  namespace); median and spread over N containers.
- cost growth: `run -d` on an overlay network (wall clock around the docker
  CLI) when the cluster already holds 0, 100 and 500 other endpoints. The
  others are published straight into etcd as a third host would (address
  claim + endpoint key, on a lease of their own), so every daemon programs
  them into its kernel and resolver as it would real ones.
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

from cluster import Cluster, cluster, wait_for  # noqa: E402
from dnslib import QTYPE, DNSRecord  # noqa: E402

from coracle.cluster.etcd import Etcd  # noqa: E402
from coracle.netns import netns as enter  # noqa: E402


def iperf(client_ns: str, server_ns: str, server_ip: str, seconds: int) -> tuple[float, float]:
    """(Gbit/s, CPU seconds per GB) of one TCP stream from client_ns to an iperf3 server in server_ns."""
    server = subprocess.Popen(["nsenter", f"--net={server_ns}", "iperf3", "-s", "-1", "-B", server_ip],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        out = subprocess.run(["nsenter", f"--net={client_ns}", "iperf3", "-c", server_ip, "-t", str(seconds), "-J"],
                             capture_output=True, text=True, check=True).stdout
        end = json.loads(out)["end"]
        received, cpu = end["sum_received"], end["cpu_utilization_percent"]
        cpu_seconds = (cpu["host_total"] + cpu["remote_total"]) / 100 * received["seconds"]
        return received["bits_per_second"] / 1e9, cpu_seconds / (received["bytes"] / 1e9)
    finally:
        server.kill()
        server.wait()


def median(runs: list[tuple[float, float]], column: int) -> float:
    return statistics.median(run[column] for run in runs)


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


def publish_others(c: Cluster, net_id: str, net_name: str, first: int, count: int, lease: int) -> None:
    """`count` endpoints of a host that does not exist (192.0.2.99), as its daemon would publish them."""
    etcd = Etcd([f"http://{ip}:2379" for ip in c.etcd.ips])
    with enter(f"/run/netns/{c.underlay}"):
        for i in range(first, first + count):
            ip = f"10.250.{i // 250}.{i % 250 + 2}"
            eid = f"{i:064x}"
            mac = f"02:00:00:00:{i // 256:02x}:{i % 256:02x}"
            etcd.put(f"/coracle/addresses/{net_id}/{ip}", eid, lease)
            etcd.put(f"/coracle/endpoints/{net_id}/{eid}", json.dumps({
                "NetworkID": net_id, "EndpointID": eid, "Container": eid, "ContainerName": f"other{i}",
                "NetworkName": net_name, "IPAddress": ip, "IPPrefixLen": 16, "MacAddress": mac,
                "DNSNames": [f"other{i}"], "Host": "192.0.2.99"}), lease)


def growth(c: Cluster, sizes: list[int], repeat: int) -> dict[int, float]:
    """Median `run -d` time on an overlay network holding each number of other endpoints."""
    h0 = c.hosts[0]
    net = c.overlay("--subnet", "10.250.0.0/16")
    net_id = h0.docker("network", "inspect", "-f", "{{.Id}}", net).stdout.strip()
    etcd = Etcd([f"http://{ip}:2379" for ip in c.etcd.ips])
    with enter(f"/run/netns/{c.underlay}"):
        lease = etcd.grant(600)
    out, published = {}, 0
    for size in sizes:
        publish_others(c, net_id, net, published, size - published, lease)
        published = size
        # measured once every host has programmed them (the watch's own work is not a start's)
        wait_for(lambda n=size: all(len(h.permanent_neighbours()) >= n for h in c.hosts), "the others programmed",
                 timeout=300)
        times = []
        for _ in range(repeat):
            started = time.monotonic()
            cid = h0.docker("run", "-d", "--network", net, "busybox", "sleep", "600").stdout.strip()
            times.append(time.monotonic() - started)
            h0.docker("rm", "-f", cid)
        out[size] = statistics.median(times)
    with enter(f"/run/netns/{c.underlay}"):
        etcd.revoke(lease)
    return out


def cluster_map(c: Cluster, net: str) -> list[dict]:
    """The cluster as the kernels see it: per host, its VXLAN device, its containers on `net` and where
    each remote MAC goes (what the report's text and drawing are made from)."""
    hosts = []
    for host in c.hosts:
        dev = host.ip_json("-d", "link", "show", "type", "vxlan")[0]
        info = dev["linkinfo"]["info_data"]
        containers = [{"name": host.docker("inspect", "-f", "{{.Name}}", cid).stdout.strip().lstrip("/"),
                       "ip": host.address_of(cid, net), "mac": host.address_of(cid, net, "MacAddress")}
                      for cid in host.docker("ps", "-q").stdout.split()]
        tunnels = []
        for line in host.remote_fdb():
            mac, _, rest = line.partition(" dev ")
            tunnels.append({"mac": mac.strip(), "to": rest.split(" dst ")[1].split()[0]})
        hosts.append({"address": host.ip, "device": dev["ifname"], "vni": info["id"], "local": info["local"],
                      "learning": bool(info.get("learning")), "mtu": dev["mtu"], "containers": containers,
                      "tunnels": tunnels})
    return hosts


def picture(hosts: list[dict]) -> str:
    """The cluster map as text, one line per host and per remote entry."""
    lines = []
    for h in hosts:
        containers = ", ".join(f"{k['name']} {k['ip']}" for k in h["containers"])
        lines.append(f"host {h['address']}: {h['device']} (VNI {h['vni']}, local {h['local']}, "
                     f"learning {'on' if h['learning'] else 'off'}, mtu {h['mtu']}) containers: {containers}")
        lines += [f"    {t['mac']} -> tunnel to {t['to']}" for t in h["tunnels"]]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--publish", action="store_true", help="lay the figures over the published report")
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
        hosts = cluster_map(c, net)
        conv, after = convergence(c, net, a_ns, max(opts.repeat, 10))
        cost = growth(c, [0, 100, 500], opts.repeat)
    print(picture(hosts))
    for label, runs in (("underlay host->host     ", under), ("overlay container->cont.", over)):
        print(f"{label} {median(runs, 0):.2f} Gbit/s, {median(runs, 1):.2f} CPU s/GB (median of {len(runs)}: "
              f"{', '.join(f'{g:.2f}' for g, _ in runs)} Gbit/s)")
    print(f"ratio overlay/underlay   {median(over, 0) / median(under, 0):.2f} in throughput, "
          f"{median(under, 1) / median(over, 1):.2f} in bytes per CPU second")
    print(f"convergence run -d on h1 -> reachable by name from h0: median {statistics.median(conv) * 1000:.0f} ms, "
          f"min {min(conv) * 1000:.0f} ms, max {max(conv) * 1000:.0f} ms over {len(conv)}; "
          f"after run -d returned: median {statistics.median(after) * 1000:.0f} ms, max {max(after) * 1000:.0f} ms")
    print("run -d on an overlay with N other endpoints in the cluster: " +
          ", ".join(f"N={n}: {t * 1000:.0f} ms" for n, t in cost.items()))
    if opts.publish:
        publish_section({
            "repeat": opts.repeat, "seconds": opts.seconds, "picture": picture(hosts), "cluster": hosts,
            "underlay": {"gbit_per_s": median(under, 0), "cpu_s_per_gb": median(under, 1)},
            "overlay": {"gbit_per_s": median(over, 0), "cpu_s_per_gb": median(over, 1)},
            "convergence_ms": {"median": statistics.median(conv) * 1000, "min": min(conv) * 1000,
                               "max": max(conv) * 1000, "after_run_median": statistics.median(after) * 1000,
                               "n": len(conv)},
            "run_d_ms_by_endpoints": {str(n): t * 1000 for n, t in cost.items()},
            "load_average": os.getloadavg()[0],
        })


def publish_section(section: dict) -> None:
    """This run's overlay figures laid over the published results (bench.report.publish)."""
    import tempfile
    from pathlib import Path

    from bench import report

    with tempfile.TemporaryDirectory() as out:
        run = {"started": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()), "sections": {"overlay": section}}
        (Path(out) / "results.json").write_text(json.dumps(run))
        report.publish(Path(out))


if __name__ == "__main__":
    main()
