"""DNS load: latency of sequential queries, then queries per second (and their latency) with a window in flight.

`python -m bench.tools.dnsload SERVER NAME COUNT SECONDS [WINDOW]`, run inside
the querying container's network namespace; prints one JSON line.
"""

from __future__ import annotations

import json
import select
import socket
import sys
import time

from dnslib import QTYPE, DNSRecord


def _query(name: str, qid: int) -> bytes:
    q = DNSRecord.question(name, "A")
    q.header.id = qid
    return q.pack()


def _answered(packet: bytes) -> bool:
    reply = DNSRecord.parse(packet)
    return any(rr.rtype == QTYPE.A for rr in reply.rr)


def latency(sock: socket.socket, name: str, count: int) -> dict:
    times, answered, lost = [], 0, 0
    for i in range(count):
        t0 = time.perf_counter()
        sock.send(_query(name, i & 0xFFFF))
        if not select.select([sock], [], [], 1.0)[0]:
            lost += 1
            continue
        data = sock.recv(4096)
        times.append(time.perf_counter() - t0)
        answered += _answered(data)
    times.sort()
    return {"queries": count, "answered": answered, "lost": lost, "median_ms": _quantile_ms(times, 0.5),
            "p99_ms": _quantile_ms(times, 0.99)}


def _quantile_ms(sorted_times: list[float], q: float) -> float | None:
    if not sorted_times:
        return None
    return sorted_times[min(len(sorted_times) - 1, int(q * len(sorted_times)))] * 1000


def throughput(sock: socket.socket, name: str, seconds: float, window: int) -> dict:
    """Keep `window` queries in flight for `seconds`; also the latency of each under that load."""
    base = _query(name, 0)
    sent_at: dict[int, float] = {}
    times: list[float] = []
    sent = received = answered = 0

    def send() -> None:
        nonlocal sent
        qid = sent & 0xFFFF
        sent_at[qid] = time.perf_counter()
        sock.send(qid.to_bytes(2, "big") + base[2:])
        sent += 1

    start = time.perf_counter()
    deadline = start + seconds
    for _ in range(window):
        send()
    while time.perf_counter() < deadline:
        if not select.select([sock], [], [], 0.5)[0]:
            send()  # a lost query: keep the window full
            continue
        data = sock.recv(4096)
        t = sent_at.pop(int.from_bytes(data[:2], "big"), None)
        if t is not None:
            times.append(time.perf_counter() - t)
        received += 1
        answered += _answered(data) if received % 100 == 1 else 0
        send()
    elapsed = time.perf_counter() - start
    times.sort()
    return {"qps": received / elapsed, "sent": sent, "received": received, "window": window,
            "sampled_answers_ok": answered > 0,
            "loaded_ms": {f"p{q:g}": _quantile_ms(times, q / 100) for q in (50, 90, 99, 99.9)}}


def main() -> None:
    server, name, count, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    window = int(sys.argv[5]) if len(sys.argv) > 5 else 8
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((server, 53))
    out = {"server": server, "name": name, **latency(sock, name, count)}
    out.update(throughput(sock, name, seconds, window))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
