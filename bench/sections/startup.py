"""1. Start latency, CLI included: `run --rm --network MODE busybox true`, and the kernel's floor."""

from __future__ import annotations

import secrets
import subprocess
import time

from bench import system
from bench.engines import IMAGE
from bench.measure import Series, alternate, describe_error
from bench.suite import Bench

MODES = {"bridge": "bridge", "none": "none", "host": "host", "container": "container:donor"}
NS_FLOOR = ["unshare", "--fork", "--pid", "--mount", "--uts", "--ipc", "--net", "true"]
# What a bridge-mode engine must do at least: netns, veth pair, enslave, address, route (ip(8), 7 execs).
NET_FLOOR = """set -e
ip netns add {ns}
ip link add {veth} netns {host} type veth peer name eth0 netns {ns}
ip -n {host} link set {veth} master bfl0 up
ip -n {ns} link set lo up
ip -n {ns} addr add 10.254.0.2/24 dev eth0
ip -n {ns} link set eth0 up
ip -n {ns} route add default via 10.254.0.1"""


def args(mode: str) -> list[str]:
    return ["--rm", "--network", MODES[mode], IMAGE, "true"]


def run(bench: Bench) -> dict:
    donors = {}
    for engine in bench.engines:
        try:
            engine.primary.run("run", "-d", "--name", "donor", IMAGE, "sleep", "3600")
            donors[engine.name] = None
        except Exception as exc:
            donors[engine.name] = describe_error(exc)
    results: dict[str, dict] = {c.label: {} for c in bench.clients}
    try:
        for mode in MODES:
            usable = [c for c in bench.clients if mode != "container" or donors[c.engine.name] is None]
            for c in usable:  # warm-up: first use of a mode may create the bridge, load caches
                c.run("run", *args(mode), check=False)
            series = alternate(usable, bench.config.repeat, lambda c, m=mode: c.timed("run", *args(m)),
                               key=lambda c: c.label)
            for c in bench.clients:
                results[c.label][mode] = (series[c.label].summary() if c.label in series
                                          else {"error": f"no donor container: {donors[c.engine.name]}"})
    finally:
        for engine in bench.engines:
            engine.primary.run("rm", "-f", "donor", check=False)
    return {
        "results": results,
        "floor": floors(bench.config.repeat),
        "commands": {c.label: {m: c.describe("run", *args(m)) for m in MODES} for c in bench.clients},
    }


def floors(repeat: int) -> dict:
    """Namespace creation alone, and network setup alone, measured the same way (wall time)."""
    out = {"namespaces": _timed_series(NS_FLOOR, repeat).summary(),
           "namespaces_command": " ".join(NS_FLOOR)}
    host = f"bench-fl-{secrets.token_hex(3)}"
    try:
        system.create_host_netns(host)
        system.sh("ip", "-n", host, "link", "add", "bfl0", "type", "bridge")
        system.sh("ip", "-n", host, "addr", "add", "10.254.0.1/24", "dev", "bfl0")
        system.sh("ip", "-n", host, "link", "set", "bfl0", "up")
        series = Series()
        for _ in range(repeat):
            ns = f"bench-fn-{secrets.token_hex(3)}"
            script = NET_FLOOR.format(ns=ns, host=host, veth=f"vfl{secrets.token_hex(3)}")
            start = time.perf_counter()
            res = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
            elapsed = time.perf_counter() - start
            system.delete_netns(ns)
            if res.returncode != 0:
                series.error = res.stderr.strip()
                break
            series.samples.append(elapsed)
        out["network"] = series.summary()
        out["network_command"] = NET_FLOOR.format(ns="NS", host="HOST", veth="VETH")
    finally:
        system.delete_netns(host)
    return out


def _timed_series(argv: list[str], repeat: int) -> Series:
    series = Series()
    for _ in range(repeat):
        start = time.perf_counter()
        res = subprocess.run(argv, capture_output=True)
        if res.returncode != 0:
            series.error = res.stderr.decode(errors="replace").strip()
            break
        series.samples.append(time.perf_counter() - start)
    return series
