"""Docker's `filters` query parameter: {"name": ["web"], "label": ["a=b"]}.

Old clients send {"name": {"web": true}}; both shapes mean the same.
"""

from __future__ import annotations

import re
from typing import Any

from coracle.errors import InvalidParameter

CONTAINER_KEYS = {"id", "name", "status", "label", "ancestor", "exited", "network", "before", "since",
                  "health", "is-task", "volume", "publish", "expose", "until"}


def values(filters: dict[str, Any], key: str) -> list[str]:
    raw = filters.get(key)
    if raw is None:
        return []
    if isinstance(raw, dict):
        return [k for k, on in raw.items() if on]
    if isinstance(raw, list):
        return [str(v) for v in raw]
    return [str(raw)]


def labels_match(labels: dict[str, str], wanted: list[str]) -> bool:
    for item in wanted:
        key, eq, value = item.partition("=")
        if key not in labels or (eq and labels[key] != value):
            return False
    return True


def container_matches(rec: dict[str, Any], filters: dict[str, Any], prune: bool = False) -> bool:
    if not isinstance(filters, dict):
        raise InvalidParameter("filters must be a JSON object")
    unknown = set(filters) - CONTAINER_KEYS
    if unknown:
        raise InvalidParameter(f"invalid filter '{sorted(unknown)[0]}'")
    state = rec["State"]
    name = rec["Name"].lstrip("/")
    checks = {
        "id": lambda v: rec["Id"].startswith(v),
        "name": lambda v: re.search(v, name) is not None or re.search(v, rec["Name"]) is not None,
        "status": lambda v: state["Status"] == v,
        "exited": lambda v: not state["Running"] and str(state["ExitCode"]) == v,
        "ancestor": lambda v: rec["Config"].get("Image") in (v, v + ":latest") or rec["Image"].startswith(v)
        or rec["Image"].startswith("sha256:" + v),
        "network": lambda v: v in (rec["NetworkSettings"].get("Networks") or {})
        or rec["HostConfig"].get("NetworkMode") == v,
    }
    for key, check in checks.items():
        wanted = values(filters, key)
        if wanted and not any(check(v) for v in wanted):
            return False
    if values(filters, "status"):
        for v in values(filters, "status"):
            if v not in ("created", "restarting", "running", "removing", "paused", "exited", "dead"):
                raise InvalidParameter(f"invalid filter 'status={v}'")
    if not labels_match(rec["Config"].get("Labels") or {}, values(filters, "label")):
        return False
    return True
