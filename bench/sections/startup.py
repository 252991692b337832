"""1. Start latency, CLI included: `run --rm --network MODE busybox true`, and the kernel's floor."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import system
from bench.engines import DOCKER_CLI, IMAGE, REPO
from bench.measure import Series, alternate, describe_error, settle
from bench.suite import Bench
from coracle.images.builtin import layer_tar

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
        "floor": {**floors(bench.config.repeat), **client_floors(bench)},
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
        settle()
        start = time.perf_counter()
        res = subprocess.run(argv, capture_output=True)
        if res.returncode != 0:
            series.error = res.stderr.decode(errors="replace").strip()
            break
        series.samples.append(time.perf_counter() - start)
    return series


def client_floors(bench: Bench) -> dict:
    """What the docker CLI alone costs, and what runc alone costs, for `run --rm --network none` of the image.

    The CLI runs against bench.tools.instantd (answers at once, starts nothing), so its time is the CLI's
    own floor, which any engine driven by it pays; runc (the OCI runtime Docker and Podman start every
    container with) runs the root every engine imported (coracle's built-in busybox layer)."""
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        sock = f"{tmp}/instantd.sock"
        server = subprocess.Popen([sys.executable, "-m", "bench.tools.instantd", sock], stdout=subprocess.PIPE,
                                  text=True, cwd=REPO)
        try:
            if server.stdout is not None and "listening" in server.stdout.readline():
                out["docker_cli"] = _timed_series([DOCKER_CLI, "-H", f"unix://{sock}", "run", *args("none")],
                                                  bench.config.repeat).summary()
                out["docker_cli_command"] = f"docker -H unix://SOCK run {' '.join(args('none'))}"
        finally:
            server.kill()
            server.wait()
        if shutil.which("runc"):
            bundle = Path(tmp) / "bundle"
            try:
                (bundle / "rootfs").mkdir(parents=True)
                subprocess.run(["tar", "-x", "-C", str(bundle / "rootfs")], input=layer_tar()[0], check=True)
                system.sh("runc", "spec", "--bundle", str(bundle))
                config = json.loads((bundle / "config.json").read_text())
                config["process"].update(terminal=False, args=["true"])
                (bundle / "config.json").write_text(json.dumps(config))
                name = f"bench-runc-{secrets.token_hex(3)}"
                out["runc"] = _timed_series(["runc", "run", "--bundle", str(bundle), name],
                                            bench.config.repeat).summary()
                out["runc_command"] = "runc run --bundle BUNDLE NAME (runc spec's namespaces, process `true`)"
            except Exception as exc:
                out["runc"] = {"error": describe_error(exc)}
    return out

