"""What a bench run knows: its sizes, its engines and clients, where results go."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import system
from bench.engines import Client, Engine


@dataclass(frozen=True)
class Config:
    """Sizes of every section; QUICK shrinks them so the whole suite runs in seconds."""

    repeat: int = 15               # start-latency samples per mode and client
    concurrent: int = 50           # containers started (and removed) at once
    throughput_repeat: int = 3
    memory_counts: tuple[int, ...] = (0, 50, 200)
    ports: tuple[int, ...] = (1, 100, 1000)
    ports_repeat: int = 2
    scale: int = 1000              # containers on one network, each publishing a port
    datapath_repeat: int = 3
    iperf_seconds: float = 3
    connect_seconds: float = 2
    dns_queries: int = 2000
    dns_seconds: float = 3
    dns_repeat: int = 5            # rounds per resolver: a p99 at a low rate moves with one slow wake-up
    cli_repeat: int = 10
    settle_seconds: float = 3      # quiet time before reading memory
    build_context_mib: int = 100   # the context uploaded while the daemon's memory is watched
    growth_count: int = 500        # networks, then containers, made one by one for the growth curves
    burst_count: int = 200         # containers created by 16 API clients while ps/inspect are timed


QUICK = Config(repeat=2, concurrent=3, throughput_repeat=1, memory_counts=(0, 2, 4), ports=(1, 3, 10),
               ports_repeat=1, scale=4, datapath_repeat=1, iperf_seconds=1, connect_seconds=0.3,
               dns_queries=30, dns_seconds=0.3, dns_repeat=1, cli_repeat=2, settle_seconds=0.3,
               build_context_mib=4, growth_count=3, burst_count=16)


@dataclass
class Bench:
    config: Config
    engines: list[Engine]
    out: Path
    profile: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def clients(self) -> list[Client]:
        """Every client of every running engine (coracle has two: its own CLI and docker's)."""
        return [c for e in self.engines for c in e.clients]

    @property
    def primaries(self) -> list[Client]:
        """One client per engine, for daemon-bound sections where the CLI does not matter."""
        return [e.primary for e in self.engines]

    def memory(self, engine: Engine) -> dict:
        """Resident memory of the engine's own processes (not the containers')."""
        procs = system.engine_processes(engine.inode)
        by_name: dict[str, dict] = {}
        for p in procs:
            entry = by_name.setdefault(p.comm, {"count": 0, "rss_kib": 0, "pss_kib": 0})
            entry["count"] += 1
            entry["rss_kib"] += p.rss_kib
            entry["pss_kib"] += p.pss_kib
        return {"processes": len(procs), "rss_mib": sum(p.rss_kib for p in procs) / 1024,
                "pss_mib": sum(p.pss_kib for p in procs) / 1024, "by_process": by_name}

    def settle(self) -> None:
        time.sleep(self.config.settle_seconds)

    def config_dict(self) -> dict:
        return {**asdict(self.config), "cpus": os.cpu_count()}
