"""`coracled`: the daemon. Flags follow dockerd's names where they exist.

Start-up order: lock the data root (two daemons never share one), open the
state (a damaged or missing database is replaced by its last snapshot, see
store/recovery.py), make sure the monitor runs (started by the keeper; both
outlive us), rebuild container records the database lacks from the container
directories, restore networks, then reconcile containers against what runs (by
/proc) and what the monitor still supervises, snapshot the state, and only then
accept API requests: the front process (api/front.py) accepts them and answers
the reads; the daemon serves everything else and accepts whenever the front is
away. While running, a housekeeping thread snapshots the state
after changes, keeps the disk space reserve, and records exits that a full disk
kept from being saved.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import ipaddress
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from typing import TYPE_CHECKING

from coracle import __version__, trace
from coracle.errors import CoracleError, InvalidParameter
import contextlib

if TYPE_CHECKING:
    from coracle.network.overlay_cluster import OverlayCluster

log = logging.getLogger("coracle")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="coracled", description="coracle container engine daemon")
    p.add_argument("-H", "--host", default=None,
                   help="Unix socket to listen on (unix:///run/coracle/coracle.sock; rootless: "
                        "unix://$XDG_RUNTIME_DIR/coracle.sock)")
    p.add_argument("--data-root", default=None, help="/var/lib/coracle (rootless: ~/.local/share/coracle)")
    p.add_argument("--exec-root", default=None, help="/run/coracle (rootless: $XDG_RUNTIME_DIR/coracle)")
    p.add_argument("--pidfile", default=None, help="default: <exec-root>/coracled.pid")
    p.add_argument("--cgroup-parent", default="coracle")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "error", "fatal"])
    p.add_argument("-D", "--debug", action="store_true",
                   help="log where each container start spends its time, phase by phase (also CORACLE_TRACE=1)")
    p.add_argument("--bridge", dest="bridge_name", default="coracle0", help="device name of the default bridge")
    p.add_argument("--mtu", type=int, default=1500,
                   help="MTU of bridges and container interfaces (rootless default: 65520, pasta's)")
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
    p.add_argument("--max-image-size", type=_size, default="16g",
                   help="most bytes one load, import or pull may unpack (default 16g; k, m, g, t suffixes)")
    p.add_argument("--log-opt", action="append", default=[],
                   help="default json-file option key=value for containers (repeatable; default max-size=20m, "
                        "max-file=5)")
    p.add_argument("--recover-state", action="store_true",
                   help="replace the state database with its last snapshot (state.db.bak) before starting")
    p.add_argument("--cluster-store", default="", metavar="etcd://IP:PORT[,IP:PORT...]",
                   help="etcd v3 members holding overlay networks (every member is used)")
    p.add_argument("--cluster-advertise", default="", metavar="IP[:PORT]",
                   help="this host's underlay address: VXLAN traffic of other hosts is sent to it")
    p.add_argument("--cluster-store-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="kv.cacertfile, kv.certfile, kv.keyfile (etcd over TLS), kv.ttl (lease seconds)")
    p.add_argument("--version", action="version", version=f"coracled {__version__}")
    if os.geteuid() != 0:
        from coracle.rootless import config

        p.set_defaults(**config.daemon_defaults())
    args = p.parse_args(argv)
    args.host = args.host or "unix:///run/coracle/coracle.sock"
    args.data_root = args.data_root or "/var/lib/coracle"
    args.exec_root = args.exec_root or "/run/coracle"
    return args


def _cluster(args: argparse.Namespace) -> OverlayCluster | None:
    """The overlay networks' cluster store from --cluster-*, or None when not asked for."""
    if not args.cluster_store and not args.cluster_advertise:
        return None
    if not (args.cluster_store and args.cluster_advertise):
        raise ValueError("--cluster-store and --cluster-advertise go together")
    from coracle.cluster.etcd import Etcd, TLSConfig, parse_endpoints
    from coracle.cluster.membership import DEFAULT_TTL, Membership
    from coracle.network.overlay_cluster import OverlayCluster

    opts = dict(o.partition("=")[::2] for o in args.cluster_store_opt)
    unknown = set(opts) - {"kv.cacertfile", "kv.certfile", "kv.keyfile", "kv.ttl"}
    if unknown:
        raise ValueError(f"unknown --cluster-store-opt {sorted(unknown)[0]}")
    tls = None
    if any(k in opts for k in ("kv.cacertfile", "kv.certfile", "kv.keyfile")):
        tls = TLSConfig(opts.get("kv.cacertfile"), opts.get("kv.certfile"), opts.get("kv.keyfile"))
    address = args.cluster_advertise.rsplit(":", 1)[0] if args.cluster_advertise.count(":") == 1 \
        else args.cluster_advertise
    try:
        ipaddress.IPv4Address(address)
    except ValueError:
        raise ValueError(f"--cluster-advertise {args.cluster_advertise!r}: expected IPv4[:PORT]") from None
    ttl = int(opts.get("kv.ttl") or DEFAULT_TTL)
    etcd = Etcd(parse_endpoints(args.cluster_store, tls is not None), tls=tls)
    membership = Membership(etcd, address, os.path.join(args.data_root, "cluster-lease.json"), ttl)
    membership.start()
    return OverlayCluster(etcd, membership)


