"""7. CLI: `ps`, `ps -a` and `inspect` latency with the memory section's idle containers running."""

from __future__ import annotations

import contextlib
import subprocess

from bench.measure import alternate
from bench.sections.memory import fill, idle_names
from bench.sections.throughput import remove_many, running_count
from bench.suite import Bench

COMMANDS = {"ps": ["ps"], "ps -a": ["ps", "-a"], "inspect": ["inspect", "idle0"]}


def run(bench: Bench) -> dict:
    want = max(bench.config.memory_counts)
    present = {}
    try:
        for engine in bench.engines:
            client = engine.primary
            have = running_count(client)
            if have < want:
                fill(client, have, want)
            present[engine.name] = running_count(client)
        results: dict[str, dict] = {c.label: {} for c in bench.clients}
        for label, argv in COMMANDS.items():
            series = alternate(bench.clients, bench.config.cli_repeat, lambda c, a=argv: c.timed(*a),
                               key=lambda c: c.label)
            for key, s in series.items():
                results[key][label] = s.summary()
    finally:
        for engine in bench.engines:
            names = idle_names(want)
            for i in range(0, len(names), 50):
                remove_many_quietly(engine.primary, names[i:i + 50])
    return {"containers": present, "results": results,
            "commands": {c.label: {k: c.describe(*v) for k, v in COMMANDS.items()} for c in bench.clients}}


def remove_many_quietly(client, names: list[str]) -> str | None:  # type: ignore[no-untyped-def]
    """Remove what can be removed; returns the first failure (the engine's, not the bench's) or None."""
    try:
        remove_many(client, names)
        return None
    except RuntimeError as exc:
        with contextlib.suppress(subprocess.TimeoutExpired):
            client.run("rm", "-f", *names, check=False)
        return str(exc)
