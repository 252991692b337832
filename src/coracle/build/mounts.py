"""`RUN --mount=...`: what a RUN step sees besides its image, never part of its layer.

- `type=cache,target=P[,id=I]`: a directory kept between builds (per id, or
  per target), shared by every build on this daemon; `builder prune` clears it.
- `type=bind,target=P[,source=S][,from=STAGE|IMAGE][,rw=true]`: the build
  context (or a stage's or image's filesystem, mounted read-only from its
  layers) at P; writes, if allowed, are thrown away.
- `type=secret,id=I[,target=P][,required=true][,mode=0400][,uid=][,gid=]`: the
  secret's bytes as a file at P (default /run/secrets/I); it is in no layer,
  no history and no cache key.
- `type=tmpfs,target=P[,size=N]`.
The mount points a step needed are left out of its layer.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any
from collections.abc import Iterator

from coracle.errors import InvalidParameter
from coracle.runtime import syscalls as sc

if TYPE_CHECKING:
    from coracle.build.builder import Build, Stage
    from coracle.build.dockerfile import Instruction


class RunMounts:
    def __init__(self, build: Build, stage: Stage, ins: Instruction) -> None:
        self.build, self.stage = build, stage
        lexer = build.lexer(stage)
        self.specs_ = [{k: lexer.word(v) for k, v in spec.items()} for spec in self.specs(ins)]
        for spec in self.specs_:
            kind = spec.setdefault("type", "bind")
            if kind not in ("bind", "cache", "secret", "tmpfs"):
                raise InvalidParameter(f"RUN --mount type={kind} is not supported")
            if kind == "secret":
                spec.setdefault("target", "/run/secrets/" + spec.get("id", ""))
                if not spec.get("id"):
                    raise InvalidParameter("RUN --mount=type=secret needs an id")
            target = spec.get("target") or spec.get("dst") or spec.get("destination")
            if not target:
                raise InvalidParameter(f"RUN --mount=type={kind} needs a target")
            spec["target"] = posixpath.join(stage.config.get("WorkingDir") or "/", target)

    @staticmethod
    def specs(ins: Instruction) -> list[dict[str, str]]:
        """The `--mount` flags of an instruction as key/value dicts (values not yet expanded)."""
        out = []
        for flag in ins.flags.get("mount", []):
            spec: dict[str, str] = {}
            for field in flag.split(","):
                key, eq, value = field.partition("=")
                spec[key.strip().lower()] = value.strip() if eq else "true"
            out.append(spec)
        return out

    @property
    def targets(self) -> list[str]:
        return [s["target"] for s in self.specs_]

    def key(self) -> str:
        """What the mounts add to the step's cache key: the content of bind sources (never secrets)."""
        parts = []
        for spec in self.specs_:
            if spec["type"] == "bind":
                source = spec.get("source", spec.get("src", "."))
                if spec.get("from"):
                    parts.append(f"bind {spec['target']} {self._image_of(spec['from'])} {source}")
                else:
                    context = self.build.context
                    parts.append(f"bind {spec['target']} {context.checksum(context.sources(source))}")
            elif spec["type"] != "secret":
                parts.append(f"{spec['type']} {spec['target']} {spec.get('id', '')}")
        return "\n".join(parts)

    def _image_of(self, ref: str) -> str:
        stage = self.build.stage_named(ref, self.stage.index)
        return self.build.materialized(stage) if stage is not None else self.build.base_image(ref).id

    @contextmanager
    def prepared(self) -> Iterator[list[dict[str, Any]]]:
        """HostConfig.Mounts for the step container; whatever was made for them is undone after."""
        with ExitStack() as undo:
            out = []
            for spec in self.specs_:
                kind, target = spec["type"], spec["target"]
                if kind == "cache":
                    source = self.build.builder.cache.mount_dir(spec.get("id") or target)
                    out.append({"Type": "bind", "Source": source, "Target": target, "ReadOnly": False})
                elif kind == "tmpfs":
                    size = int(spec.get("size") or 0)
                    out.append({"Type": "tmpfs", "Target": target, "TmpfsOptions": {"SizeBytes": size} if size else {}})
                elif kind == "secret":
                    mount = self._secret(spec)
                    if mount:
                        undo.callback(os.unlink, mount["Source"])
                        out.append(mount)
                else:
                    source = spec.get("source", spec.get("src", "."))
                    root = self._image_view(spec["from"], undo) if spec.get("from") else self.build.context.root
                    path = _inside(root, source)
                    writable = spec.get("rw", spec.get("readwrite", "false")) == "true"
                    if writable:  # the writes land in a throwaway upper layer, never in the context or image
                        path = self._overlay([path], undo, writable=True)
                    out.append({"Type": "bind", "Source": path, "Target": target, "ReadOnly": not writable})
            yield out

    def _secret(self, spec: dict[str, str]) -> dict[str, Any] | None:
        value = self.build.options.secrets.get(spec["id"])
        if value is None:
            if spec.get("required", "false") == "true":
                raise InvalidParameter(f"secret {spec['id']} is required but was not given "
                                       f"(--secret id={spec['id']},src=FILE)")
            return None
        path = os.path.join(tempfile.mkdtemp(dir=self.build.scratch), "secret")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, int(spec.get("mode", "0400"), 8))
        with os.fdopen(fd, "wb") as f:
            f.write(value)
        os.chown(path, int(spec.get("uid", 0)), int(spec.get("gid", 0)))
        return {"Type": "bind", "Source": path, "Target": spec["target"], "ReadOnly": True}

    def _image_view(self, ref: str, undo: ExitStack) -> str:
        """A stage's or image's filesystem, read-only, from its layers."""
        image = self.build.images.resolve(self._image_of(ref))
        return self._overlay(list(reversed(self.build.images.layer_dirs(image))), undo)

    def _overlay(self, lower: list[str], undo: ExitStack, writable: bool = False) -> str:
        """An overlay of `lower` (topmost first) in the build's work directory, unmounted afterwards.
        The kernel reads the layers; no file in them is opened here."""
        scratch = tempfile.mkdtemp(dir=self.build.scratch)
        root, upper, work, empty = (os.path.join(scratch, d) for d in ("root", "upper", "work", "empty"))
        for d in (root, upper, work, empty):
            os.mkdir(d)
        if writable:
            sc.mount("overlay", root, "overlay", 0, f"lowerdir={':'.join(lower)},upperdir={upper},workdir={work}")
        else:  # overlay wants two lower layers when it has no upper one
            sc.mount("overlay", root, "overlay", sc.MS_RDONLY, f"lowerdir={':'.join([*lower, empty])}")
        undo.callback(sc.umount2, root, sc.MNT_DETACH)
        return root


def _inside(root: str, source: str) -> str:
    """root/source, refused if any component is a symlink or leaves root (no path is resolved through
    links that the image or context controls)."""
    root = os.path.realpath(root)
    path = os.path.normpath(os.path.join(root, source.lstrip("/")))
    if path != root and not path.startswith(root.rstrip("/") + "/"):
        raise InvalidParameter(f"RUN --mount source {source} leaves its root")
    if os.path.realpath(path) != path:
        raise InvalidParameter(f"RUN --mount source {source} goes through a symbolic link")
    if not os.path.exists(path):
        raise InvalidParameter(f"RUN --mount source {source} does not exist")
    return path

