"""6. DNS: latency and queries per second of the embedded resolver, asked for a container's name.

Two containers on a user-defined network (the default bridge resolves no
names); the load tool runs in container A's netns and asks the resolver A's
resolv.conf names (127.0.0.11 for Docker, the gateway for Podman) for B.
"""

from __future__ import annotations

import json
import sys

from bench import system
from bench.engines import IMAGE, REPO, Client
from bench.measure import Series, describe_error, rotations
from bench.suite import Bench

SUBNET = "10.62.0.0/24"


def resolver(pid: int) -> str:
    with open(f"/proc/{pid}/root/etc/resolv.conf") as f:
        for line in f:
            words = line.split()
            if words[:1] == ["nameserver"]:
                return words[1]
    raise RuntimeError("the container's resolv.conf names no nameserver")


def load(client: Client, pid: int, server: str, count: int, seconds: float) -> dict:
    res = system.sh("nsenter", f"--net=/proc/{pid}/ns/net", sys.executable, "-m", "bench.tools.dnsload", server,
                    "dnsb", str(count), str(seconds), cwd=REPO, timeout=count + seconds + 30)
    data = json.loads(res.stdout)
    if not data["answered"]:
        raise RuntimeError(f"{client.label}: {server} answered no A record for dnsb ({data})")
    return data


def run(bench: Bench) -> dict:
    cfg = bench.config
    setups, errors = {}, {}
    qps = {c.label: Series() for c in bench.primaries}
    lat = {c.label: Series() for c in bench.primaries}
    p99 = {c.label: Series() for c in bench.primaries}
    try:
        for client in bench.primaries:
            try:
                client.run("network", "create", "--subnet", SUBNET, "dnsnet")
                for name in ("dnsa", "dnsb"):
                    client.run("run", "-d", "--network", "dnsnet", "--name", name, IMAGE, "sleep", "3600")
                pid = client.pid("dnsa")
                setups[client.label] = (pid, resolver(pid))
            except Exception as exc:
                errors[client.label] = describe_error(exc)
        for order in rotations([c for c in bench.primaries if c.label in setups], cfg.datapath_repeat):
            for client in order:
                if client.label in errors:
                    continue
                pid, server = setups[client.label]
                try:
                    data = load(client, pid, server, cfg.dns_queries, cfg.dns_seconds)
                    qps[client.label].samples.append(data["qps"])
                    lat[client.label].samples.append(data["median_ms"])
                    p99[client.label].samples.append(data["p99_ms"])
                except Exception as exc:
                    errors[client.label] = describe_error(exc)
    finally:
        for client in bench.primaries:
            client.run("rm", "-f", "dnsa", "dnsb", check=False)
            client.run("network", "rm", "dnsnet", check=False)
    results = {}
    for client in bench.primaries:
        label = client.label
        results[label] = {"resolver": setups.get(label, (0, None))[1], "qps": qps[label].summary(),
                          "median_ms": lat[label].summary(), "p99_ms": p99[label].summary()}
        if label in errors:
            results[label]["error"] = errors[label]
    return {"results": results,
            "commands": {"setup": f"network create --subnet {SUBNET} dnsnet; run -d --network dnsnet --name dnsa|dnsb "
                                  f"{IMAGE} sleep 3600",
                         "load": f"nsenter --net=/proc/<dnsa pid>/ns/net python -m bench.tools.dnsload <resolver> dnsb "
                                 f"{cfg.dns_queries} {cfg.dns_seconds}"}}
