"""8. CLI start: what a user waits for on every command, the client's own start-up included.

`version`, `ps` (no containers) and `run --rm --network none busybox true`
through every client, alternated, each timed from fork to exit: wall time and
the CPU time (user + system) of the client process, which the machine's other
load disturbs far less than wall time. The floor is the interpreter coracle's
launcher runs, started with the same flags and doing nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from bench.engines import IMAGE, REPO, Client
from bench.measure import Series, rotations
from bench.suite import Bench

COMMANDS = {"version": ["version"], "ps": ["ps"], "run --rm": ["run", "--rm", "--network", "none", IMAGE, "true"]}
FLOOR = [sys.executable, "-I", "-S", "-c", "pass"]


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process) of one run; raises if it fails."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=REPO)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stderr.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} -> exit {proc.returncode}: {err.decode(errors='replace')[-400:]}")
    return wall, usage.ru_utime + usage.ru_stime


def run(bench: Bench) -> dict:
    repeat = bench.config.cli_repeat * 3
    clients: list[Client] = bench.clients
    wall = {c.label: {k: Series() for k in COMMANDS} for c in clients}
    cpu = {c.label: {k: Series() for k in COMMANDS} for c in clients}
    for c in clients:  # warm-up: page cache, the image, bytecode
        for argv in COMMANDS.values():
            c.run(*argv, check=False)
    for key, argv in COMMANDS.items():
        for order in rotations(clients, repeat):
            for c in order:
                if wall[c.label][key].error:
                    continue
                try:
                    w, t = timed(c.cmd(*argv), c.environ())
                    wall[c.label][key].samples.append(w)
                    cpu[c.label][key].samples.append(t)
                except Exception as exc:  # recorded for the report; the other clients go on
                    wall[c.label][key].error = cpu[c.label][key].error = str(exc)[-600:]
    floor_wall, floor_cpu = Series(), Series()
    for _ in range(repeat):
        w, t = timed(FLOOR, dict(os.environ))
        floor_wall.samples.append(w)
        floor_cpu.samples.append(t)
    return {
        "results": {c.label: {k: {"wall": wall[c.label][k].summary(), "cpu": cpu[c.label][k].summary()}
                              for k in COMMANDS} for c in clients},
        "floor": {"wall": floor_wall.summary(), "cpu": floor_cpu.summary()},
        "commands": {c.label: {k: c.describe(*v) for k, v in COMMANDS.items()} for c in clients},
        "floor_command": " ".join(FLOOR),
    }
