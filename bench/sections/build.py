"""9. Image builds: one 12-step Dockerfile on the busybox base, cold, rebuilt without change, and
rebuilt after changing the file a late COPY copies; and the daemon's memory while it receives a
large context (100 MiB). Docker runs its classic builder (DOCKER_BUILDKIT=0), the protocol coracled speaks;
buildah (`buildah bud`, Debian's package) runs daemonless when it is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

from bench.engines import write_image_tar
from bench.measure import Series, alternate
from bench.suite import Bench

DOCKERFILE = """\
FROM busybox
ENV APP=/app
WORKDIR /app
RUN mkdir -p /app/bin /app/etc
COPY a.txt /app/a.txt
RUN echo one > /app/etc/one
LABEL maintainer=bench
COPY b.txt /app/b.txt
RUN cat /app/a.txt /app/b.txt > /app/both
EXPOSE 8080
COPY late.txt /app/late.txt
CMD ["cat", "/app/both"]
"""
CASES = ("cold", "no change", "late COPY changed")


class _Builder:
    """A way to build: one engine's CLI (classic protocol for Docker), or buildah."""

    def __init__(self, label: str, argv: list[str], env: dict[str, str], tag: str) -> None:
        self.label, self.argv, self.env, self.tag = label, argv, env, tag

    def build(self, context: Path, *flags: str) -> float:
        start = time.monotonic()
        res = subprocess.run([*self.argv, *flags, "-t", self.tag, str(context)], capture_output=True, text=True,
                             env=self.env, timeout=600)
        took = time.monotonic() - start
        if res.returncode != 0:
            raise RuntimeError(f"{self.label}: build -> {res.returncode}: {(res.stderr or res.stdout)[-600:]}")
        return took


def _builders(bench: Bench, work: Path) -> list[_Builder]:
    out = []
    for client in bench.clients:
        env = {**client.environ(), "DOCKER_BUILDKIT": "0"}
        out.append(_Builder(client.label, client.cmd("build"), env, "bench-build:latest"))
    if shutil.which("buildah"):
        root = work / "buildah"
        store = ["buildah", "--root", str(root / "root"), "--runroot", str(root / "run")]
        _buildah_base(store, root)
        out.append(_Builder("buildah", [*store, "bud", "--layers", "--isolation", "chroot", "--network", "host",
                                        "--pull=false"], dict(os.environ), "bench-build:latest"))
    return out


def _buildah_base(store: list[str], root: Path) -> None:
    """The same busybox layer as every engine's, as buildah's local `busybox` (no registry is reachable)."""
    root.mkdir(parents=True, exist_ok=True)
    layer = write_image_tar(root / "busybox-layer.tar")

    def buildah(*args: str) -> str:
        res = subprocess.run([*store, *args], capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"buildah {' '.join(args)} -> {res.returncode}: {res.stderr[-400:]}")
        return res.stdout.strip()

    ctr = buildah("from", "scratch")
    buildah("add", ctr, str(layer), "/")
    buildah("config", "--env", "PATH=/bin", ctr)
    buildah("commit", "--quiet", ctr, "docker.io/library/busybox:latest")
    buildah("rm", ctr)


def _context(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "Dockerfile").write_text(DOCKERFILE)
    for name in ("a.txt", "b.txt", "late.txt"):
        (root / name).write_text(name + "\n")
    return root


def run(bench: Bench) -> dict:
    work = bench.out / "build-work"
    context = _context(work / "context")
    builders = _builders(bench, work)
    counter = iter(range(1 << 30))

    def cold(b: _Builder) -> float:
        return b.build(context, "--no-cache")

    def unchanged(b: _Builder) -> float:
        b.build(context)  # make sure the cache holds this very content
        return b.build(context)

    def late_changed(b: _Builder) -> float:
        b.build(context)
        (context / "late.txt").write_text(f"late {next(counter)}\n")
        return b.build(context)

    results: dict[str, dict] = {b.label: {} for b in builders}
    try:
        for case, fn in zip(CASES, (cold, unchanged, late_changed), strict=False):
            series = alternate(builders, bench.config.cli_repeat, fn, key=lambda b: b.label)
            for label, s in series.items():
                results[label][case] = s.summary()
        mib = bench.config.build_context_mib
        memory = {engine.name: _context_memory(engine, work, mib).summary() for engine in bench.engines}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    unavailable = {} if shutil.which("buildah") else {"buildah": "not installed (apt-get install buildah)"}
    return {"results": results, "context_mib": mib, "context_memory_mib": memory, "unavailable": unavailable,
            "dockerfile": DOCKERFILE}


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _context_memory(engine, work: Path, mib: int) -> Series:  # type: ignore[no-untyped-def]
    """Peak growth of the daemon's RSS (MiB) while it receives and builds a context of `mib` MiB."""
    series = Series()
    pids = engine.daemon_pids()
    if not pids:
        series.error = "no daemon process (daemonless engine)"
        return series
    root = work / "big-context"
    root.mkdir(parents=True, exist_ok=True)
    (root / "Dockerfile").write_text("FROM busybox\nLABEL context=big\n")
    with open(root / "big.bin", "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
    client = engine.primary
    env = {**client.environ(), "DOCKER_BUILDKIT": "0"}
    base = _rss_kib(pids[0])
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], _rss_kib(pids[0]))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        res = subprocess.run(client.cmd("build", "--no-cache", "-t", "bench-big:latest", str(root)),
                             capture_output=True, text=True, env=env, timeout=600)
        if res.returncode != 0:
            series.error = (res.stderr or res.stdout)[-600:]
    finally:
        done.set()
        sampler.join()
        shutil.rmtree(root, ignore_errors=True)
    series.samples.append((peak[0] - base) / 1024)
    return series
