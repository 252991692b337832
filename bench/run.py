"""Entry point: `python -m bench [--quick] [--engines coracle,docker,podman] [--sections ...]`.

Starts each engine in its own throwaway host netns, runs the sections, writes
results.json, report.md and plots into --out, and always tears down everything
it started (daemons, containers, netns, cgroups, data roots), even on failure
or Ctrl-C.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench import report, system
from bench.engines import DOCKER_CLI, ENGINES, REPO, Coracle, Engine, EngineUnavailable, write_image_tar
from bench.measure import describe_error
from bench.sections import build, burst, cli, clistart, datapath, dns, growth, memory, ports, startup, throughput
from bench.suite import QUICK, Bench, Config

SECTIONS: dict[str, Callable[[Bench], dict]] = {
    "startup": startup.run,
    "throughput": throughput.run,
    "memory": memory.run,
    "cli": cli.run,          # uses the idle containers memory leaves running
    "ports": ports.run,
    "datapath": datapath.run,
    "dns": dns.run,
    "scale": ports.run_scale,
    "clistart": clistart.run,
    "build": build.run,
    "growth": growth.run,
    "burst": burst.run,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny N everywhere (seconds, for smoke tests)")
    p.add_argument("--engines", default="coracle,docker,podman", help="comma-separated subset of " + ",".join(ENGINES))
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of " + ",".join(SECTIONS))
    p.add_argument("--out", type=Path, default=None, help="results directory (default bench/results/<UTC time>)")
    p.add_argument("--publish", action="store_true",
                   help="also copy the report to docs/benchmarks.md and the run to bench/results/latest")
    p.add_argument("--coracle-clients", default="coracle,docker",
                   help="CLIs driving coracled, first one primary: coracle (its own), docker (the docker CLI)")
    p.add_argument("--profile", action="store_true", help="profile coracle (py-spy, cProfile) and report hot spots")
    p.add_argument("--render", type=Path, default=None, metavar="DIR",
                   help="only re-render report.md and plots from DIR/results.json (with --publish: publish it)")
    p.add_argument("--repeat", type=int, default=None, help="override the start-latency sample count")
    p.add_argument("--scale", type=int, default=None, help="override the number of containers in the scale section")
    return p.parse_args(argv)


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal")))
    os_name = next((line.split("=", 1)[1].strip('"') for line in Path("/etc/os-release").read_text().splitlines()
                    if line.startswith("PRETTY_NAME")), "?")
    cgroup = "v2" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "v1"
    docker_cli = system.sh(DOCKER_CLI, "--version", check=False).stdout.strip()
    return {"os": os_name, "kernel": platform.release(), "cpu": cpu, "cpus": os.cpu_count(),
            "memory_gib": round(mem_kib / 1024 / 1024, 1), "cgroup": cgroup, "python": platform.python_version(),
            "docker_cli": docker_cli}


def start_engines(names: list[str], root: Path, tag: str, image_tar: Path,
                  coracle_clients: list[str]) -> tuple[list[Engine], dict]:
    engines, info = [], {}
    for name in names:
        engine = ENGINES[name](root, tag)
        try:
            engine.start(image_tar)
            if isinstance(engine, Coracle):
                engine.use_clients(coracle_clients)
            info[name] = {"ok": True, "version": engine.version(),
                          "clients": {c.label: c.prefix() for c in engine.clients}}
            engines.append(engine)
        except Exception as exc:
            reason = str(exc) if isinstance(exc, EngineUnavailable) else describe_error(exc)
            info[name] = {"ok": False, "reason": reason}
            print(f"bench: {name} cannot run here: {reason}", file=sys.stderr)
            engine.destroy()
    return engines, info


def _raise_interrupt(signum, frame):  # type: ignore[no-untyped-def]
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    if args.render:
        report.write(json.loads((args.render / "results.json").read_text()), args.render)
        if args.publish:
            report.publish(args.render)
        return args.render
    if os.geteuid() != 0:
        sys.exit("bench: needs root (namespaces, cgroups, daemons)")
    names = [n for n in args.engines.split(",") if n]
    sections = [s for s in args.sections.split(",") if s]
    for bad in [n for n in names if n not in ENGINES] + [s for s in sections if s not in SECTIONS]:
        sys.exit(f"bench: unknown engine or section {bad!r}")
    config = QUICK if args.quick else Config()
    overrides = {k: v for k, v in (("repeat", args.repeat), ("scale", args.scale)) if v is not None}
    config = dataclasses.replace(config, **overrides)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or REPO / "bench" / "results" / stamp
    out.mkdir(parents=True, exist_ok=True)
    tag = secrets.token_hex(3)
    root = Path(f"/tmp/coracle-bench-{tag}")
    run_dirs_before = system.existing_run_dirs()
    signal.signal(signal.SIGTERM, _raise_interrupt)
    engines: list[Engine] = []
    results: dict = {"started": stamp, "quick": args.quick, "machine": machine(), "sections": {}, "timings": {}}
    try:
        root.mkdir(parents=True)
        image_tar = write_image_tar(root / "busybox-rootfs.tar")
        engines, results["engines"] = start_engines(names, root, tag, image_tar, args.coracle_clients.split(","))
        bench = Bench(config=config, engines=engines, out=out, profile=args.profile)
        results["config"] = bench.config_dict()
        for section in sections:
            print(f"bench: {section} ...", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            try:
                results["sections"][section] = SECTIONS[section](bench)
            except Exception as exc:
                results["sections"][section] = {"error": describe_error(exc)}
            results["timings"][section] = time.monotonic() - t0
            _write(out, results)
        if args.profile and any(e.name == "coracle" for e in engines):
            from bench import profile

            results["profile"] = profile.coracle(bench, next(e for e in engines if e.name == "coracle"))
    finally:
        for engine in engines:
            engine.destroy()
        for leftover in system.existing_run_dirs() - run_dirs_before:
            shutil.rmtree(leftover, ignore_errors=True)
        system.unmount_under(root)
        shutil.rmtree(root, ignore_errors=True)
        _write(out, results)
    report.write(results, out)
    if args.publish:
        report.publish(out)
    print(f"bench: results in {out}", file=sys.stderr)
    return out


def _write(out: Path, results: dict) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
