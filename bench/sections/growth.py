"""10. Growth: what the Nth `network create` and the Nth `run -d` cost, up to N = 500.

A user with many networks or containers should not pay for them on every new
one. Each engine gets N networks (explicit, distinct /24 subnets, so that
Docker's small default address pool is not what is measured) and then N
sleeping containers, one command at a time through its primary CLI; every
command is timed once the CPUs are quiet (bench.measure.settle, as in the start
section: back to back, each command also paid for the clean-up the previous one left
running, and the ratio of two medians of ten moved between 0.94x and 1.2x across runs
of the same code). The summary compares the median of the first ten with the
median of the last ten (the growth ratio), and the plot shows the whole curve.
Engines run one after the other: alternating would put one engine's N objects
beside the other's, and it is each engine's own count that should matter.
"""

from __future__ import annotations

import contextlib
import statistics
import time

from bench.engines import IMAGE, Client
from bench.measure import describe_error, settle
from bench.sections.throughput import parallel
from bench.suite import Bench

WINDOW = 10  # commands averaged at each end of a curve


def subnet(i: int) -> str:
    return f"10.{150 + i // 256}.{i % 256}.0/24"


def _curve(client: Client, n: int, command: list[str]) -> list[float]:
    """Time `command` n times; "{i}" in an argument is the index."""
    times = []
    for i in range(n):
        argv = [a.replace("{i}", str(i)).replace("{subnet}", subnet(i)) for a in command]
        settle()
        start = time.perf_counter()
        client.run(*argv, timeout=120)
        times.append(time.perf_counter() - start)
    return times


def summarise(times: list[float]) -> dict:
    if len(times) < 2 * WINDOW:
        return {"times": times}
    first, last = statistics.median(times[:WINDOW]), statistics.median(times[-WINDOW:])
    return {"first": first, "last": last, "growth": last / first, "n": len(times), "times": times}


def run(bench: Bench) -> dict:
    n = bench.config.growth_count
    results: dict[str, dict] = {}
    for client in bench.primaries:
        res: dict[str, dict] = results.setdefault(client.label, {})
        for what, command, cleanup in (
            ("network create", ["network", "create", "--subnet", "{subnet}", "gnet{i}"], ["network", "rm"]),
            ("run -d", ["run", "-d", "--name", "grow{i}", "--network", "none", IMAGE, "sleep", "3600"],
             ["rm", "-f"]),
        ):
            names = [f"gnet{i}" for i in range(n)] if what == "network create" else [f"grow{i}" for i in range(n)]
            try:
                res[what] = summarise(_curve(client, n, command))
            except Exception as exc:
                res[what] = {"error": describe_error(exc)}
            finally:
                _remove(client, cleanup, names)
    return {"count": n, "results": results,
            "commands": {c.label: {"network create": c.describe("network", "create", "--subnet", subnet(0), "gnet0"),
                                   "run -d": c.describe("run", "-d", "--name", "grow0", "--network", "none", IMAGE,
                                                        "sleep", "3600")}
                         for c in bench.primaries}}


def _remove(client: Client, verb: list[str], names: list[str]) -> None:
    """In batches of 50 at once; best effort (the engine is torn down after the run anyway)."""
    for i in range(0, len(names), 50):
        with contextlib.suppress(RuntimeError):  # some were never made: the curve stopped early
            parallel(client, [[*verb, name] for name in names[i:i + 50]])
