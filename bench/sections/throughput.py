"""2. Throughput: N concurrent `run -d ... sleep` until all run, then N concurrent `rm -f`."""

from __future__ import annotations

import subprocess
import time

from bench.engines import IMAGE, Client
from bench.measure import Series, describe_error, rotations
from bench.suite import Bench

TIMEOUT = 600  # an engine that hangs must not hang the bench


def parallel(client: Client, commands: list[list[str]]) -> float:
    """Start every command at once; wall time until the last one returned. Any failure raises."""
    start = time.perf_counter()
    procs = [client.popen(*cmd) for cmd in commands]
    errors = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=max(1.0, TIMEOUT - (time.perf_counter() - start)))
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
            err = b"timed out: " + err
        if p.returncode != 0:
            errors.append(err.decode(errors="replace").strip())
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(commands)} failed, e.g. {errors[0][-500:]}")
    return elapsed


def start_many(client: Client, names: list[str], *extra: str) -> float:
    return parallel(client, [["run", "-d", "--name", n, *extra, IMAGE, "sleep", "3600"] for n in names])


def remove_many(client: Client, names: list[str]) -> float:
    return parallel(client, [["rm", "-f", n] for n in names])


def running_count(client: Client) -> int:
    return len(client.run("ps", "-q").stdout.split())


def run(bench: Bench) -> dict:
    n = bench.config.concurrent
    starts = {c.label: Series() for c in bench.primaries}
    removals = {c.label: Series() for c in bench.primaries}
    for rep, order in enumerate(rotations(bench.primaries, bench.config.throughput_repeat)):
        for client in order:
            if starts[client.label].error:
                continue
            names = [f"tp{rep}-{i}" for i in range(n)]
            try:
                starts[client.label].samples.append(start_many(client, names))
                running = running_count(client)
                if running < n:
                    raise RuntimeError(f"only {running} of {n} containers running after every run -d returned")
                removals[client.label].samples.append(remove_many(client, names))
            except Exception as exc:
                starts[client.label].error = describe_error(exc)
                client.run("rm", "-f", *names, check=False)
    return {
        "n": n,
        "start": {k: v.summary() for k, v in starts.items()},
        "remove": {k: v.summary() for k, v in removals.items()},
        "commands": {c.label: [c.describe("run", "-d", "--name", "tp0-0", IMAGE, "sleep", "3600") + f"  # x{n} at once",
                               c.describe("rm", "-f", "tp0-0") + f"  # x{n} at once"]
                     for c in bench.primaries},
    }
