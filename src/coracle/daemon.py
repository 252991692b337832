"""`coracled`: the daemon. Flags follow dockerd's names where they exist.

Start-up order: lock the data root (two daemons never share one), open the
state, make sure the monitor runs (started by the keeper; both outlive us),
restore networks, then reconcile containers against what runs (by /proc) and
what the monitor still supervises, and only then accept API requests.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import logging
import os
import signal
import sys
import threading
import time

from coracle import __version__

log = logging.getLogger("coracle")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="coracled", description="coracle container engine daemon")
    p.add_argument("-H", "--host", default="unix:///run/coracle/coracle.sock", help="Unix socket to listen on")
    p.add_argument("--data-root", default="/var/lib/coracle")
    p.add_argument("--exec-root", default="/run/coracle")
    p.add_argument("--pidfile", default=None, help="default: <exec-root>/coracled.pid")
    p.add_argument("--cgroup-parent", default="coracle")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "error", "fatal"])
    p.add_argument("--bridge", dest="bridge_name", default="coracle0", help="device name of the default bridge")
    p.add_argument("--bip", default=None, help="address/prefix of the default bridge (e.g. 172.17.0.1/16)")
    p.add_argument("--default-address-pool", action="append", default=[],
                   help="base=CIDR,size=N; pools for new networks (repeatable)")
    p.add_argument("--no-new-privileges", action="store_true", help="set no_new_privs for every container")
    p.add_argument("--firewall", default="nftables", choices=["nftables", "none"],
                   help="firewall backend for NAT and published ports (none: plumbing only)")
    p.add_argument("--insecure-registry", action="append", default=[],
                   help="registry reached over plain http (loopback registries always are)")
    p.add_argument("--userns-remap", default="",
                   help='"default" or user[:group]: container root runs as that identity\'s subordinate ids')
    p.add_argument("--group", default="", help="group owning the API socket (default root only)")
    p.add_argument("--version", action="version", version=f"coracled {__version__}")
    return p.parse_args(argv)


def _pools(specs: list[str]) -> list[tuple[str, int]]:
    pools = []
    for spec in specs:
        parts = dict(kv.split("=", 1) for kv in spec.split(","))
        pools.append((parts["base"], int(parts.get("size", 24))))
    return pools


class DataRootLock:
    """An exclusive flock on the data root: a second daemon fails fast with a clear message."""

    def __init__(self, data_root: str) -> None:
        os.makedirs(data_root, exist_ok=True)
        self.fd = os.open(os.path.join(data_root, "coracled.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode().strip() or "another process"
            sys.exit(f"coracled: the data root {data_root} is in use by another daemon (pid {holder})")
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    level = {"warn": "WARNING", "fatal": "CRITICAL"}.get(args.log_level, args.log_level.upper())
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.host.startswith("unix://"):
        sys.exit("coracled: only unix:// sockets are supported (the API is root's: no TCP listener)")
    socket_path = args.host[len("unix://"):]
    lock = DataRootLock(args.data_root)
    os.makedirs(args.exec_root, exist_ok=True)
    pidfile = args.pidfile or os.path.join(args.exec_root, "coracled.pid")
    with open(pidfile, "w") as f:
        f.write(str(os.getpid()))

    from coracle.api.server import build_router
    from coracle.api.http import serve
    from coracle.engine.check import check
    from coracle.engine.engine import Engine
    from coracle.engine.events import EventBus
    from coracle.images import ImageStore
    from coracle.network import NetworkManager
    from coracle.runtime.client import MonitorClient
    from coracle.runtime.limits import raise_nofile
    from coracle.store import Store

    raise_nofile()  # a few descriptors per container (log follows, attach streams, sockets)

    started = time.monotonic()
    store = Store(os.path.join(args.data_root, "state.db"))
    events = EventBus()
    images = ImageStore(os.path.join(args.data_root, "images"), store, insecure_registries=args.insecure_registry)
    network = NetworkManager(store, args.exec_root, bridge_name=args.bridge_name, bip=args.bip,
                             default_pools=_pools(args.default_address_pool) or None, firewall=args.firewall)
    monitor = MonitorClient(args.exec_root)
    monitor_pid = monitor.ensure_running()
    engine = Engine(store=store, images=images, network=network, monitor=monitor, events=events,
                    data_root=args.data_root, exec_root=args.exec_root, cgroup_parent=args.cgroup_parent,
                    no_new_privileges=args.no_new_privileges)
    if args.userns_remap:
        from coracle.errors import InvalidParameter
        from coracle.runtime.userns import Remap

        try:
            engine.userns_remap = Remap.load(args.userns_remap)
        except (InvalidParameter, OSError) as exc:
            sys.exit(f"coracled: --userns-remap={args.userns_remap}: {exc}")
    network.start()
    exit_stream = monitor.events()  # subscribe before looking, so no exit falls in between
    report = engine.restore()
    repaired = check(engine)
    threading.Thread(target=_pump_exits, args=(engine, monitor, exit_stream, monitor_pid), daemon=True,
                     name="monitor-events").start()
    rebooted = engine.boot_restarts()
    log.info("coracled %s: monitor pid %d, %d adopted, %d exited while away, %d restarted (%.0f ms)",
             __version__, monitor_pid, len(report["adopted"]), len(report["exited"]), len(rebooted),
             (time.monotonic() - started) * 1000)
    if any(repaired[k] for k in repaired):
        log.warning("start-up reconciliation repaired: %s", repaired)

    async def run() -> None:
        router = build_router(engine=engine, images=images, network=network, events=events,
                              data_root=args.data_root, exec_root=args.exec_root)
        server = await serve(router, socket_path, group=args.group)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        server.close()
        log.info("coracled stopping; containers keep running under the monitor")

    try:
        asyncio.run(run())
    finally:
        try:
            os.unlink(socket_path)
        except FileNotFoundError:
            pass
        os.close(lock.fd)


def _pump_exits(engine, monitor, stream, monitor_pid: int) -> None:  # type: ignore[no-untyped-def]
    """Feed the monitor's exit events to the engine; resynchronise when the stream breaks.

    It breaks when the monitor restarted (the keeper starts a new one that
    resumes every process) or when it dropped us for falling behind (we were
    frozen): either way the exit records hold every exit we missed.
    """
    while True:
        try:
            for event in stream:
                try:
                    engine.on_monitor_event(event)
                except Exception:
                    log.exception("handling monitor event %s", event)
        except OSError:
            pass
        time.sleep(0.2)
        try:
            current = monitor.ensure_running()
            stream = monitor.events()
            for rec in monitor.exit_records():
                engine.on_monitor_event(rec)
            orphans = engine.adopt_orphans()
            if current != monitor_pid:
                log.warning("the monitor was replaced (pid %d -> %d); %d running containers are watched "
                            "without it", monitor_pid, current, len(orphans))
                monitor_pid = current
        except Exception:
            log.exception("monitor connection lost")


if __name__ == "__main__":
    main()