def _size(text: str) -> int:
    from coracle.engine.config import parse_size
    from coracle.errors import InvalidParameter

    try:
        return parse_size(text)
    except InvalidParameter as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _pools(specs: list[str]) -> list[tuple[str, int]]:
    pools = []
    for spec in specs:
        parts = dict(kv.split("=", 1) for kv in spec.split(","))
        pools.append((parts["base"], int(parts.get("size", 24))))
    return pools


def _enter_rootless(exec_root: str) -> int:
    """Run by an ordinary user: become root of the user's rootless namespaces (coracle.rootless).

    Must come before any thread starts; returns the network namespace to enter later."""
    from coracle import rootless
    from coracle.rootless.namespace import enter

    os.makedirs(exec_root, mode=0o700, exist_ok=True)
    rootless.host_unprivileged_port_start()  # read in the user's own network namespace
    return enter(exec_root)


async def _follow_ports(engine, events, exec_root: str) -> None:  # type: ignore[no-untyped-def]
    from coracle.rootless import ports

    await ports.follow(events, engine.containers, ports.Forwarder(exec_root))


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
    try:
        args = parse_args(argv)
        rootless_net = _enter_rootless(args.exec_root) if os.geteuid() != 0 else None
    except CoracleError as exc:
        sys.exit(f"coracled: {exc}")
    level = {"warn": "WARNING", "fatal": "CRITICAL"}.get(args.log_level, args.log_level.upper())
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.debug or trace.enabled_by_environment():
        trace.enable()
    if not args.host.startswith("unix://"):
        sys.exit("coracled: only unix:// sockets are supported (the API is root's: no TCP listener)")
    socket_path = args.host[len("unix://"):]
    lock = DataRootLock(args.data_root)
    os.makedirs(args.exec_root, exist_ok=True)
    pidfile = args.pidfile or os.path.join(args.exec_root, "coracled.pid")
    with open(pidfile, "w") as f:
        f.write(str(os.getpid()))

    from coracle.api.server import build_router
    from coracle.api.front import Front
    from coracle.api.http import Server, listen
    from coracle.engine import config as cfg
    from coracle.engine.check import check, rebuild
    from coracle.engine.engine import Engine
    from coracle.events import EventBus
    from coracle.images import ImageService
    from coracle.network import NetworkManager
    from coracle.runtime.client import MonitorClient
    from coracle.runtime.limits import raise_nofile
    from coracle.store import open_state

    raise_nofile()  # a few descriptors per container (log follows, attach streams, sockets)
    if rootless_net is not None:
        from coracle.rootless.namespace import enter_network

        MonitorClient(args.exec_root).ensure_running()  # the monitor stays in the user's host network
        enter_network(rootless_net)
    try:
        log_defaults = cfg.log_defaults(args.log_opt)
    except InvalidParameter as exc:
        sys.exit(f"coracled: {exc}")
    started = time.monotonic()
    store = open_state(args.data_root, recover=args.recover_state)
    events = EventBus()
    images = ImageService(os.path.join(args.data_root, "images"), store,
                          insecure_registries=args.insecure_registry, max_image_size=args.max_image_size)
    try:
        cluster = _cluster(args)
    except ValueError as exc:
        sys.exit(f"coracled: {exc}")
    network = NetworkManager(store, args.exec_root, bridge_name=args.bridge_name, bip=args.bip,
                             default_pools=_pools(args.default_address_pool) or None, firewall=args.firewall,
                             mtu=args.mtu, cluster=cluster)
    network.events = images.events = events  # they announce their own changes, whoever asked for them
    monitor = MonitorClient(args.exec_root)
    monitor_pid = monitor.ensure_running()
    engine = Engine(store=store, images=images, network=network, monitor=monitor, events=events,
                    data_root=args.data_root, exec_root=args.exec_root, cgroup_parent=args.cgroup_parent,
                    no_new_privileges=args.no_new_privileges)
    engine.log_defaults = log_defaults
    if args.userns_remap:
        from coracle.runtime.userns import Remap

        try:
            engine.userns_remap = Remap.load(args.userns_remap)
        except (InvalidParameter, OSError) as exc:
            sys.exit(f"coracled: --userns-remap={args.userns_remap}: {exc}")
    rebuilt: dict = {"rebuilt": [], "kept": [], "directories": []}
    rebuild(engine, rebuilt)
    for item in rebuilt["rebuilt"]:
        log.warning("container record %s (%s) rebuilt from %s", item["id"], item["name"],
                    item.get("from") or item.get("problem"))
    network.start()
    exit_stream = monitor.events()  # subscribe before looking, so no exit falls in between
    report = engine.restore()
    for name in engine.volumes.reconcile():
        log.warning("volume %s was left mounted with no running container using it: unmounted", name)
    repaired = check(engine, acknowledge=False)  # quarantined records stay reported to `system check`
    housekeeping = Housekeeping(engine, monitor, os.path.join(args.data_root, "state.db.bak"))
    housekeeping.snapshot()
    threading.Thread(target=housekeeping.run, daemon=True, name="housekeeping").start()
    threading.Thread(target=_pump_exits, args=(engine, monitor, exit_stream, monitor_pid), daemon=True,
                     name="monitor-events").start()
    rebooted = engine.boot_restarts()
    engine.spare_cgroup.soon()
    log.info("coracled %s: monitor pid %d, %d adopted, %d exited while away, %d restarted (%.0f ms)",
             __version__, monitor_pid, len(report["adopted"]), len(report["exited"]), len(rebooted),
             (time.monotonic() - started) * 1000)
    if any(repaired[k] for k in repaired):
        log.warning("start-up reconciliation repaired: %s", repaired)

    async def run() -> None:
        router = build_router(engine=engine, images=images, network=network, events=events, streams=monitor,
                              data_root=args.data_root, exec_root=args.exec_root)
        front = Front(Server(router), listen(socket_path, group=args.group), str(store.path))
        events.watch(front.watch)
        await front.start()
        follower = asyncio.create_task(_follow_ports(engine, events, args.exec_root)) if rootless_net else None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await front.close()
        if follower:
            follower.cancel()
        housekeeping.snapshot()
        log.info("coracled stopping; containers keep running under the monitor")

    try:
        asyncio.run(run())
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)
        try:
            network.close()  # the resolver, and the port proxy when it serves no running container
        finally:
            store.close()  # checkpoints the WAL into state.db
            os.close(lock.fd)


