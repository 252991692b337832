"""results.json -> report.md (ratios, targets, machine, exact commands) and PNG plots."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from bench.engines import REPO
from bench.measure import ratio

CORACLE_LABELS = ["coracle", "coracle (docker CLI)"]
BASELINES = ["docker", "podman"]
DOCS = REPO / "docs" / "benchmarks.md"
LATEST = REPO / "bench" / "results" / "latest"


def _get(d: object, *keys: object) -> object:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _num(v: object) -> float | None:
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _fmt(v: float | None, unit: str = "", digits: int = 3) -> str:
    if v is None:
        return "-"
    if unit != "s" and abs(v) >= 1000:
        return f"{v:,.0f}{unit}"
    if unit == "s":
        return f"{v * 1000:.0f} ms" if v < 10 else f"{v:.1f} s"
    return f"{v:.{digits}g}{unit}"


def _ratio_cells(value: Callable[[str], float | None], label: str) -> list[str]:
    return [_fmt(ratio(value(label), value(b)), "x") if label in CORACLE_LABELS else "" for b in BASELINES]


class Report:
    def __init__(self, results: dict) -> None:
        self.r = results
        self.s = results.get("sections", {})
        self.lines: list[str] = []

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.add("| " + " | ".join(header) + " |", "|" + "---|" * len(header))
        self.add(*("| " + " | ".join(row) + " |" for row in rows))
        self.add("")

    def labels(self, section: str, key: str = "results") -> list[str]:
        found = list(_get(self.s, section, key) or {})
        order = CORACLE_LABELS + BASELINES
        return sorted(found, key=lambda x: order.index(x) if x in order else 99)

    # ----- metrics used by the targets and the tables ---------------------------------

    def start(self, label: str, mode: str) -> float | None:
        return _num(_get(self.s, "startup", "results", label, mode, "median"))

    def ports_time(self, label: str, n: str) -> float | None:
        return _num(_get(self.s, "ports", "results", label, n, "seconds", "median"))

    def gbit(self, label: str, path: str) -> float | None:
        return _num(_get(self.s, "datapath", "results", label, "gbit_per_s", path, "median"))

    # ----- the document -------------------------------------------------------------------

    def build(self, plot_dir: str) -> str:
        """plot_dir is where the plots are as seen from the document ("" beside them, in the results dir)."""
        r = self.r
        runs = r.get("section_runs") or {}
        other_runs = {name: stamp for name, stamp in runs.items() if stamp != r.get("started")}
        whole = not runs or len(other_runs) < len(runs)  # some section still comes from the first run
        self.add("# coracle benchmarks", "",
                 (f"Run {r.get('started')}" if whole else f"Runs {min(runs.values())} to {max(runs.values())}")
                 + f"{' (quick: tiny N, figures not meaningful)' if r.get('quick') else ''}. "
                 "Same static busybox image content on every engine (coracle's built-in image; its layer imported "
                 "into Docker and Podman). Each engine runs in its own throwaway network namespace with its own "
                 "data root, socket and cgroup parent. Figures are medians of repeated runs taken alternately "
                 "engine by engine; ratios are coracle / Docker and coracle / Podman (below 1 means coracle is "
                 "faster or smaller, except for throughput rows where above 1 is better).", "",
                 "Reproduce (as root): `apt-get install docker.io podman netavark aardvark-dns buildah dnsperf "
                 "dnsmasq-base iperf3 busybox-static`, "
                 "`pip install -e '.[bench]'` (matplotlib, py-spy for `--profile`), then "
                 "`.venv/bin/python -m bench --publish --profile` (about half an hour with Docker and Podman); "
                 "`--quick` for a smoke run, `--engines coracle` for coracle alone. Timings are wall clock around "
                 "each client command (CLI start-up included), taken in-process rather than with hyperfine so that "
                 "engines can be interleaved sample by sample.", "")
        if r.get("notes"):
            self.add(f"Notes on {'this run' if whole else 'these runs'}:", "", *(f"- {n}" for n in r["notes"]), "")
        if other_runs:
            self.add(("Sections measured in later runs (same suite, published over this one): " if whole else
                      "Each section and the run it comes from (same suite): ")
                     + ", ".join(f"{name} ({stamp})" for name, stamp in sorted(other_runs.items())) + ".", "")
        self.add("What each fix changed, why some goals are missed on this machine, and the profiles behind "
                 "them: [performance.md]("
                 + ("performance.md" if plot_dir else "../../../docs/performance.md") + ").", "")
        self.machine()
        self.targets()
        self.startup(plot_dir)
        self.throughput()
        self.memory(plot_dir)
        self.ports(plot_dir)
        self.datapath()
        self.dns()
        self.cli()
        self.clistart()
        self.image_builds()
        self.growth(plot_dir)
        self.burst()
        self.overlay(plot_dir)
        self.profile()
        self.errors()
        self.commands()
        return "\n".join(self.lines) + "\n"

    def machine(self) -> None:
        m = self.r.get("machine", {})
        self.add("## Machine", "")
        self.table(["", ""], [[k, str(v)] for k, v in m.items()])
        rows = []
        for name, info in (self.r.get("engines") or {}).items():
            rows.append([name, info.get("version", "-") if info.get("ok") else "**not run**",
                         "" if info.get("ok") else info.get("reason", "")[:400].replace("\n", " ")])
        self.add("## Engines", "")
        self.table(["engine", "version", "why not run"], rows)

    def targets(self) -> None:
        rows = []

        def row(name: str, goal: str, value: float | None, ok: bool | None, note: str = "") -> None:
            status = "n/a" if ok is None else ("met" if ok else "**missed**")
            unit = "x" if goal.split()[1].rstrip(",").endswith("x") else " MiB"
            rows.append([name, goal, _fmt(value, unit, 3), status, note])

        for mode, goal in (("bridge", 0.2), ("none", 0.2)):
            v = ratio(self.start("coracle", mode), self.start("docker", mode))
            via_docker = ratio(self.start("coracle (docker CLI)", mode), self.start("docker", mode))
            row(f"{mode}-mode start vs Docker", f"<= {goal}x", v, None if v is None else v <= goal,
                f"with the docker CLI against coracled: {_fmt(via_docker, 'x')}")
        cli_floor = _num(_get(self.s, "startup", "floor", "docker_cli", "median"))
        for mode in ("bridge", "none"):
            ours, docker = self.start("coracle (docker CLI)", mode), self.start("docker", mode)
            v = ratio(ours, docker)
            if v is None or ours is None or docker is None:
                continue
            note = "see performance.md"
            if cli_floor is not None:
                note = (f"the docker CLI alone (against a daemon that answers at once) takes "
                        f"{cli_floor * 1000:.0f} ms, "
                        f"{cli_floor / docker:.3f}x of Docker's start, leaving a daemon "
                        f"{max(0.12 * docker - cli_floor, 0) * 1000:.0f} ms; coracled's share above the CLI's: "
                        f"{(ours - cli_floor) * 1000:.0f} ms, Docker's: {(docker - cli_floor) * 1000:.0f} ms "
                        f"({_fmt(ratio(ours - cli_floor, docker - cli_floor), 'x')})")
            row(f"{mode}-mode start vs Docker, both with the docker CLI", "<= 0.12x", v, v <= 0.12, note)
        ports = [str(n) for n in (_get(self.s, "ports", "counts") or [])]
        if len(ports) >= 2:
            hi, lo = ports[-1], ports[0]
            v = ratio(self.ports_time("coracle", hi), self.ports_time("coracle", lo))
            procs = _get(self.s, "ports", "results", "coracle", hi, "processes_created")
            ok = None if v is None else (v <= 1.2 and procs == 0)
            row(f"{hi} published ports vs {lo}", "<= 1.2x, 0 processes", v, ok, f"processes created: {procs}")
        mem = _num(_get(self.s, "memory", "results", "coracle", "per_container_rss_mib"))
        row("per-container memory (RSS)", "<= 2 MiB", mem, None if mem is None else mem <= 2,
            f"Docker: {_fmt(_num(_get(self.s, 'memory', 'results', 'docker', 'per_container_rss_mib')), ' MiB')}")
        v = ratio(self.gbit("coracle", "published_loopback"), self.gbit("coracle", "direct"))
        docker_v = ratio(self.gbit("docker", "published_loopback"), self.gbit("docker", "direct"))
        row("127.0.0.1 published port vs direct (iperf3)", ">= 0.95x", v, None if v is None else v >= 0.95,
            f"Docker: {_fmt(docker_v, 'x')}")
        for case, goal in (("no change", 0.3), ("cold", 0.8)):
            v = ratio(self.build_time("coracle", case), self.build_time("docker", case))
            if "build" in self.s:
                row(f"build, {case} vs Docker's classic builder", f"<= {goal}x", v, None if v is None else v <= goal,
                    "docker CLI against coracled: "
                    + _fmt(ratio(self.build_time("coracle (docker CLI)", case), self.build_time("docker", case)), "x"))
        for what, goal in (("network create", 1.2), ("run -d", 1.1)):
            v = _num(_get(self.s, "growth", "results", "coracle", what, "growth"))
            if v is not None:
                n = _get(self.s, "growth", "count")
                row(f"{what}: the {n}th vs the first", f"<= {goal}x", v, v <= goal,
                    f"Docker: {_fmt(_num(_get(self.s, 'growth', 'results', 'docker', what, 'growth')), 'x')}")
        p95 = _num(_get(self.s, "burst", "results", "coracle", "ps", "p95"))
        if p95 is not None:
            docker_p95 = _num(_get(self.s, "burst", "results", "docker", "ps", "p95"))
            burst_n = _get(self.s, "burst", "count")
            rows.append([f"`ps` p95 during a {burst_n}-container burst (API)", "<= 10 ms", f"{p95 * 1000:.1f} ms",
                         "met" if p95 <= 0.010 else "**missed**",
                         f"Docker: {'-' if docker_p95 is None else f'{docker_p95 * 1000:.1f} ms'}"])
        loaded = _num(_get(self.s, "dns", "results", "coracle", "under_load", "qps", "median"))
        if loaded is not None:
            native = _num(_get(self.s, "dns", "native", "under_load", "qps", "median"))
            low = _num(_get(self.s, "dns", "results", "coracle", "under_load", "qps", "min"))
            high = _num(_get(self.s, "dns", "results", "coracle", "under_load", "qps", "max"))
            spread = "" if low is None or high is None else f"the rounds ranged from {low:,.0f} to {high:,.0f}; "
            floor = ("" if native is None else
                     f"{_get(self.s, 'dns', 'native', 'server')}, a resolver in C alone in a namespace, "
                     f"reaches {native:,.0f} in the same rounds (coracle: {loaded / native:.2f}x of it); ")
            rows.append(["DNS queries/s (dnsperf, 64 in flight)", ">= 100,000", f"{loaded:,.0f}",
                         "met" if loaded >= 100_000 else "**missed**",
                         spread + floor + "the load generator and the kernel's UDP path share the two cores with "
                         "the resolver, whose own CPU per query is a C resolver's (performance.md)"])
        steady = _num(_get(self.s, "dns", "results", "coracle", "steady", "p99", "median"))
        if steady is not None:
            docker_steady = _num(_get(self.s, "dns", "results", "docker", "steady", "p99", "median"))
            native_p99 = _num(_get(self.s, "dns", "native", "steady", "p99", "median"))
            native_p50 = _num(_get(self.s, "dns", "native", "steady", "p50", "median"))
            our_p50 = _num(_get(self.s, "dns", "results", "coracle", "steady", "p50", "median"))
            native_steady = "" if native_p99 is None or native_p50 is None or our_p50 is None else (
                f"{_get(self.s, 'dns', 'native', 'server')} (C, alone): {native_p99 * 1000:.0f} µs, with a p50 of "
                f"{native_p50 * 1000:.0f} µs against coracle's {our_p50 * 1000:.0f} µs (the Python of one answer)")
            rows.append([f"DNS p99 at a steady {_get(self.s, 'dns', 'steady_qps')} queries/s", "<= 100 µs",
                         f"{steady * 1000:.0f} µs", "met" if steady <= 0.100 else "**missed**",
                         "; ".join([*([] if docker_steady is None else [f"Docker: {docker_steady * 1000:.0f} µs"]),
                                    *([native_steady] if native_steady else []),
                                    "the rest of a p99 at a low rate is how soon a sleeping process gets a CPU "
                                    "back (performance.md)"])])
        overlay = self.s.get("overlay") or {}
        if overlay.get("overlay"):
            v = overlay["overlay"]["gbit_per_s"] / overlay["underlay"]["gbit_per_s"]
            row("overlay vs underlay throughput (iperf3)", ">= 0.9x", v, v >= 0.9,
                "Docker 20.10's overlay: 0.72-0.79x. The kernel's own VXLAN work costs 11-16% of this underlay "
                "(a veth and a bridge): a ceiling of 0.86-0.89x (profile in performance.md)")
            conv = overlay["convergence_ms"]["median"]
            rows.append(["overlay convergence, `run -d` on B until reached by name from A", "<= 500 ms",
                         f"{conv:.0f} ms", "met" if conv <= 500 else "**missed**",
                         f"{overlay['convergence_ms']['after_run_median']:.0f} ms after `run -d` returned"])
        self.add("## Targets", "")
        self.table(["target", "goal", "coracle", "status", "note"], rows)

    def startup(self, plot_dir: str) -> None:
        modes = ["bridge", "none", "host", "container"]
        self.add("## 1. Start latency (`run --rm --network MODE busybox true`, CLI included)", "")
        rows = []
        for label in self.labels("startup"):
            for mode in modes:
                cell = _get(self.s, "startup", "results", label, mode) or {}
                rows.append([label, mode, _fmt(_num(cell.get("median")), "s"), str(cell.get("n", "-")),
                             *_ratio_cells(lambda lab, m=mode: self.start(lab, m), label), cell.get("error", "")[:200]])
        self.table(["client", "mode", "median", "n", "vs Docker", "vs Podman", "error"], rows)
        floor = _get(self.s, "startup", "floor") or {}
        self.add(f"Floor: namespaces alone (`{floor.get('namespaces_command', '')}`) "
                 f"{_fmt(_num(_get(floor, 'namespaces', 'median')), 's')}; network setup alone (netns + veth + "
                 f"bridge port + address + route with ip(8)) {_fmt(_num(_get(floor, 'network', 'median')), 's')}.", "")
        if "docker_cli" in floor or "runc" in floor:
            self.add("Floors of the two halves of a start with the docker CLI (`run --rm --network none`, "
                     "same settling, same count): the docker CLI alone against a stand-in daemon that answers "
                     f"at once and starts nothing (`{floor.get('docker_cli_command', '')}`) "
                     f"{_fmt(_num(_get(floor, 'docker_cli', 'median')), 's')}; the OCI runtime Docker and Podman "
                     f"use, alone on the image's root (`{floor.get('runc_command', '')}`) "
                     f"{_fmt(_num(_get(floor, 'runc', 'median')), 's')}"
                     f"{' (' + str(_get(floor, 'runc', 'error'))[:200] + ')' if _get(floor, 'runc', 'error') else ''}.",
                     "")
        self.image(plot_dir, "start_latency.png", "start latency per mode")

    def throughput(self) -> None:
        n = _get(self.s, "throughput", "n")
        self.add(f"## 2. Throughput ({n} concurrent `run -d ... sleep`, then {n} concurrent `rm -f`)", "")
        rows = []
        for label in self.labels("throughput", "start"):
            for what in ("start", "remove"):
                value = lambda lab, w=what: _num(_get(self.s, "throughput", w, lab, "median"))  # noqa: E731
                cell = _get(self.s, "throughput", what, label) or {}
                rows.append([label, what, _fmt(value(label), "s"), *_ratio_cells(value, label),
                             cell.get("error", "")[:200]])
        self.table(["engine", "all", "median", "vs Docker", "vs Podman", "error"], rows)

    def memory(self, plot_dir: str) -> None:
        counts = _get(self.s, "memory", "counts") or []
        self.add("## 3. Memory of the engine's processes (daemons + helpers; containers' own processes excluded)", "")
        rows = []
        for label in self.labels("memory"):
            res = _get(self.s, "memory", "results", label) or {}
            pts = res.get("points", {})
            cells = [f"{_fmt(_num(_get(pts, str(c), 'rss_mib')), ' MiB')} / "
                     f"{_get(pts, str(c), 'processes') if _get(pts, str(c)) else '-'}" for c in counts]
            per = lambda lab: _num(_get(self.s, "memory", "results", lab, "per_container_rss_mib"))  # noqa: E731
            rows.append([label, *cells, _fmt(per(label), " MiB"),
                         _fmt(_num(res.get("per_container_pss_mib")), " MiB"), *_ratio_cells(per, label),
                         res.get("error", "")[:200]])
        self.table(["engine", *[f"{c} containers (RSS / procs)" for c in counts], "per container RSS",
                    "per container PSS", "vs Docker", "vs Podman", "error"], rows)
        for label in self.labels("memory"):
            top = _get(self.s, "memory", "results", label, "points", str(counts[-1]) if counts else "", "by_process")
            if top:
                parts = ", ".join(f"{k} x{v['count']} {v['rss_kib'] / 1024:.0f} MiB" for k, v in
                                  sorted(top.items(), key=lambda kv: -kv[1]["rss_kib"]))
                self.add(f"- {label} at {counts[-1]}: {parts}")
        self.add("")
        self.image(plot_dir, "memory.png", "memory vs containers")

    def ports(self, plot_dir: str) -> None:
        counts = [str(n) for n in (_get(self.s, "ports", "counts") or [])]
        self.add("## 4. Port publishing (`run -d -p RANGE`)", "")
        rows = []
        for label in self.labels("ports"):
            for n in counts:
                cell = _get(self.s, "ports", "results", label, n) or {}
                rows.append([label, n, _fmt(self.ports_time(label, n), "s"), str(cell.get("processes_created", "-")),
                             str(cell.get("rules_added", "-")), str(cell.get("set_elements_added", "-")),
                             *_ratio_cells(lambda lab, k=n: self.ports_time(lab, k), label)])
            err = _get(self.s, "ports", "results", label, "error")
            if err:
                rows.append([label, "error", str(err)[:300], "", "", "", "", ""])
        self.table(["engine", "ports", "run -d time", "processes created", "nft rules added",
                    "set/map elements added", "vs Docker", "vs Podman"], rows)
        n = _get(self.s, "scale", "n")
        if n:
            self.add(f"### Start cost as a network fills up ({n} containers, each publishing one port)", "")
            rows = []
            for label in self.labels("scale"):
                res = _get(self.s, "scale", "results", label) or {}
                rows.append([label, str(len(res.get("seconds", []))), _fmt(_num(res.get("first_median")), "s"),
                             _fmt(_num(res.get("last_median")), "s"), _fmt(_num(res.get("growth")), "x"),
                             _fmt(_num(_get(res, "memory_at_n", "rss_mib")), " MiB"),
                             str(_get(res, "memory_at_n", "processes") or "-"), str(res.get("error", ""))[:200]])
            self.table(["engine", "started", "first starts (median)", "last starts (median)", "last / first",
                        "engine RSS at N", "engine processes at N", "error"], rows)
        self.image(plot_dir, "ports.png", "cost vs number of published ports")
        self.image(plot_dir, "scale.png", "start cost vs containers on the network")

    def datapath(self) -> None:
        paths = _get(self.s, "datapath", "paths") or []
        self.add("## 5. Data path (iperf3 Gbit/s, TCP connects/s; higher is better)", "")
        rows = []
        for label in self.labels("datapath"):
            res = _get(self.s, "datapath", "results", label) or {}
            if "error" in res:
                rows.append([label, "error", str(res["error"])[:300], "", "", "", ""])
                continue
            for path in paths:
                g = lambda lab, p=path: _num(_get(self.s, "datapath", "results", lab, "gbit_per_s", p, "median"))  # noqa: E731
                c = lambda lab, p=path: _num(_get(self.s, "datapath", "results", lab, "connects_per_s", p, "median"))  # noqa: E731
                errs = " ".join(str(_get(res, k, path, "error") or "") for k in ("gbit_per_s", "connects_per_s"))
                rows.append([label, path, _fmt(g(label)), _fmt(c(label), digits=4), *_ratio_cells(g, label),
                             errs.strip()[:200]])
        self.table(["engine", "path", "Gbit/s", "connects/s", "Gbit/s vs Docker", "vs Podman", "error"], rows)

    def dns(self) -> None:
        self.add("## 6. DNS: embedded resolver asked for a container name", "")
        rows = []
        for label in self.labels("dns"):
            res = _get(self.s, "dns", "results", label) or {}
            q = lambda lab: _num(_get(self.s, "dns", "results", lab, "qps", "median"))  # noqa: E731
            m = lambda lab: _num(_get(self.s, "dns", "results", lab, "median_ms", "median"))  # noqa: E731
            rows.append([label, str(res.get("resolver")), _fmt(q(label), digits=4), _fmt(m(label), " ms"),
                         _fmt(_num(_get(res, "p99_ms", "median")), " ms"), *_ratio_cells(q, label),
                         *_ratio_cells(m, label), str(res.get("error", ""))[:200]])
        self.table(["engine", "resolver", "queries/s", "median latency", "p99", "qps vs Docker", "qps vs Podman",
                    "latency vs Docker", "latency vs Podman", "error"], rows)
        tool = _get(self.s, "dns", "load_tool")
        if not tool:
            return
        self.add(f"Under load ({tool}: {_get(self.s, 'dns', 'commands', 'under_load')}), latency of every answer:", "")
        self.dns_percentiles("under_load")
        rate = _get(self.s, "dns", "steady_qps")
        if rate:
            self.add(f"At a steady {rate:,} queries/s (the same, with `-Q {rate}`):", "")
            self.dns_percentiles("steady")

    def dns_percentiles(self, key: str) -> None:
        rows = []
        for label in self.labels("dns"):
            def pick(lab: str, k: str) -> float | None:
                return _num(_get(self.s, "dns", "results", lab, key, k, "median"))
            cells = [_fmt(pick(label, "qps"), digits=4)]
            cells += [_fmt(None if pick(label, k) is None else pick(label, k) * 1000, " µs")  # type: ignore[operator]
                      for k in ("p50", "p90", "p99", "p99.9")]
            rows.append([label, *cells, *_ratio_cells(lambda lab: pick(lab, "qps"), label),
                         *_ratio_cells(lambda lab: pick(lab, "p99"), label)])
        if _get(self.s, "dns", "native", key):  # the machine's floor: a resolver in C, alone, same dnsperf
            figures = [_num(_get(self.s, "dns", "native", key, k, "median"))
                       for k in ("qps", "p50", "p90", "p99", "p99.9")]
            server = _get(self.s, "dns", "native", "server")
            rows.append([f"{server} (C, no engine: the floor)", _fmt(figures[0], digits=4),
                         *(_fmt(None if v is None else v * 1000, " µs") for v in figures[1:]), "", "", "", ""])
        self.table(["engine", "queries/s", "p50", "p90", "p99", "p99.9", "qps vs Docker", "qps vs Podman",
                    "p99 vs Docker", "p99 vs Podman"], rows)

    def cli(self) -> None:
        present = _get(self.s, "cli", "containers") or {}
        self.add(f"## 7. CLI latency with idle containers running ({present})", "")
        rows = []
        for label in self.labels("cli"):
            for cmd in ("ps", "ps -a", "inspect"):
                v = lambda lab, c=cmd: _num(_get(self.s, "cli", "results", lab, c, "median"))  # noqa: E731
                err = _get(self.s, "cli", "results", label, cmd, "error") or ""
                rows.append([label, cmd, _fmt(v(label), "s"), *_ratio_cells(v, label), str(err)[:200]])
        self.table(["client", "command", "median", "vs Docker", "vs Podman", "error"], rows)

    def clistart(self) -> None:
        if "clistart" not in self.s:
            return
        floor = _get(self.s, "clistart", "floor") or {}
        self.add("## 8. CLI start: one command, client start-up included", "",
                 f"Wall and CPU (user + system of the client process) medians. Floor: "
                 f"`{_get(self.s, 'clistart', 'floor_command')}` = {_fmt(_num(_get(floor, 'wall', 'median')), 's')} "
                 f"wall, {_fmt(_num(_get(floor, 'cpu', 'median')), 's')} CPU.", "")
        rows = []
        for label in self.labels("clistart"):
            for cmd in ("version", "ps", "run --rm"):
                def v(lab: str, kind: str, c: str = cmd) -> float | None:
                    return _num(_get(self.s, "clistart", "results", lab, c, kind, "median"))
                err = _get(self.s, "clistart", "results", label, cmd, "wall", "error") or ""
                rows.append([label, cmd, _fmt(v(label, "wall"), "s"), _fmt(v(label, "cpu"), "s"),
                             *_ratio_cells(lambda lab: v(lab, "wall"), label), str(err)[:200]])
        self.table(["client", "command", "wall", "CPU", "wall vs Docker", "wall vs Podman", "error"], rows)

    def build_time(self, label: str, case: str) -> float | None:
        return _num(_get(self.s, "build", "results", label, case, "median"))

    def image_builds(self) -> None:
        if "build" not in self.s:
            return
        self.add("## 9. Image builds: a 12-step Dockerfile on busybox (Docker: classic builder)", "")
        rows = []
        for label in self.labels("build"):
            for case in ("cold", "no change", "late COPY changed"):
                v = lambda lab, c=case: self.build_time(lab, c)  # noqa: E731
                cells = [_fmt(ratio(v(label), v(b)), "x") if label in CORACLE_LABELS else ""
                         for b in ("docker", "buildah")]
                err = _get(self.s, "build", "results", label, case, "error") or ""
                rows.append([label, case, _fmt(v(label), "s"), *cells, str(err)[:200]])
        self.table(["client", "build", "median", "vs Docker", "vs buildah", "error"], rows)
        for name, why in (_get(self.s, "build", "unavailable") or {}).items():
            self.add(f"{name}: {why}.", "")
        memory = _get(self.s, "build", "context_memory_mib") or {}
        self.add(f"Daemon RSS growth while receiving and building a {_get(self.s, 'build', 'context_mib')} MiB "
                 "context:", "")
        self.table(["engine", "peak growth", "error"],
                   [[name, _fmt(_num(_get(m, "median")), " MiB"), str(_get(m, "error") or "")[:200]]
                    for name, m in memory.items()])

    def growth(self, plot_dir: str) -> None:
        res = _get(self.s, "growth", "results") or {}
        if not res:
            return
        n = _get(self.s, "growth", "count")
        self.add(f"## 10. Growth: the Nth network and the Nth container, up to {n}", "",
                 "One command at a time through each engine's CLI, each started once the CPUs are quiet; "
                 "medians of the first and the last ten.", "")
        rows = []
        for label in self.labels("growth"):
            for what in ("network create", "run -d"):
                cell = _get(res, label, what) or {}
                rows.append([label, what, _fmt(_num(cell.get("first")), "s"), _fmt(_num(cell.get("last")), "s"),
                             _fmt(_num(cell.get("growth")), "x"), str(cell.get("error", ""))[:200]])
        self.table(["engine", "command", "first 10", "last 10", "growth", "error"], rows)
        if note := _get(self.s, "growth", "note"):  # where the engines' curves come from different runs
            self.add(str(note), "")
        self.image(plot_dir, "growth.png", "cost of the Nth network and the Nth container")

    def burst(self) -> None:
        res = _get(self.s, "burst", "results") or {}
        if not res:
            return
        self.add(f"## 11. Reads during a burst: {_get(self.s, 'burst', 'clients')} API clients create and start "
                 f"{_get(self.s, 'burst', 'count')} containers", "",
                 "Latency of one API request (new connection each), so no CLI start-up is in these figures.", "")
        rows = []
        for label in self.labels("burst"):
            cell = res.get(label) or {}
            for kind in ("ps", "inspect", "ps_idle"):
                q = cell.get(kind) or {}
                rows.append([label, kind.replace("_idle", " (after, idle)"),
                             *(_fmt(None if _num(q.get(k)) is None else q[k] * 1000, " ms") for k in
                               ("p50", "p95", "p99", "max")), str(q.get("n", "-")),
                             _fmt(_num(cell.get("burst_seconds")), "s") if kind == "ps" else "",
                             str(cell.get("error", ""))[:200] if kind == "ps" else ""])
        self.table(["engine", "read", "p50", "p95", "p99", "max", "n", "burst took", "error"], rows)

    def overlay(self, plot_dir: str) -> None:
        o = self.s.get("overlay") or {}
        if not o.get("overlay"):
            return
        under, over, conv = o["underlay"], o["overlay"], o["convergence_ms"]
        self.add("## 12. Overlay network across two hosts (coracle alone, `python -m bench.overlay --publish`)", "",
                 "Two hosts as network namespaces on one underlay bridge, a coracled each, one etcd member. "
                 f"iperf3, one TCP stream, {o['repeat']} x {o['seconds']} s per path, taken alternately; "
                 f"load average {o['load_average']:.1f} when it ended. Docker 20.10's classic overlay "
                 "(cluster store) reached 0.72-0.79x of the underlay on a similar setup; Podman has none.", "")
        ratio = over["gbit_per_s"] / under["gbit_per_s"]
        per_cpu = under["cpu_s_per_gb"] / over["cpu_s_per_gb"]
        self.table(["path", "Gbit/s", "CPU s per GB (sender + receiver)"], [
            ["underlay, host -> host", _fmt(under["gbit_per_s"], ""), _fmt(under["cpu_s_per_gb"], "")],
            ["overlay, container -> container", _fmt(over["gbit_per_s"], ""), _fmt(over["cpu_s_per_gb"], "")],
            ["overlay / underlay", f"{ratio:.2f}x (goal >= 0.9x)", f"{per_cpu:.2f}x in bytes per CPU second"]])
        self.add(f"Convergence, from `run -d` sent to host B until a container on host A reaches the new name: "
                 f"median {conv['median']:.0f} ms (min {conv['min']:.0f}, max {conv['max']:.0f}, n {conv['n']}; "
                 f"goal <= 500 ms); {conv['after_run_median']:.0f} ms after `run -d` returned.", "",
                 "`run -d` on the overlay with N other endpoints in the cluster: "
                 + ", ".join(f"N={n}: {t:.0f} ms" for n, t in o["run_d_ms_by_endpoints"].items()) + ".", "",
                 "The cluster as its kernels showed it during the run (VXLAN devices, static forwarding entries, "
                 "containers):", "", "```", o["picture"], "```", "")
        if o.get("cluster"):
            self.image(plot_dir, "overlay.png", "the cluster drawn from the run")

    def profile(self) -> None:
        prof = self.r.get("profile")
        if not prof:
            return
        self.add("## Where coracle's time goes (profiles)", "",
                 f"Taken in run {self.r.get('profile_run') or self.r.get('started')}.", "")
        for name, entry in prof.items():
            self.add(f"### {name}", "", entry.get("what", ""), "")
            if entry.get("error"):
                self.add(f"error: {entry['error']}", "")
            for line in entry.get("top", []):
                self.add(f"    {line}")
            self.add("")

    def errors(self) -> None:
        failed = {k: v["error"] for k, v in self.s.items() if isinstance(v, dict) and "error" in v}
        if failed:
            self.add("## Sections that failed", "")
            self.add(*(f"- {k}: {v[:500]}" for k, v in failed.items()), "")

    def commands(self) -> None:
        self.add("## Exact commands", "", "Each engine's client prefix:", "")
        for _name, info in (self.r.get("engines") or {}).items():
            for label, cmd in (info.get("clients") or {}).items():
                self.add(f"- {label}: `{cmd}`")
        self.add("", "Per section:", "", "```json",
                 json.dumps({k: v.get("commands") for k, v in self.s.items() if isinstance(v, dict)}, indent=1),
                 "```", "", f"Sizes: `{json.dumps(self.r.get('config'))}`", "")

    def image(self, plot_dir: str, name: str, alt: str) -> None:
        self.add(f"![{alt}]({plot_dir}{name})", "")


def plots(results: dict, out: Path) -> list[str]:
    """PNG plots; returns the names written (matplotlib missing -> none, the report still works)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    s = results.get("sections", {})
    written = []

    def save(fig, name: str) -> None:  # type: ignore[no-untyped-def]
        fig.tight_layout()
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        written.append(name)

    start = _get(s, "startup", "results") or {}
    if start:
        modes = ["bridge", "none", "host", "container"]
        fig, ax = plt.subplots(figsize=(8, 4))
        width = 0.8 / max(1, len(start))
        for i, (label, res) in enumerate(start.items()):
            ys = [(_num(_get(res, m, "median")) or 0) * 1000 for m in modes]
            ax.bar([x + i * width for x in range(len(modes))], ys, width, label=label)
        floor = _num(_get(s, "startup", "floor", "network", "median"))
        if floor:
            ax.axhline(floor * 1000, color="grey", linestyle="--", label="network setup floor (ip)")
        ax.set_xticks([x + width * (len(start) - 1) / 2 for x in range(len(modes))], modes)
        ax.set_ylabel("ms (median, CLI included)")
        ax.set_title("run --rm --network MODE busybox true")
        ax.legend(fontsize=8)
        save(fig, "start_latency.png")
    mem = _get(s, "memory", "results") or {}
    if mem:
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, res in mem.items():
            pts = res.get("points", {})
            xs = sorted(int(k) for k in pts)
            ax.plot(xs, [pts[str(x)]["rss_mib"] for x in xs], marker="o", label=label)
        ax.set_xlabel("idle containers")
        ax.set_ylabel("engine RSS (MiB)")
        ax.legend(fontsize=8)
        save(fig, "memory.png")
    ports = _get(s, "ports", "results") or {}
    if ports:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        for label, res in ports.items():
            xs = sorted(int(k) for k in res if k.isdigit())
            a1.plot(xs, [res[str(x)]["seconds"].get("median", 0) for x in xs], marker="o", label=label)
            a2.plot(xs, [res[str(x)]["processes_created"] for x in xs], marker="o", label=label)
        a1.set_yscale("log")
        for ax, ylabel in ((a1, "run -d seconds (log)"), (a2, "processes created")):
            ax.set_xscale("log")
            ax.set_xlabel("published ports")
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=8)
        save(fig, "ports.png")
    growth = _get(s, "growth", "results") or {}
    if growth:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, what in zip(axes, ("network create", "run -d"), strict=True):
            for label, res in growth.items():
                times = _get(res, what, "times") or []
                ax.plot(range(1, len(times) + 1), [t * 1000 for t in times], linewidth=0.8, label=label)
            ax.set_xlabel(f"Nth {'network' if what == 'network create' else 'container'}")
            ax.set_ylabel(f"{what} ms (CLI included)")
            ax.legend(fontsize=8)
        save(fig, "growth.png")
    scale = _get(s, "scale", "results") or {}
    if scale:
        fig, ax = plt.subplots(figsize=(8, 4))
        for label, res in scale.items():
            ys = res.get("seconds") or []
            ax.plot(range(1, len(ys) + 1), [y * 1000 for y in ys], linewidth=0.8, label=label)
        ax.set_xlabel("Nth container on the network (each publishes a port)")
        ax.set_ylabel("run -d ms")
        ax.legend(fontsize=8)
        save(fig, "scale.png")
    cluster = _get(s, "overlay", "cluster") or []
    if cluster:
        save(draw_cluster(plt, cluster), "overlay.png")
    return written


