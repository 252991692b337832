"""3. Memory of the engine's own processes with 0, 50, 200 idle containers; per-container overhead.

Counted: every process living in the engine's host netns (daemons, containerd,
shims, docker-proxy, conmon, coracle's monitor). Container processes have their
own netns and are not counted. RSS is what the issue asks for; PSS (shared
pages split between sharers) is reported beside it because 200 shims share one
binary.
"""

from __future__ import annotations

from bench.engines import Client
from bench.measure import describe_error
from bench.sections.throughput import start_many
from bench.suite import Bench

BATCH = 10  # containers started at once while filling up


def idle_names(count: int) -> list[str]:
    return [f"idle{i}" for i in range(count)]


def fill(client: Client, have: int, want: int) -> None:
    names = idle_names(want)[have:]
    for i in range(0, len(names), BATCH):
        start_many(client, names[i:i + BATCH])


def run(bench: Bench) -> dict:
    counts = sorted(bench.config.memory_counts)
    out: dict[str, dict] = {}
    for engine in bench.engines:
        client = engine.primary
        points: dict[str, dict] = {}
        have = 0
        try:
            for count in counts:
                fill(client, have, count)
                have = count
                bench.settle()
                points[str(count)] = bench.memory(engine)
            out[client.label] = {"points": points, **_overhead(points, counts)}
        except Exception as exc:
            out[client.label] = {"points": points, "error": describe_error(exc)}
    # The idle containers stay: the CLI section measures ps/inspect against them.
    return {"results": out, "counts": counts,
            "what": "sum over the engine's processes (daemons + helpers), not the containers"}


def _overhead(points: dict[str, dict], counts: list[int]) -> dict:
    lo, hi = counts[0], counts[-1]
    if hi == lo:
        return {}
    d = hi - lo
    return {"per_container_rss_mib": (points[str(hi)]["rss_mib"] - points[str(lo)]["rss_mib"]) / d,
            "per_container_pss_mib": (points[str(hi)]["pss_mib"] - points[str(lo)]["pss_mib"]) / d,
            "per_container_processes": (points[str(hi)]["processes"] - points[str(lo)]["processes"]) / d}
