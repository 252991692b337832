"""Instructions that change only the image config: ENV, LABEL, CMD, ENTRYPOINT, SHELL, EXPOSE,
VOLUME, WORKDIR, USER, STOPSIGNAL, HEALTHCHECK, ONBUILD, MAINTAINER.

Words are expanded with Docker's rules (`words.Lexer`) from the stage's ARG and ENV values;
the history text is what Docker writes (`/bin/sh -c #(nop)  ENV K=v`), and it is part of the
step's cache key.
"""

from __future__ import annotations

import copy
import json
import posixpath
from typing import TYPE_CHECKING, Any

from coracle.build.dockerfile import Instruction, ParseError, key_values
from coracle.build.errors import BuildError
from coracle.build.words import Lexer
from coracle.images.changes import healthcheck

if TYPE_CHECKING:
    from coracle.build.builder import Stage

DEFAULT_SHELL = ["/bin/sh", "-c"]
NOP = "/bin/sh -c #(nop) "


def env_dict(env: list[str] | None) -> dict[str, str]:
    """An image config's Env list as a dict (later entries win, as in a shell)."""
    return {key: value for key, _, value in (e.partition("=") for e in env or [])}


def apply(stage: Stage, ins: Instruction, lexer: Lexer, escape: str) -> tuple[str, dict[str, Any]]:
    """(history text, new config) of an instruction that changes only the image config."""
    config = copy.deepcopy(stage.config)
    kw = ins.keyword
    shell = config.get("Shell") or DEFAULT_SHELL
    as_json = ins.json_args()
    if kw in ("ENV", "LABEL"):
        pairs = [(lexer.word(k), lexer.word(v or "")) for k, v in key_values(ins, escape)]
        if kw == "ENV":
            env = env_dict(config.get("Env"))
            for k, v in pairs:
                env.pop(k, None)
                env[k] = v
            config["Env"] = [f"{k}={v}" for k, v in env.items()]
        else:
            config["Labels"] = {**(config.get("Labels") or {}), **dict(pairs)}
        text = " ".join(f"{k}={v}" if kw == "ENV" else f"{json.dumps(k)}={json.dumps(v)}" for k, v in pairs)
    elif kw in ("CMD", "ENTRYPOINT"):
        value = as_json if as_json is not None else [*shell, ins.text]
        if kw == "CMD":
            config["Cmd"], stage.cmd_from_base = value, False
        else:
            config["Entrypoint"] = value
            if stage.cmd_from_base:
                config["Cmd"] = None
        text = json.dumps(value)
    elif kw == "SHELL":
        if as_json is None:
            raise ParseError(ins.line, "SHELL requires the arguments to be in JSON form")
        config["Shell"] = as_json
        text = json.dumps(as_json)
    elif kw == "EXPOSE":
        added = [_port(port) for port in lexer.words(ins.text)]
        config["ExposedPorts"] = {**(config.get("ExposedPorts") or {}), **{p: {} for p in added}}
        text = " ".join(added)
    elif kw == "VOLUME":
        paths = [lexer.word(p) for p in as_json] if as_json is not None else lexer.words(ins.text)
        if not paths or any(not p.strip() for p in paths):
            raise BuildError("VOLUME specified can not be an empty string")
        config["Volumes"] = {**(config.get("Volumes") or {}), **{p: {} for p in paths}}
        text = json.dumps(paths)
    elif kw == "WORKDIR":
        config["WorkingDir"] = posixpath.normpath(posixpath.join(config.get("WorkingDir") or "/",
                                                                 lexer.word(ins.text)))
        text = config["WorkingDir"]
    elif kw in ("USER", "STOPSIGNAL"):
        config["User" if kw == "USER" else "StopSignal"] = text = lexer.word(ins.text)
    elif kw == "HEALTHCHECK":
        config["Healthcheck"] = healthcheck(ins.original.split(None, 1)[1])
        text = json.dumps(config["Healthcheck"])
    elif kw == "ONBUILD":
        trigger = ins.text.strip()
        word, _, rest = trigger.partition(" ")
        config["OnBuild"] = [*(config.get("OnBuild") or []), f"{word.upper()} {rest}".strip()]
        text = trigger
    elif kw == "MAINTAINER":
        stage.raw["author"] = text = lexer.word(ins.text)
    else:
        raise ParseError(ins.line, f"{kw} is not supported here")
    return f"{NOP} {kw} {text}", config


def _port(spec: str) -> str:
    number, _, proto = spec.partition("/")
    if not number.isdigit() or not 0 < int(number) < 65536 or proto.lower() not in ("", "tcp", "udp", "sctp"):
        raise BuildError(f"invalid containerPort: {spec}")
    return f"{int(number)}/{proto.lower() or 'tcp'}"
