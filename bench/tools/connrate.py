"""TCP connect rate: `serve PORT` accepts and closes; `client HOST PORT SECONDS` counts connects.

Run inside whichever network namespace the measurement needs (nsenter); prints
one JSON line. The client resets instead of closing (SO_LINGER 0) so that a run
of tens of thousands of connections does not exhaust ports in TIME_WAIT.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time

LINGER_RESET = struct.pack("ii", 1, 0)


def serve(port: int) -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(4096)
    print(json.dumps({"listening": port}), flush=True)
    while True:
        conn, _ = srv.accept()
        conn.close()


def client(host: str, port: int, seconds: float) -> dict:
    count = failures = 0
    latencies = []
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        s.settimeout(2)
        t0 = time.perf_counter()
        try:
            s.connect((host, port))
            s.recv(1)  # the server's close: the connection really reached it
            latencies.append(time.perf_counter() - t0)
            count += 1
        except OSError:
            failures += 1
        finally:
            s.close()
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {"connects": count, "failures": failures, "seconds": elapsed, "rate": count / elapsed,
            "median_ms": latencies[len(latencies) // 2] * 1000 if latencies else None}


def main() -> None:
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    else:
        print(json.dumps(client(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))))


if __name__ == "__main__":
    main()
