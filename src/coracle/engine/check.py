"""Reconciliation: make the world match the records, at start-up and on demand.

After a crash anywhere (daemon killed mid-create, mid-start, mid-rm) the
records in the store are the truth for what should exist; everything else of
ours found on the machine is an orphan: container directories without a
record, cgroups without a running container, processes the monitor holds for
nobody, exit records of removed containers, and network objects (veths,
leases, nft elements) that the network layer reports for unknown containers.
"""

from __future__ import annotations

import os
from typing import Any

from coracle import cgroups
from coracle.engine.engine import Engine
from coracle.runtime.fdtree import remove_tree


def check(engine: Engine, dry_run: bool = False) -> dict[str, Any]:
    """Report (and unless dry_run, repair) every inconsistency; returns what was found."""
    found: dict[str, Any] = {"containers": [], "directories": [], "cgroups": [], "processes": [],
                             "exit_records": [], "network": {}}
    records = {r["Id"]: r for r in engine.records()}
    live_procs = {p["id"]: p for p in engine.monitor.list()}

    for cid, rec in records.items():
        state = rec["State"]
        proc = live_procs.get(cid)
        if state["Running"] and not (proc and proc["pid"] == state["Pid"]):
            found["containers"].append({"id": cid, "problem": "recorded running but no process"})
            if not dry_run:
                engine.on_monitor_event({"id": cid, "kind": "container", "pid": state["Pid"], "exit_code": 255})
        if state["Status"] == "removing":
            found["containers"].append({"id": cid, "problem": "removal interrupted"})
            if not dry_run:
                engine.remove(cid, force=True)

    for cid, proc in live_procs.items():
        known = cid in records or cid in engine.execs
        if proc["state"] == "held" or not known:
            found["processes"].append({"id": cid, "pid": proc["pid"], "state": proc["state"]})
            if not dry_run:
                engine.monitor.abandon(None, cid)

    for name in os.listdir(engine.containers_dir):
        if name not in records:
            found["directories"].append(os.path.join(engine.containers_dir, name))
            if not dry_run:
                remove_tree(os.path.join(engine.containers_dir, name), ignore_errors=True)

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
