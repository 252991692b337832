"""11. Reads during a burst: `ps` and `inspect` latency while 16 clients create and start 200 containers.

What a user notices when a deployment tool is busy: does `ps` still answer at
once? Measured at the API (one HTTP request on the engine's socket, a new
connection each, as the CLIs make), so the client's own start-up is not in the
figure: 16 threads each create and start their share of the containers
(`--network none`, `sleep`) while one more thread calls `GET /containers/json`
back to back and another `GET /containers/{id}/json` on the first container.
Engines without a Docker API socket here (Podman runs without its service)
are left out.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

from bench.engines import IMAGE
from bench.measure import describe_error
from bench.sections.growth import _remove
from bench.suite import Bench

CLIENTS = 16


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 120) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def call(sock: str, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
    conn = UnixConnection(sock)
    try:
        conn.request(method, path, json.dumps(body) if body is not None else None,
                     {"Content-Type": "application/json"} if body is not None else {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def percentiles(samples: list[float]) -> dict:
    if not samples:
        return {"error": "no samples"}
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": at(0.5), "p95": at(0.95), "p99": at(0.99), "max": ordered[-1], "n": len(ordered)}


def _burst(sock: str, count: int) -> dict:
    names = [f"burst{i}" for i in range(count)]
    status, body = call(sock, "POST", "/containers/create?name=burst-probe",
                        {"Image": IMAGE, "Cmd": ["sleep", "3600"], "HostConfig": {"NetworkMode": "none"}})
    if status != 201:
        raise RuntimeError(f"create: {status} {body[:300]!r}")
    errors: list[str] = []
    done = threading.Event()
    reads: dict[str, list[float]] = {"ps": [], "inspect": []}

    def worker(mine: list[str]) -> None:
        for name in mine:
            for method, path, payload in (
                ("POST", f"/containers/create?name={name}",
                 {"Image": IMAGE, "Cmd": ["sleep", "3600"], "HostConfig": {"NetworkMode": "none"}}),
                ("POST", f"/containers/{name}/start", None),
            ):
                code, text = call(sock, method, path, payload)
                if code >= 300:
                    errors.append(f"{method} {path}: {code} {text[:200]!r}")
                    return

    def reader(kind: str, path: str) -> None:
        while not done.is_set():
            start = time.perf_counter()
            code, _ = call(sock, "GET", path)
            if code == 200:
                reads[kind].append(time.perf_counter() - start)

    workers = [threading.Thread(target=worker, args=(names[i::CLIENTS],)) for i in range(CLIENTS)]
    readers = [threading.Thread(target=reader, args=("ps", "/containers/json")),
               threading.Thread(target=reader, args=("inspect", "/containers/burst-probe/json"))]
    started = time.perf_counter()
    for t in readers + workers:
        t.start()
    for t in workers:
        t.join()
    burst = time.perf_counter() - started
    done.set()
    for t in readers:
        t.join()
    quiet = []  # the same read once the burst is over, with every container up
    for _ in range(20):
        start = time.perf_counter()
        call(sock, "GET", "/containers/json")
        quiet.append(time.perf_counter() - start)
    out = {"burst_seconds": burst, "ps": percentiles(reads["ps"]), "inspect": percentiles(reads["inspect"]),
           "ps_idle": percentiles(quiet)}
    if errors:
        out["error"] = f"{len(errors)} lifecycle calls failed, e.g. {errors[0]}"
    return out


def run(bench: Bench) -> dict:
    count = bench.config.burst_count
    results: dict[str, dict] = {}
    for engine in bench.engines:
        sock = getattr(engine, "sock", None)
        if not sock:
            continue
        try:
            results[engine.primary.label] = _burst(sock, count)
        except Exception as exc:
            results[engine.primary.label] = {"error": describe_error(exc)}
        finally:
            _remove(engine.primary, ["rm", "-f"], ["burst-probe", *(f"burst{i}" for i in range(count))])
    return {"count": count, "clients": CLIENTS, "results": results,
            "commands": {"burst": f"{CLIENTS} threads: POST /containers/create + /start ({count} in all, "
                                  "NetworkMode none, sleep 3600)",
                         "reads": "GET /containers/json and GET /containers/burst-probe/json back to back"}}
