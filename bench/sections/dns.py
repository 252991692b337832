"""6. DNS: latency and queries per second of the embedded resolver, asked for a container's name.

Two containers on a user-defined network (the default bridge resolves no
names); the load tool runs in container A's netns and asks the resolver A's
resolv.conf names (127.0.0.11 for Docker, the gateway for Podman) for B.

Under load: dnsperf (Debian's `dnsperf`) keeps DNSPERF_OUTSTANDING queries in
flight for dns_seconds and reports every answer's latency (-v), from which come
the percentiles; without dnsperf, the suite's own tool gives the same figures
from its window of 8. At a steady rate: dnsperf again, held to STEADY_QPS, where
the percentiles are the resolver's latency rather than a queue's.

The machine's own floor, measured with the same dnsperf in the same rounds:
dnsmasq (a resolver written in C, Debian's `dnsmasq-base`) answering the same
name from a hosts file on 127.0.0.11, alone in a throwaway namespace. What it
reaches is what this machine's cores and UDP path leave any resolver.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench import system
from bench.engines import IMAGE, REPO, Client
from bench.measure import Series, describe_error, rotations
from bench.suite import Bench

SUBNET = "10.62.0.0/24"
ADDRESS = "127.0.0.11"  # where the native floor listens, as Docker's and coracle's resolvers do
DNSPERF_OUTSTANDING = 64
STEADY_QPS = 5000
PERCENTILES = (50, 90, 99, 99.9)


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


def dnsperf(netns: str, server: str, seconds: float, queries: str, rate: int | None = None) -> dict:
    """qps and latency percentiles (ms) of every answer, asked from the namespace at `netns` with
    DNSPERF_OUTSTANDING queries in flight (and at most `rate` queries per second)."""
    limit = ["-Q", str(rate)] if rate else []
    res = system.sh("nsenter", f"--net={netns}", "dnsperf", "-s", server, "-d", queries, "-l",
                    str(seconds), "-q", str(DNSPERF_OUTSTANDING), *limit, "-t", "1", "-v", timeout=seconds + 60)
    times, qps = [], None
    for line in res.stdout.splitlines():
        words = line.split()
        if words[:1] == [">"] and len(words) >= 5:  # "> NOERROR dnsb A 0.000081"
            times.append(float(words[-1]) * 1000)
        elif line.strip().startswith("Queries per second:"):
            qps = float(words[-1])
    if not times or qps is None:
        raise RuntimeError(f"dnsperf reported nothing: {(res.stderr or res.stdout)[-400:]}")
    times.sort()
    return {"qps": qps, **{f"p{q:g}": times[min(len(times) - 1, int(q / 100 * len(times)))] for q in PERCENTILES}}


class Percentiles:
    """dnsperf's figures (qps and latency percentiles) over the rounds of one resolver."""

    def __init__(self) -> None:
        self.series = {"qps": Series(), **{f"p{q:g}": Series() for q in PERCENTILES}}

    def add(self, sample: dict) -> None:
        for key, series in self.series.items():
            series.samples.append(sample[key])

    def summary(self) -> dict:
        return {key: series.summary() for key, series in self.series.items()}


@contextlib.contextmanager
def native_resolver() -> Iterator[str]:
    """dnsmasq serving `dnsb` on 127.0.0.11:53 in a namespace of its own; yields the namespace's path."""
    ns = f"bench-dns-{secrets.token_hex(3)}"
    with tempfile.TemporaryDirectory(prefix="bench-dnsmasq-") as tmp:
        hosts = Path(tmp) / "hosts"
        hosts.write_text("10.62.0.3 dnsb\n")
        system.sh("ip", "netns", "add", ns)
        try:
            system.sh("ip", "-n", ns, "link", "set", "lo", "up")
            system.sh("ip", "netns", "exec", ns, "dnsmasq", *NATIVE_ARGS, f"--addn-hosts={hosts}",
                      f"--pid-file={tmp}/pid")  # returns once it listens (it forks then)
            yield f"/run/netns/{ns}"
        finally:
            with contextlib.suppress(OSError):
                system.kill_netns_processes(system.netns_inode(f"/run/netns/{ns}"))
            system.delete_netns(ns)


NATIVE_ARGS = ["--no-resolv", "--no-hosts", "--listen-address=127.0.0.11", "--bind-interfaces", "--port=53",
               "--user=root", "--log-facility=/dev/null"]


