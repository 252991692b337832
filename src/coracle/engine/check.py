"""Reconciliation: make the world match the records, at start-up and on demand.

After a crash anywhere (daemon killed mid-create, mid-start, mid-rm) the
records in the store are the truth for what should exist, and what a crash
left half-made is removed: processes held for a start that never finished,
cgroups and exit records of removed containers, the empty skeleton of a
create that never committed, network objects of dead containers.

What is missing from the records is never a reason to kill or delete: a
container directory without a record is rebuilt from its `config.json` (the
record as last saved, written beside the container's files); a running process
or a populated cgroup that nothing accounts for is reported and left alone.
For running containers the pieces deleted behind our back are made again: the
cgroup (processes moved back in, limits and device rules re-applied), the veth
of each endpoint (same address, routes, ports), and the container directory
(its record file and /etc files; lost filesystem changes and logs are reported).

Records are read, compared and repaired as typed `Container`s; the stored
shape is read from `config.json` and written back only through the record's
own conversions (engine/container.py).

A live process is never killed because state is missing: a container is
alive when its recorded PID runs with its recorded start time (from /proc,
not from the monitor's list), and a live one nobody supervises is adopted.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

from coracle import cgroups
from coracle.cgroups import Resources, spare
from coracle.cgroups.devices import DeviceRule
from coracle.engine import config as cfg
from coracle.engine import security_options
from coracle.engine.container import Container
from coracle.engine.engine import KIND, Engine, proc_start_ticks
from coracle.engine.netrequest import network_request
from coracle.errors import CoracleError, NotFound
from coracle.runtime.fdtree import remove_tree
from coracle.runtime.spec import Process, Spec

log = logging.getLogger("coracle.check")

SKELETON = {"upper", "work", "rootfs"}  # what create makes before its record commits


class Reconciler:
    """Reconciliation on demand, for the API's maintenance router (api/backend.ReconcileBackend)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def check(self, dry_run: bool = False) -> dict[str, Any]:
        return check(self.engine, dry_run)


def check(engine: Engine, dry_run: bool = False, acknowledge: bool | None = None) -> dict[str, Any]:
    """Report (and unless dry_run, repair) every inconsistency; returns what was found.

    Quarantined records are reported until a check acknowledges them (by default
    one that repairs; the daemon's own start-up check only logs them).
    """
    found: dict[str, Any] = {"quarantined": [], "rebuilt": [], "kept": [], "containers": [], "directories": [],
                             "cgroups": [], "processes": [], "exit_records": [], "network": {}}
    quarantined = engine.store.quarantined(unreported_only=True)
    found["quarantined"] = [{k: v for k, v in q.items() if k != "row"} for q in quarantined]
    if (not dry_run if acknowledge is None else acknowledge) and quarantined:
        engine.store.mark_reported([q["row"] for q in quarantined])
    live_procs = {p["id"]: p for p in engine.monitor.list()}
    rebuild(engine, found, dry_run, live_procs)
    records = {c.id: c for c in engine.own_records()}
    recorded_exits = {e["id"]: e for e in engine.monitor.exit_records()}

    for cid, c in records.items():
        state = c.state
        proc = live_procs.get(cid)
        if state.running and not engine.alive(c):
            found["containers"].append({"id": cid, "problem": "recorded running but no process"})
            if not dry_run:
                event = recorded_exits.get(cid)
                if event is None or event.get("pid") != state.pid:
                    event = {"id": cid, "kind": "container", "pid": state.pid, "exit_code": None}
                engine.on_monitor_event({**event, "kind": "container"})
        elif state.running and not (proc and proc["pid"] == state.pid):
            found["containers"].append({"id": cid, "problem": "running without supervision: adopted"})
            if not dry_run:
                engine.adopt_orphans()
        if state.status == "removing":
            found["containers"].append({"id": cid, "problem": "removal interrupted"})
            if not dry_run:
                engine.remove(cid, force=True)

    abandoned = set()
    for cid, proc in live_procs.items():
        if proc["state"] == "held":  # a start that never finished: no user code ran in it
            found["processes"].append({"id": cid, "pid": proc["pid"], "state": proc["state"]})
            abandoned.add(cid)
            if not dry_run:
                engine.monitor.abandon(None, cid)
        elif proc["kind"] == "container" and cid not in records:
            found["kept"].append({"id": cid, "pid": proc["pid"], "problem": "process without a record (left running)"})

    running = {cid for cid, c in records.items() if c.state.running}
    parents = {engine.cgroup_parent} | {
        (c.host_config.cgroup_parent or engine.cgroup_parent).strip("/") for c in records.values()}
    for parent in parents:
        for path in cgroups.list_children(parent):
            name = path.rsplit("/", 1)[-1]
            if name in running or spare.is_spare(name):  # a spare child's: the daemon sweeps those
                continue
            manager = cgroups.manager_for(path)
            if manager.procs() and name not in abandoned:
                found["kept"].append({"cgroup": path, "problem": "processes without a running container (left alone)"})
                continue
            found["cgroups"].append(path)
            if not dry_run:
                manager.destroy()

    for record in engine.monitor.exit_records():
        if record["id"] not in records:
            found["exit_records"].append(record["id"])
            if not dry_run:
                engine.monitor.forget_exit(record["id"])

    for c in engine.own_records():
        if not os.path.isdir(os.path.join(engine.containers_dir, c.id)):
            found["directories"].append({"id": c.id, "problem": "directory missing: recreated; the "
                                         "container's filesystem changes and logs written before are lost"})
            if not dry_run:
                _recreate_directory(engine, c)
    live = {c.id: c for c in engine.own_records() if c.state.running}
    for c in live.values():
        _repair_running(engine, c, found, dry_run)
    found["network"].update(engine.network.reconcile({cid: c.state.pid for cid, c in live.items()},
                                                     dry_run=dry_run))
    for c in live.values():
        keep = {a.network_id for a in c.networks.values()}
        partial = engine.network.prune_partial(c.id, {k for k in keep if k}, dry_run=dry_run)
        if partial:
            found["network"].setdefault("partial", []).extend(partial)
    for problem in found["quarantined"] + found["kept"]:
        log.warning("system check: %s", problem)
    return found


