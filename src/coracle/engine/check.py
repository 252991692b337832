"""Reconciliation: make the world match the records, at start-up and on demand.

After a crash anywhere (daemon killed mid-create, mid-start, mid-rm) the
records in the store are the truth for what should exist; everything else of
ours found on the machine is an orphan: container directories without a
record, cgroups without a running container, processes the monitor holds for
nobody, exit records of removed containers, and network objects (veths,
leases, nft elements) that the network layer reports for unknown containers.

A live process is never killed because state is missing: a container is
alive when its recorded PID runs with its recorded start time (from /proc,
not from the monitor's list), and a live one nobody supervises is adopted.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from coracle import cgroups
from coracle.engine.engine import Engine


def check(engine: Engine, dry_run: bool = False) -> dict[str, Any]:
    """Report (and unless dry_run, repair) every inconsistency; returns what was found."""
    found: dict[str, Any] = {"containers": [], "directories": [], "cgroups": [], "processes": [],
                             "exit_records": [], "network": {}}
    records = {r["Id"]: r for r in engine.records()}
    live_procs = {p["id"]: p for p in engine.monitor.list()}
    recorded_exits = {e["id"]: e for e in engine.monitor.exit_records()}

    for cid, rec in records.items():
        state = rec["State"]
        proc = live_procs.get(cid)
        if state["Running"] and not engine.alive(rec):
            found["containers"].append({"id": cid, "problem": "recorded running but no process"})
            if not dry_run:
                event = recorded_exits.get(cid)
                if event is None or event.get("pid") != state["Pid"]:
                    event = {"id": cid, "kind": "container", "pid": state["Pid"], "exit_code": None}
                engine.on_monitor_event({**event, "kind": "container"})
        elif state["Running"] and not (proc and proc["pid"] == state["Pid"]):
            found["containers"].append({"id": cid, "problem": "running without supervision: adopted"})
            if not dry_run:
                engine.adopt_orphans()
        if state["Status"] == "removing":
            found["containers"].append({"id": cid, "problem": "removal interrupted"})
            if not dry_run:
                engine.remove(cid, force=True)

    for cid, proc in live_procs.items():
        if proc["state"] == "held":  # a start that died with its daemon: no user code ran yet
            found["processes"].append({"id": cid, "pid": proc["pid"], "state": proc["state"]})
            if not dry_run:
                engine.monitor.abandon(None, cid)
        elif proc["kind"] == "container" and cid not in records:
            found["processes"].append({"id": cid, "pid": proc["pid"], "state": "running without a record: left running"})

    for name in os.listdir(engine.containers_dir):
        if name not in records:
            found["directories"].append(os.path.join(engine.containers_dir, name))
            if not dry_run:
                shutil.rmtree(os.path.join(engine.containers_dir, name), ignore_errors=True)

    running = {cid for cid, r in records.items() if r["State"]["Running"]}
    parents = {engine.cgroup_parent} | {
        (r["HostConfig"].get("CgroupParent") or engine.cgroup_parent).strip("/") for r in records.values()}
    for parent in parents:
        for path in cgroups.list_children(parent):
            if path.rsplit("/", 1)[-1] not in running:
                found["cgroups"].append(path)
                if not dry_run:
                    cgroups.manager_for(path).destroy()

    for record in engine.monitor.exit_records():
        if record["id"] not in records:
            found["exit_records"].append(record["id"])
            if not dry_run:
                engine.monitor.forget_exit(record["id"])

    live = {r["Id"]: r["State"]["Pid"] for r in engine.records() if r["State"]["Running"]}
    found["network"] = engine.network.reconcile(live, dry_run=dry_run)
    for rec in engine.records():
        if rec["State"]["Running"]:
            keep = {n.get("NetworkID") for n in (rec["NetworkSettings"].get("Networks") or {}).values()}
            partial = engine.network.prune_partial(rec["Id"], {k for k in keep if k}, dry_run=dry_run)
            if partial:
                found["network"].setdefault("partial", []).extend(partial)
    return found