def run(bench: Bench) -> dict:
    cfg = bench.config
    setups, errors = {}, {}
    qps = {c.label: Series() for c in bench.primaries}
    lat = {c.label: Series() for c in bench.primaries}
    p99 = {c.label: Series() for c in bench.primaries}
    tool = "dnsperf" if shutil.which("dnsperf") else "dnsload"
    loaded = {c.label: Percentiles() for c in bench.primaries}
    steady = {c.label: Percentiles() for c in bench.primaries}
    native: dict = {}
    native_loaded, native_steady = Percentiles(), Percentiles()
    queries = str(bench.out / "dnsperf-queries.txt")
    Path(queries).write_text("dnsb A\n")
    with contextlib.ExitStack() as stack:
        native_ns = None
        if tool == "dnsperf" and shutil.which("dnsmasq"):
            try:
                native_ns = stack.enter_context(native_resolver())
                version = system.sh("dnsmasq", "--version").stdout.split()  # "Dnsmasq version 2.90 ..."
                native["server"] = f"dnsmasq {version[2]}"
            except Exception as exc:
                native["error"] = describe_error(exc)
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
            for order in rotations([c for c in bench.primaries if c.label in setups], cfg.dns_repeat):
                for client in order:
                    if client.label in errors:
                        continue
                    pid, server = setups[client.label]
                    try:
                        data = load(client, pid, server, cfg.dns_queries, cfg.dns_seconds)
                        qps[client.label].samples.append(data["qps"])
                        lat[client.label].samples.append(data["median_ms"])
                        p99[client.label].samples.append(data["p99_ms"])
                        if tool == "dnsperf":
                            loaded[client.label].add(dnsperf(f"/proc/{pid}/ns/net", server, cfg.dns_seconds, queries))
                            steady[client.label].add(dnsperf(f"/proc/{pid}/ns/net", server, cfg.dns_seconds, queries,
                                                             STEADY_QPS))
                        else:
                            loaded[client.label].add({"qps": data["qps"], **data["loaded_ms"]})
                    except Exception as exc:
                        errors[client.label] = describe_error(exc)
                if native_ns and "error" not in native:  # the floor, in the same round
                    try:
                        native_loaded.add(dnsperf(native_ns, ADDRESS, cfg.dns_seconds, queries))
                        native_steady.add(dnsperf(native_ns, ADDRESS, cfg.dns_seconds, queries, STEADY_QPS))
                    except Exception as exc:
                        native["error"] = describe_error(exc)
        finally:
            for client in bench.primaries:
                client.run("rm", "-f", "dnsa", "dnsb", check=False)
                client.run("network", "rm", "dnsnet", check=False)
    if native_loaded.series["qps"].samples:
        native.update(under_load=native_loaded.summary(), steady=native_steady.summary())
    results = {}
    for client in bench.primaries:
        label = client.label
        results[label] = {"resolver": setups.get(label, (0, None))[1], "qps": qps[label].summary(),
                          "median_ms": lat[label].summary(), "p99_ms": p99[label].summary(),
                          "under_load": loaded[label].summary()}
        if tool == "dnsperf":
            results[label]["steady"] = steady[label].summary()
        if label in errors:
            results[label]["error"] = errors[label]
    return {"results": results, "load_tool": tool, "steady_qps": STEADY_QPS if tool == "dnsperf" else None,
            "native": native,
            "commands": {"setup": f"network create --subnet {SUBNET} dnsnet; run -d --network dnsnet --name dnsa|dnsb "
                                  f"{IMAGE} sleep 3600",
                         "load": f"nsenter --net=/proc/<dnsa pid>/ns/net python -m bench.tools.dnsload <resolver> dnsb "
                                 f"{cfg.dns_queries} {cfg.dns_seconds}",
                         "under_load": f"nsenter --net=/proc/<dnsa pid>/ns/net dnsperf -s <resolver> -d <'dnsb A'> "
                                       f"-l {cfg.dns_seconds} -q {DNSPERF_OUTSTANDING} -t 1 -v" if tool == "dnsperf"
                                       else "the load above (window of 8), each answer timed",
                         "native": f"ip netns exec NS dnsmasq {' '.join(NATIVE_ARGS)} --addn-hosts=<'10.62.0.3 dnsb'>; "
                                   "the same dnsperf commands from NS"}}