def draw_cluster(plt, hosts: list[dict]):  # type: ignore[no-untyped-def]
    """The overlay's cluster as a run saw it: each host with its VXLAN device and containers, the
    underlay beneath, and one arc per host pair that has tunnel entries (labelled with the MACs
    each side sends that way)."""
    from matplotlib.patches import FancyBboxPatch

    fig, ax = plt.subplots(figsize=(4.5 * len(hosts), 4.2))
    width, gap = 3.6, 1.2
    x_of = {}
    for i, h in enumerate(hosts):
        x = i * (width + gap)
        x_of[h["address"]] = x + width / 2
        ax.add_patch(FancyBboxPatch((x, 1.0), width, 2.6, boxstyle="round,pad=0.05", fc="#eef3fb", ec="#4a6fa5"))
        ax.text(x + width / 2, 3.4, f"host {h['address']}", ha="center", fontsize=10, weight="bold")
        ax.add_patch(FancyBboxPatch((x + 0.3, 1.2), width - 0.6, 0.5, boxstyle="round,pad=0.02", fc="#ffe9c7",
                                    ec="#b07a2a"))
        ax.text(x + width / 2, 1.45, f"{h['device']}  VNI {h['vni']}  mtu {h['mtu']}", ha="center", va="center",
                fontsize=8)
        for j, k in enumerate(h["containers"]):
            y = 2.9 - j * 0.45
            ax.add_patch(FancyBboxPatch((x + 0.3, y - 0.18), width - 0.6, 0.36, boxstyle="round,pad=0.02",
                                        fc="white", ec="#555"))
            ax.text(x + width / 2, y, f"{k['name']}  {k['ip']}  {k['mac']}", ha="center", va="center", fontsize=7)
            ax.plot([x + width / 2, x + width / 2], [y - 0.18, 1.7], color="#999", linewidth=0.6)
        ax.plot([x + width / 2, x + width / 2], [1.2, 0.35], color="#4a6fa5", linewidth=1)
    ax.plot([-0.2, len(hosts) * (width + gap) - gap + 0.2], [0.35, 0.35], color="#4a6fa5", linewidth=3)
    ax.text(-0.2, 0.1, "underlay (UDP 4789)", fontsize=8, color="#4a6fa5")
    pairs: dict[tuple[str, str], list[str]] = {}
    for h in hosts:
        for t in h["tunnels"]:
            if t["to"] in x_of:
                pairs.setdefault((h["address"], t["to"]), []).append(t["mac"])
    for n, ((src, dst), macs) in enumerate(sorted(pairs.items())):
        x0, x1 = x_of[src], x_of[dst]
        bend = 0.25 + 0.1 * n  # every arc bends upwards, the later ones higher
        ax.annotate("", xy=(x1, 3.7), xytext=(x0, 3.7), arrowprops={
            "arrowstyle": "->", "color": "#b07a2a", "connectionstyle": f"arc3,rad={-bend if x0 < x1 else bend}"})
        ax.text((x0 + x1) / 2, 3.78 + bend * abs(x1 - x0) / 2, f"{src} -> {dst}: {', '.join(macs)}", ha="center",
                fontsize=7, color="#b07a2a", backgroundcolor="white")
    ax.set_xlim(-0.5, len(hosts) * (width + gap) - gap + 0.5)
    ax.set_ylim(0, 4.2 + (0.25 + 0.1 * len(pairs)) * (width + gap) * max(1, len(hosts) - 1) / 2)
    ax.axis("off")
    ax.set_title("overlay: VXLAN tunnels as the hosts' kernels hold them (static FDB entries, no flooding)",
                 fontsize=9)
    return fig