class Housekeeping:
    """Snapshots of the state, the disk space reserve, and exits a full disk kept from being saved."""

    PERIOD = 5.0  # seconds between rounds
    SNAPSHOT_EVERY = 12  # rounds: a changed database is snapshotted at most once a minute

    def __init__(self, engine, monitor, snapshot_path: str) -> None:  # type: ignore[no-untyped-def]
        self.engine, self.monitor, self.snapshot_path = engine, monitor, snapshot_path
        self.store = engine.store
        self._failed = False  # the last snapshot failed: say so once, not every round

    def snapshot(self) -> None:
        """Copy the database to state.db.bak, the file recovery falls back to."""
        try:
            self.store.snapshot(self.snapshot_path)
            if self._failed:
                log.info("state snapshot %s written again", self.snapshot_path)
            self._failed = False
        except (OSError, sqlite3.Error) as exc:
            if not self._failed:
                log.warning("cannot snapshot the state to %s: %s (kept the previous snapshot)",
                            self.snapshot_path, exc)
            self._failed = True

    def round(self, count: int) -> None:
        if self.store.reserve is not None:
            self.store.reserve.refill()
        if self.store.full_since is not None:
            self.store.full_since = None
            for rec in self.monitor.exit_records():  # exits whose saving failed for want of space
                try:
                    self.engine.on_monitor_event({**rec, "kind": "container"})
                except (OSError, sqlite3.Error, CoracleError) as exc:
                    log.warning("exit of %s not recorded yet: %s", rec["id"], exc)
        if count % self.SNAPSHOT_EVERY == 0 and self.store.changed_since_snapshot():
            self.snapshot()

    def run(self) -> None:
        count = 0
        while True:
            time.sleep(self.PERIOD)
            count += 1
            try:
                self.round(count)
            except Exception:
                log.exception("housekeeping round failed")


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
