"""`--change` instructions of `docker import` and `docker commit`.

They are Dockerfile lines (`ENV PATH=/bin`, `CMD ["sh"]`, `EXPOSE 80/udp`...)
applied to the image config's "config" section. Only instructions that change
metadata are accepted, as in Docker.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from coracle.errors import InvalidParameter

ALLOWED = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "ONBUILD", "STOPSIGNAL", "USER", "VOLUME",
           "WORKDIR", "HEALTHCHECK", "SHELL")

# Keys of a container config that belong in an image config (commit keeps these).
IMAGE_CONFIG_KEYS = ("User", "ExposedPorts", "Env", "Cmd", "Healthcheck", "ArgsEscaped", "Entrypoint",
                     "Volumes", "WorkingDir", "Labels", "OnBuild", "StopSignal", "StopTimeout", "Shell")


def image_config(config: dict[str, Any]) -> dict[str, Any]:
    """The image-relevant, non-empty part of a (container or image) config."""
    return {k: config[k] for k in IMAGE_CONFIG_KEYS if config.get(k) not in (None, "", [], {})}


def _exec_or_shell(arg: str, shell: list[str]) -> list[str]:
    """JSON array form, or the shell form wrapped in the image's shell."""
    text = arg.strip()
    if text.startswith("["):
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    return [*shell, text]


def _pairs(instruction: str, arg: str) -> list[tuple[str, str]]:
    """`k=v k2="v 2"`, or the legacy single `k v` form."""
    try:
        words = shlex.split(arg)
    except ValueError as exc:
        raise InvalidParameter(f"{instruction}: {exc}") from None
    if not words:
        raise InvalidParameter(f"{instruction} requires at least one argument")
    if "=" not in words[0]:
        key, _, value = arg.strip().partition(" ")
        if instruction == "LABEL" or not value.strip():
            raise InvalidParameter(f"{instruction} needs key=value pairs: {arg!r}")
        return [(key, value.strip())]
    pairs = []
    for word in words:
        key, eq, value = word.partition("=")
        if not eq or not key:
            raise InvalidParameter(f"{instruction}: {word!r} is not key=value")
        pairs.append((key, value))
    return pairs


def commit_config(given: dict[str, Any] | None, container: dict[str, Any], changes: list[str]) -> dict[str, Any]:
    """The image config `docker commit` writes: the config the client sent (the container's own
    when it sent none) with the changes applied, its gaps filled from the container's config
    (Docker's merge: Env and Labels by key, ports and volumes added, Cmd/Entrypoint kept only
    when the changes set no entrypoint)."""
    out = apply(image_config(given or container), changes)
    base = image_config(container)
    for key in ("User", "WorkingDir", "StopSignal"):
        if not out.get(key) and base.get(key):
            out[key] = base[key]
    for key in ("ExposedPorts", "Volumes", "Labels"):
        merged = {**(base.get(key) or {}), **(out.get(key) or {})}
        if merged:
            out[key] = merged
    keys = {e.split("=", 1)[0] for e in out.get("Env") or []}
    env = [*(out.get("Env") or []), *(e for e in base.get("Env") or [] if e.split("=", 1)[0] not in keys)]
    if env:
        out["Env"] = env
    if not out.get("Entrypoint"):
        if not out.get("Cmd") and base.get("Cmd"):
            out["Cmd"] = base["Cmd"]
        if "Entrypoint" not in out and base.get("Entrypoint"):
            out["Entrypoint"] = base["Entrypoint"]
    if "Healthcheck" not in out and base.get("Healthcheck"):
        out["Healthcheck"] = base["Healthcheck"]
    return out


def apply(config: dict[str, Any], changes: list[str]) -> dict[str, Any]:
    """A copy of config with each change applied in order (an ENTRYPOINT clears a Cmd that no
    earlier CMD of the same changes set, as a Dockerfile does)."""
    out = json.loads(json.dumps(config))
    cmd_set = False
    for line in changes:
        line = line.strip()
        if not line:
            continue
        instruction, _, arg = line.partition(" ")
        instruction = instruction.upper()
        arg = arg.strip()
        if instruction not in ALLOWED:
            raise InvalidParameter(f"{instruction} is not a valid change command")
        shell = out.get("Shell") or ["/bin/sh", "-c"]
        if instruction == "CMD":
            out["Cmd"] = _exec_or_shell(arg, shell)
            cmd_set = True
        elif instruction == "ENTRYPOINT":
            out["Entrypoint"] = _exec_or_shell(arg, shell)
            if not cmd_set:
                out.pop("Cmd", None)
        elif instruction == "SHELL":
            value = _exec_or_shell(arg, [])
            if not arg.startswith("["):
                raise InvalidParameter("SHELL requires the JSON array form")
            out["Shell"] = value
        elif instruction == "ENV":
            env = list(out.get("Env") or [])
            for key, setting in _pairs("ENV", arg):
                env = [e for e in env if e.split("=", 1)[0] != key] + [f"{key}={setting}"]
            out["Env"] = env
        elif instruction == "LABEL":
            out["Labels"] = {**(out.get("Labels") or {}), **dict(_pairs("LABEL", arg))}
        elif instruction == "EXPOSE":
            ports = dict(out.get("ExposedPorts") or {})
            for port in arg.split():
                number, _, proto = port.partition("/")
                if not number.isdigit() or not 0 < int(number) < 65536 or proto not in ("", "tcp", "udp", "sctp"):
                    raise InvalidParameter(f"EXPOSE: invalid port {port!r}")
                ports[f"{int(number)}/{proto or 'tcp'}"] = {}
            out["ExposedPorts"] = ports
        elif instruction == "VOLUME":
            paths = _exec_or_shell(arg, []) if arg.startswith("[") else arg.split()
            if not paths:
                raise InvalidParameter("VOLUME requires at least one path")
            out["Volumes"] = {**(out.get("Volumes") or {}), **{p: {} for p in paths}}
        elif instruction == "WORKDIR":
            out["WorkingDir"] = arg
        elif instruction == "USER":
            out["User"] = arg
        elif instruction == "STOPSIGNAL":
            out["StopSignal"] = arg
        elif instruction == "ONBUILD":
            out["OnBuild"] = [*(out.get("OnBuild") or []), arg]
        elif instruction == "HEALTHCHECK":
            out["Healthcheck"] = healthcheck(arg)
    return out


def healthcheck(arg: str) -> dict[str, Any]:
    if arg.upper() == "NONE":
        return {"Test": ["NONE"]}
    words = arg.split()
    options: dict[str, Any] = {}
    units = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        field = {"interval": "Interval", "timeout": "Timeout", "start-period": "StartPeriod",
                 "start-interval": "StartInterval", "retries": "Retries"}.get(key)
        if field is None:
            raise InvalidParameter(f"HEALTHCHECK: unknown flag --{key}")
        if field == "Retries":
            options[field] = int(value)
        else:
            unit = next((u for u in sorted(units, key=len, reverse=True) if value.endswith(u)), None)
            if unit is None:
                raise InvalidParameter(f"HEALTHCHECK: --{key} needs a duration like 30s")
            options[field] = int(float(value[: -len(unit)]) * units[unit])
    rest = " ".join(words)
    if not rest.upper().startswith("CMD"):
        raise InvalidParameter("HEALTHCHECK needs CMD or NONE")
    command = rest[3:].strip()
    test = _exec_or_shell(command, [])
    return {"Test": ["CMD", *test] if command.startswith("[") else ["CMD-SHELL", command], **options}