# ----- records and directories ------------------------------------------------------

def rebuild(engine: Engine, found: dict[str, Any], dry_run: bool = False,
            live_procs: dict[str, dict[str, Any]] | None = None) -> None:
    """Records from container directories, and directories for records.

    A directory without a record gets its record back from `config.json`; one
    holding only the empty skeleton of an uncommitted create is removed; any
    other is kept and reported. A record whose `config.json` is missing gets it.
    After the database was restored from a snapshot, `config.json` (saved at
    every change) is newer than the snapshot, so it wins; a snapshot's record
    whose directory and process are both gone was removed after the snapshot.
    """
    records = {c.id: c for c in engine.own_records()}
    live = live_procs if live_procs is not None else {p["id"]: p for p in engine.monitor.list()}
    restored = engine.store.restored_from is not None
    for name in sorted(os.listdir(engine.containers_dir)):
        path = os.path.join(engine.containers_dir, name)
        c = records.get(name)
        if c is not None and not restored:
            if not os.path.exists(os.path.join(path, cfg.RECORD_FILE)) and not dry_run:
                cfg.write_record_file(path, c.encoded())
            continue
        try:
            saved = Container.from_stored(cfg.read_record_file(path))
        except (OSError, ValueError) as exc:
            if c is not None:
                continue
            if _skeleton_only(path) and name not in live:
                found["directories"].append(path)
                if not dry_run:
                    remove_tree(path, ignore_errors=True)
            else:
                found["kept"].append({"directory": path, "problem": f"no record and no usable {cfg.RECORD_FILE} "
                                                                    f"({exc}); left in place"})
            continue
        _follow_process(saved, live.get(name))
        if c == saved:
            continue
        found["rebuilt"].append({"id": name, "name": saved.name, "from": os.path.join(path, cfg.RECORD_FILE)})
        if not dry_run:
            engine.save(saved)
            records[name] = saved
    if restored:
        for cid, c in list(records.items()):
            if not os.path.isdir(os.path.join(engine.containers_dir, cid)) and cid not in live \
                    and not engine.alive(c):
                found["rebuilt"].append({"id": cid, "name": c.name, "problem": "removed after the snapshot"})
                if not dry_run:
                    engine.store.delete(KIND, cid)
        if not dry_run:
            engine.store.restored_from = None
    if not dry_run:
        engine.reload()  # the removals above went to the store directly


