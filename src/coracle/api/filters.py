"""Docker's `filters` query parameter: {"name": ["web"], "label": ["a=b"]}.

Old clients send {"name": {"web": true}}; both shapes mean the same.
"""

from __future__ import annotations

import re
from typing import Any

from coracle.api.http import Request
from coracle.engine.container import Container
from coracle.errors import InvalidParameter

CONTAINER_KEYS = {"id", "name", "status", "label", "ancestor", "exited", "network", "before", "since",
                  "health", "is-task", "volume", "publish", "expose", "until"}


def parse(raw: Any) -> dict[str, list[str]]:
    """The decoded `filters` parameter, normalised to {key: [values]}; any other shape is a 400."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidParameter("invalid filters: expected a JSON object of arrays of strings")
    out: dict[str, list[str]] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            out[key] = [str(k) for k, on in value.items() if on]
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            out[key] = value
        elif isinstance(value, str):
            out[key] = [value]
        else:
            raise InvalidParameter(f"invalid filter '{key}': expected an array of strings")
    return out


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


def check_container_filters(filters: dict[str, list[str]]) -> None:
    """Refuse unknown keys and values once per request, as Docker does even when nothing is listed."""
    unknown = set(filters) - CONTAINER_KEYS
    if unknown:
        raise InvalidParameter(f"invalid filter '{sorted(unknown)[0]}'")
    for v in filters.get("status", []):
        if v not in ("created", "restarting", "running", "removing", "paused", "exited", "dead"):
            raise InvalidParameter(f"invalid filter 'status={v}'")
    for v in filters.get("health", []):
        if v not in ("starting", "healthy", "unhealthy", "none"):
            raise InvalidParameter(f"Unrecognised filter value for health: {v}")
    for v in filters.get("name", []):
        try:
            re.compile(v)
        except re.error as exc:
            raise InvalidParameter(f"invalid filter 'name={v}': {exc}") from None


def container_matches(c: Container, filters: dict[str, list[str]]) -> bool:
    """Whether a container passes filters already checked by check_container_filters."""
    state = c.state
    checks = {
        "id": lambda v: c.id.startswith(v),
        "name": lambda v: re.search(v, c.short_name) is not None or re.search(v, c.name) is not None,
        "status": lambda v: state.status == v,
        "exited": lambda v: not state.running and str(state.exit_code) == v,
        "health": lambda v: ((state.health.status if state.health else "") or "none") == v,
        "ancestor": lambda v: c.image_ref in (v, v + ":latest") or c.image_id.startswith(v)
        or c.image_id.startswith("sha256:" + v),
        "network": lambda v: v in c.networks or c.host_config.network_mode == v,
        "volume": lambda v: any(m.is_volume and m.name == v or m.destination == v for m in c.mounts),
    }
    for key, check in checks.items():
        wanted = values(filters, key)
        if wanted and not any(check(v) for v in wanted):
            return False
    return labels_match(c.labels, values(filters, "label"))


def listed(req: Request, every: list[Container]) -> list[Container]:
    """What `docker ps` shows of `every` for the request's all, limit, latest and filters, newest first."""
    filters = parse(req.qjson("filters"))
    check_container_filters(filters)
    show_all = req.qbool("all")
    limit = req.qint("limit", -1)
    if req.qbool("latest"):
        limit = 1
    shown = []
    for c in sorted(every, key=lambda r: r.created, reverse=True):
        if not show_all and not c.state.running and limit <= 0 and "status" not in filters:
            continue
        if filters and not container_matches(c, filters):
            continue
        shown.append(c)
    return shown[:limit] if limit > 0 else shown
