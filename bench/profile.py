"""Where coracle's start time goes: py-spy on the daemon and monitor, cProfile on the CLI.

`python -m bench --profile` runs this after the sections. py-spy samples the
running coracled and monitor (no restart, --nonblocking so it does not pause
them) while containers start; its raw output (collapsed stacks) is folded into
the functions with the most samples, inclusive and self.
"""

from __future__ import annotations

import collections
import os
import pstats
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.engines import REPO, Engine
from bench.sections import startup
from bench.suite import Bench

RUNS = 20
TOP = 15
OWN_CODE = ("coracle/", "pyroute2/", "nftables", "dnslib/", "sqlite3")


def coracle(bench: Bench, engine: Engine) -> dict:
    out: dict[str, dict] = {}
    for mode in ("bridge", "none"):
        out[f"daemon and monitor, {RUNS} x run --rm --network {mode}"] = _pyspy(bench, engine, mode)
    native = next((c for c in engine.clients if c.program == "coracle"), None)
    if native:
        out["coracle CLI, one run --rm --network none"] = _cprofile_cli(bench, native)
    return out


def _pyspy(bench: Bench, engine: Engine, mode: str) -> dict:
    if not shutil.which("py-spy") and not Path(sys.executable).with_name("py-spy").exists():
        return {"error": "py-spy is not installed (pip install py-spy)"}
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    files, procs = [], []
    for pid in engine.daemon_pids():
        path = bench.out / f"pyspy-{mode}-{pid}.txt"
        files.append(path)
        procs.append(subprocess.Popen([pyspy, "record", "--pid", str(pid), "--format", "raw", "--rate", "500",
                                       "--nonblocking", "-o", str(path)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    time.sleep(1.0)  # attach
    start = time.perf_counter()
    for _ in range(RUNS):
        engine.primary.run("run", *startup.args(mode), check=False)
    wall = time.perf_counter() - start
    for p in procs:
        p.send_signal(signal.SIGINT)
    errors = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        if p.returncode not in (0, -signal.SIGINT):
            errors.append(err.decode(errors="replace").strip()[-300:])
    stacks: collections.Counter[str] = collections.Counter()
    for path in files:
        if path.exists():
            for line in path.read_text().splitlines():
                stack, _, count = line.rpartition(" ")
                if count.isdigit():
                    stacks[stack] += int(count)
    result = {"what": f"{RUNS} runs took {wall:.2f} s in all; py-spy samples at 500 Hz of coracled and the "
                      "monitor (idle threads excluded); raw stacks in " + ", ".join(p.name for p in files),
              "top": fold(stacks)}
    if errors:
        result["error"] = " | ".join(errors)
    return result


def fold(stacks: collections.Counter[str]) -> list[str]:
    """The functions holding the most samples: inclusive (anywhere on the stack) and self (on top)."""
    total = sum(stacks.values())
    if not total:
        return ["no samples"]
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    for stack, count in stacks.items():
        frames = stack.split(";")
        for frame in set(frames[1:] if frames[0].startswith(("process", "thread")) else frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    lines = [f"{total} samples; inclusive (coracle and its libraries, not the stdlib's plumbing):"]
    ours = [(f, n) for f, n in inclusive.most_common() if any(k in f for k in OWN_CODE)][:TOP]
    lines += [f"{100 * n / total:5.1f}%  {f}" for f, n in ours]
    lines += ["self:"] + [f"{100 * n / total:5.1f}%  {f}" for f, n in own.most_common(TOP)]
    return lines


def _cprofile_cli(bench: Bench, client) -> dict:  # type: ignore[no-untyped-def]
    path = bench.out / "cprofile-cli.prof"
    argv = [sys.executable, "-m", "cProfile", "-o", str(path), "-m", "coracle.cli.main", "run", *startup.args("none")]
    res = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **client.env}, cwd=REPO)
    if res.returncode != 0 or not path.exists():
        return {"error": (res.stderr or res.stdout).strip()[-500:]}
    stats = pstats.Stats(str(path))
    rows = stats.stats  # type: ignore[attr-defined]  # {(file, line, func): (cc, nc, tt, ct, callers)}
    total = max(ct for (_cc, _nc, _tt, ct, _callers) in rows.values())
    imports = max((v[3] for (f, _l, fn), v in rows.items() if fn == "_find_and_load"), default=0.0)
    ours = sorted(((v[3], f"{Path(f).name}:{line}({fn})") for (f, line, fn), v in rows.items()
                   if "coracle/" in f), reverse=True)[:TOP]
    top = [f"total {total * 1000:.0f} ms, of which importing modules {imports * 1000:.0f} ms; "
           "coracle functions by cumulative time:"]
    top += [f"{ct * 1000:7.1f} ms  {name}" for ct, name in ours]
    return {"what": f"cProfile of the CLI process ({path.name})", "top": top}
