"""4. Port publishing: `run -d` with 1, 100, 1000 published ports (time, processes, firewall objects),
and the start cost of the Nth container on a network whose N-1 others each publish a port."""

from __future__ import annotations

import statistics
import subprocess

from bench import system
from bench.engines import IMAGE, Client, Engine
from bench.measure import Series, describe_error, rotations
from bench.sections.cli import remove_many_quietly
from bench.suite import Bench

FIRST_PORT = 20000
SCALE_PORT = 30000
SCALE_SUBNET = "10.60.0.0/21"  # room for 2000 containers; a bridge holds at most 1024 ports anyway


def spec(count: int) -> str:
    if count == 1:
        return f"{FIRST_PORT}:{FIRST_PORT}"
    last = FIRST_PORT + count - 1
    return f"{FIRST_PORT}-{last}:{FIRST_PORT}-{last}"


def _publish_once(bench: Bench, client: Client, count: int, name: str) -> dict:
    engine = client.engine
    procs_before = len(system.engine_processes(engine.inode))
    fw_before = system.firewall_objects(engine.netns)
    try:
        seconds = client.timed("run", "-d", "--name", name, "-p", spec(count), IMAGE, "sleep", "3600", timeout=900)
        bench.settle()
        procs_after = len(system.engine_processes(engine.inode))
        fw_after = system.firewall_objects(engine.netns)
    finally:
        client.run("rm", "-f", name, check=False, timeout=900)
    return {"seconds": seconds, "processes_created": procs_after - procs_before,
            "rules_added": fw_after["rules"] - fw_before["rules"],
            "set_elements_added": fw_after["set_elements"] - fw_before["set_elements"]}


def run(bench: Bench) -> dict:
    results: dict[str, dict] = {c.label: {} for c in bench.primaries}
    failed: dict[str, str] = {}
    for client in bench.primaries:  # warm-up: what an engine starts once for its first published port
        client.run("run", "--rm", "-p", spec(1), IMAGE, "true", check=False, timeout=900)
    for count in bench.config.ports:
        runs: dict[str, list[dict]] = {c.label: [] for c in bench.primaries}
        for rep, order in enumerate(rotations(bench.primaries, bench.config.ports_repeat)):
            for client in order:
                if client.label in failed:
                    continue
                try:
                    runs[client.label].append(_publish_once(bench, client, count, f"pp{count}-{rep}"))
                except Exception as exc:
                    failed[client.label] = f"{count} ports: {describe_error(exc)}"
        for label, samples in runs.items():
            if samples:
                results[label][str(count)] = {
                    "seconds": Series([s["seconds"] for s in samples]).summary(),
                    **{k: max(s[k] for s in samples) for k in ("processes_created", "rules_added",
                                                                 "set_elements_added")}}
    for label, error in failed.items():
        results[label]["error"] = error
    return {"counts": list(bench.config.ports), "results": results,
            "commands": {c.label: {str(n): c.describe("run", "-d", "--name", "pp", "-p", spec(n), IMAGE,
                                                      "sleep", "3600")
                                   for n in bench.config.ports} for c in bench.primaries}}


def run_scale(bench: Bench) -> dict:
    """Engine after engine (not interleaved: 3 x N containers at once would not fit in memory)."""
    n = bench.config.scale
    out = {}
    for engine in bench.engines:
        out[engine.primary.label] = _scale_one(bench, engine, n)
    return {"n": n, "results": out,
            "commands": {c.label: [c.describe("network", "create", "--subnet", SCALE_SUBNET, "scalenet"),
                                   c.describe("run", "-d", "--network", "scalenet", "--name", "scI",
                                              "-p", f"{SCALE_PORT}+I:80", IMAGE, "sleep", "3600")]
                         for c in bench.primaries}}


def _scale_one(bench: Bench, engine: Engine, n: int) -> dict:
    client = engine.primary
    times: list[float] = []
    result: dict = {"seconds": times}
    try:
        client.run("network", "create", "--subnet", SCALE_SUBNET, "scalenet")
        for i in range(n):
            times.append(client.timed("run", "-d", "--network", "scalenet", "--name", f"sc{i}",
                                      "-p", f"{SCALE_PORT + i}:80", IMAGE, "sleep", "3600"))
        bench.settle()
        result["memory_at_n"] = bench.memory(engine)
        result["firewall_at_n"] = system.firewall_objects(engine.netns)
    except Exception as exc:
        result["error"] = f"after {len(times)} containers: {describe_error(exc)}"
    finally:
        names = [f"sc{i}" for i in range(len(times) + 1)]
        for i in range(0, len(names), 50):
            failure = remove_many_quietly(client, names[i:i + 50])
            if failure:
                result["removal_error"] = failure[-600:]
                break
        try:
            client.run("network", "rm", "scalenet", check=False, timeout=120)
        except subprocess.TimeoutExpired:
            result.setdefault("removal_error", "network rm timed out")
    window = max(1, min(10, len(times) // 4))
    if times:
        result["first_median"] = statistics.median(times[:window])
        result["last_median"] = statistics.median(times[-window:])
        result["window"] = window
        result["growth"] = result["last_median"] / result["first_median"]
    return result