def _follow_process(saved: Container, proc: dict[str, Any] | None) -> None:
    """A saved record whose state lags behind (its last save failed): the monitor's process is the truth."""
    if proc is None or proc["state"] != "running" or saved.state.pid == proc["pid"]:
        return
    saved.state.follow(proc["pid"])
    saved.private.start_ticks = proc_start_ticks(proc["pid"])


def _skeleton_only(path: str) -> bool:
    """True when the directory holds nothing but empty upper/work/rootfs (a create that never committed)."""
    try:
        entries = os.listdir(path)
        return set(entries) <= SKELETON and not any(os.listdir(os.path.join(path, e)) for e in entries)
    except OSError:
        return False


# ----- running containers ---------------------------------------------------------------

def _repair_running(engine: Engine, c: Container, found: dict[str, Any], dry_run: bool) -> None:
    """A running container's network endpoints recorded again if the store lost them; its cgroup
    and veths made again if they were deleted."""
    if not engine.alive(c):
        return  # its PID may name another process by now: nothing is moved or plumbed into it
    adoption = engine.network.adopt(network_request(c), c.network_settings.stored(), c.state.pid,
                                    dry_run=dry_run)
    if adoption.found:
        found["network"].setdefault("adopted", []).extend(adoption.found)
        if not dry_run:
            for name, network_id in adoption.network_ids.items():  # a builtin network known under a new id
                c.networks[name].reassign(network_id)
            engine.save(c)
    cg = engine.cgroup(c)
    missing = [d for d in cg.dirs() if not os.path.isdir(d)]
    if missing:
        found["cgroups"].append({"id": c.id, "problem": "cgroup missing: recreated, processes moved back, "
                                 "limits re-applied", "missing": missing})
        if not dry_run:
            _recreate_cgroup(engine, c, cg)
    try:
        veths = engine.network.replumb(c.id, c.state.pid, dry_run=dry_run)
    except (OSError, CoracleError) as exc:
        veths = [f"cannot re-make the veths: {exc}"]
    if veths:
        found["network"].setdefault("veths_replumbed", []).extend(veths)


def _recreate_directory(engine: Engine, c: Container) -> None:
    directory = os.path.join(engine.containers_dir, c.id)
    for sub in sorted(SKELETON):
        os.makedirs(os.path.join(directory, sub), exist_ok=True)
    cfg.write_record_file(directory, c.encoded())
    if c.state.running and not c.host_config.mode.is_container:
        engine._write_files(c)  # /etc/hosts, hostname, resolv.conf for the next start and for `cp`


def _recreate_cgroup(engine: Engine, c: Container, cg: cgroups.Manager) -> None:
    """Make the cgroup again, move every process of the container into it, re-apply its limits."""
    hc = c.host_config.raw
    cg.create()
    for pid in _pid_namespace_members(c.state.pid):
        with contextlib.suppress(NotFound):  # exited meanwhile
            cg.apply(pid)
    cg.set(Resources.from_host_config(hc))
    spec = Spec(id=c.id, process=Process(args=[c.path, *c.args]))
    security_options.apply(spec, hc, engine.no_new_privileges)
    cg.set_devices([DeviceRule.from_json(r) for r in spec.device_rules])
    log.warning("recreated the cgroup %s of container %s", cg.path, c.id)


def _pid_namespace_members(pid1: int) -> list[int]:
    """PID 1 and every process in its PID namespace (its children, execs): host PIDs."""
    try:
        ns = os.stat(f"/proc/{pid1}/ns/pid")
    except OSError:
        return []
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                st = os.stat(f"/proc/{entry}/ns/pid")
            except OSError:
                continue
            if (st.st_ino, st.st_dev) == (ns.st_ino, ns.st_dev):
                members.append(int(entry))
    return members