def write(results: dict, out: Path) -> Path:
    plots(results, out)
    path = out / "report.md"
    path.write_text(Report(results).build(""))
    return path


def merged(run: dict, published: dict | None) -> dict:
    """A run's sections laid over the published results: a partial run replaces only what it measured.

    Each section keeps the stamp of the run it came from (`section_runs`), and the
    report says which sections are from another run, so figures taken at different
    times are never presented as one run's.
    """
    if not published:
        return {**run, "section_runs": run.get("section_runs")
                or {name: run.get("started") for name in run.get("sections", {})}}
    out = {**published, "sections": dict(published.get("sections", {})),
           "section_runs": dict(published.get("section_runs")
                                or {name: published.get("started") for name in published.get("sections", {})})}
    for name, section in run.get("sections", {}).items():
        out["sections"][name] = section
        out["section_runs"][name] = run.get("started")
    out["engines"] = {**(published.get("engines") or {}), **(run.get("engines") or {})}
    if run.get("machine"):  # the machine as the newest run saw it (its Python, its Docker CLI)
        out["machine"] = run["machine"]
    if run.get("profile"):  # a run that profiled replaces the profiles, and says when they were taken
        out["profile"], out["profile_run"] = run["profile"], run.get("started")
    return out


def publish(out: Path) -> None:
    """bench/results/latest becomes the published results with this run's sections laid over them;
    docs/benchmarks.md is their report with plot links."""
    run = json.loads((out / "results.json").read_text())
    previous = LATEST / "results.json"
    published = json.loads(previous.read_text()) if previous.exists() and LATEST.resolve() != out.resolve() else None
    results = merged(run, published)
    if LATEST.resolve() != out.resolve():
        LATEST.mkdir(parents=True, exist_ok=True)
        if run.get("profile"):  # the raw stacks of the profiles it replaces go with them
            for stale in LATEST.glob("pyspy-*.txt"):
                stale.unlink()
        for item in out.iterdir():  # this run's plots and profiles replace their namesakes only
            target = LATEST / item.name
            if item.is_dir():
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(item, target)
            else:
                shutil.copy2(item, target)
    (LATEST / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    plots(results, LATEST)
    (LATEST / "report.md").write_text(Report(results).build(""))
    DOCS.write_text(Report(results).build("../bench/results/latest/"))
