"""The builder: a Dockerfile's stages built on this engine, step by step, with the layer cache.

Each instruction is one step and makes one (intermediate) image whose config
carries the history Docker would write: metadata instructions add an empty
layer entry, RUN/COPY/ADD a real layer diffed from a step container's upper
directory. Before a step runs, its cache key (see `cache`) is looked up; a hit
reuses the image the same step made before, so a rebuild without changes
yields the very same image id. The stream of messages is Docker's classic
builder's (`Step 2/5 : RUN ...`, ` ---> Using cache`, `Successfully built`),
which every client renders.

Stages that the target does not need are skipped; stages that do not depend
on each other run at the same time.
"""

from __future__ import annotations

import copy
import json
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable, Iterator

from coracle.build import copy_add, metadata
from coracle.build.cache import BuildCache, step_key
from coracle.build.container import LEDGER, Emit, remove_leftovers, step_container
from coracle.build.context import Context
from coracle.build.dockerfile import Dockerfile, Instruction, ParseError, key_values, parse
from coracle.build.errors import BuildCancelled, BuildError, RunFailed
from coracle.build.metadata import DEFAULT_SHELL, NOP, env_dict
from coracle.build.mounts import RunMounts
from coracle.build.words import Lexer
from coracle.engine import file_access
from coracle.errors import CoracleError, InvalidParameter, NotFound
from coracle.images import mediatypes as mt
from coracle.images.layers import EMPTY_DIFF_ID
from coracle.images.reference import parse as parse_reference
from coracle.images.service import ImageService
from coracle.images.content import config_bytes, now_rfc3339
from coracle.network.mode import NetworkMode
from coracle.runtime.confined import Helper

PROXY_ARGS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy",
              "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy")


@dataclass
class BuildOptions:
    dockerfile: str = "Dockerfile"
    tags: list[str] = field(default_factory=list)
    build_args: dict[str, str | None] = field(default_factory=dict)
    target: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    no_cache: bool = False
    pull: bool = False
    remove: bool = True          # step containers of successful steps are removed (`rm`)
    force_remove: bool = False   # ... and those of failed RUNs too (`forcerm`)
    network_mode: str = ""
    extra_hosts: list[str] = field(default_factory=list)
    shm_size: int = 0
    secrets: dict[str, bytes] = field(default_factory=dict)
    cache_from: list[str] = field(default_factory=list)
    resources: dict[str, Any] = field(default_factory=dict)   # HostConfig limits of RUN containers


@dataclass
class Stage:
    index: int
    name: str
    instructions: list[Instruction]
    deps: set[int] = field(default_factory=set)
    raw: dict[str, Any] = field(default_factory=dict)   # the image config being built
    image_id: str = ""       # an image holding exactly raw ("" for scratch until a step needs one)
    key: str = ""            # the cache key of the last step
    args: dict[str, str | None] = field(default_factory=dict)   # ARGs declared in this stage
    cmd_from_base: bool = True

    @property
    def config(self) -> dict[str, Any]:
        return self.raw.setdefault("config", {})


class Builder:
    """Builds images for the daemon; one instance, any number of builds at a time."""

    def __init__(self, engine: Any, images: ImageService, cache: BuildCache, work_root: str) -> None:
        self.engine, self.images, self.cache = engine, images, cache
        self.work_root = work_root
        os.makedirs(work_root, exist_ok=True)

    def scratch_dir(self) -> str:
        """A private directory for one build (context, staged tars); removed by the caller."""
        return tempfile.mkdtemp(prefix="build-", dir=self.work_root)

    def clean_leftovers(self) -> None:
        """What builds that died with a previous daemon left: their step containers, their files."""
        for name in os.listdir(self.work_root):
            if name.startswith("build-"):
                remove_leftovers(self.engine, os.path.join(self.work_root, name))
                shutil.rmtree(os.path.join(self.work_root, name), ignore_errors=True)

    def build(self, context_root: str, scratch: str, options: BuildOptions, emit: Emit,
              cancelled: threading.Event, dockerfile: Dockerfile | None = None) -> str:
        """Build; returns the image id. Progress goes to emit as Docker's JSON messages. The
        Dockerfile is read from the context unless the caller has parsed it already."""
        context = Context(context_root)
        if dockerfile is None:
            dockerfile = parse(context.read_file(options.dockerfile))
        return Build(self, context, dockerfile, scratch, options, emit, cancelled).run()


class Build:
    """One build: its stages, step counter, cache lookups and messages (RunMounts uses its lookups)."""

    def __init__(self, builder: Builder, context: Context, dockerfile: Dockerfile, scratch: str,
                 options: BuildOptions, emit: Emit, cancelled: threading.Event) -> None:
        self.builder, self.engine, self.images = builder, builder.engine, builder.images
        self.context, self.df, self.scratch, self.options = context, dockerfile, scratch, options
        self._emit, self.cancelled = emit, cancelled
        self.id = uuid.uuid4().hex
        self.ledger = os.path.join(scratch, LEDGER)
        self.cache_sources = [self.images.resolve(ref) for ref in options.cache_from if self._exists(ref)]
        self._lock = threading.Lock()
        self.step_no, self.total = 0, 0
        self.consumed: set[str] = set()
        self.meta_args: dict[str, str | None] = {}
        self.stages: list[Stage] = []
        self.error: BaseException | None = None
        self.hits: list[str] = []   # cache keys this build reused (their use is counted at the end)

    def _exists(self, ref: str) -> bool:
        try:
            self.images.resolve(ref)
            return True
        except (NotFound, InvalidParameter):
            return False  # as Docker: a cache source that is not here is no source

    def emit(self, message: dict[str, Any]) -> None:
        if self.cancelled.is_set():
            raise BuildCancelled("the build was cancelled")
        with self._lock:
            self._emit(message)

    def say(self, text: str) -> None:
        self.emit({"stream": text})

    # ----- plan ------------------------------------------------------------

    def run(self) -> str:
        meta, stage_lists = self.df.stages()
        for ins in meta:
            self._declare_arg(ins, self.meta_args, self.meta_args)
        for index, instructions in enumerate(stage_lists):
            self.stages.append(self._stage(index, instructions))
        target = self._target()
        if self.options.labels:
            label = " ".join(f"{json.dumps(k)}={json.dumps(v)}" for k, v in sorted(self.options.labels.items()))
            target.instructions.append(Instruction("LABEL", label, 0, f"LABEL {label}"))
        needed = self._needed(target)
        self.total = sum(len(self.stages[i].instructions) for i in needed)
        try:
            self._build_stages(needed)
        finally:
            self.builder.cache.used(self.hits)
        raw = target.raw
        tags = [parse_reference(t).tagged for t in self.options.tags]
        image = self.images.add_image(config_bytes(raw), tags)
        for tag in tags:  # as Docker: a built image shows up in events when it is tagged
            self.images.announce("tag", image, tag)
        unused = sorted(k for k in self.options.build_args if k not in self.consumed and k not in PROXY_ARGS)
        if unused:
            self.say(f"[Warning] One or more build-args {unused} were not consumed\n".replace("'", ""))
        self.emit({"aux": {"ID": image.id}})
        self.say(f"Successfully built {image.short_id}\n")
        for tag in self.options.tags:
            self.say(f"Successfully tagged {parse_reference(tag).tagged}\n")
        return image.id

    def _stage(self, index: int, instructions: list[Instruction]) -> Stage:
        first = instructions[0]
        words = first.text.split()
        if len(words) not in (1, 3) or len(words) == 3 and words[1].lower() != "as":
            raise ParseError(first.line, "FROM requires either one or three arguments")
        name = words[2].lower() if len(words) == 3 else ""
        if name and any(s.name == name for s in self.stages):
            raise ParseError(first.line, f"duplicate name {name}")
        stage = Stage(index, name, instructions)
        base = self._meta_lexer().word(words[0])
        found = self.stage_named(base)
        if found is not None:
            stage.deps.add(found.index)
        for ins in instructions[1:]:
            for ref in [ins.flag("from")] + [m.get("from") for m in RunMounts.specs(ins)]:
                if ref and (dep := self.stage_named(self._meta_lexer().word(ref))) is not None:
                    stage.deps.add(dep.index)
        return stage

    def stage_named(self, ref: str, before: int | None = None) -> Stage | None:
        """The stage a FROM, --from or mount names (by name or index); only stages before `before`
        count, as with Docker: a later name is an image name."""
        earlier = self.stages[:len(self.stages) if before is None else before]
        if ref.isdigit() and int(ref) < len(earlier):
            return earlier[int(ref)]
        return next((s for s in earlier if s.name and s.name == ref.lower()), None)

    def _meta_lexer(self) -> Lexer:
        return Lexer({k: v for k, v in self.meta_args.items() if v is not None}, self.df.escape)

    def _target(self) -> Stage:
        if not self.options.target:
            return self.stages[-1]
        found = next((s for s in self.stages if s.name == self.options.target.lower()), None)
        if found is None:
            raise InvalidParameter(f"failed to reach build target {self.options.target} in Dockerfile")
        return found

    def _needed(self, target: Stage) -> list[int]:
        needed, todo = set(), [target.index]
        while todo:
            i = todo.pop()
            if i not in needed:
                needed.add(i)
                todo.extend(self.stages[i].deps)
        return sorted(needed)

    def _build_stages(self, needed: list[int]) -> None:
        """Each needed stage once its dependencies are built; independent stages in parallel."""
        if len(needed) == 1:  # one stage: no pool, no thread to start and join
            self._build_stage(self.stages[needed[0]])
            return
        futures: dict[int, Future] = {}
        with ThreadPoolExecutor(max_workers=max(1, min(4, len(needed)))) as pool:
            for i in needed:
                deps = [futures[d] for d in self.stages[i].deps]
                futures[i] = pool.submit(self._after, deps, self._build_stage, self.stages[i])
            for i in needed:
                with suppress(BaseException):
                    futures[i].result()
        if self.error is not None:  # the failing stage's own error, not what it made the others do
            raise self.error

    @staticmethod
    def _after(deps: list[Future], work: Callable[[Stage], None], stage: Stage) -> None:
        for dep in deps:
            try:
                dep.result()
            except BaseException:
                raise _DependencyFailed() from None
        work(stage)

    # ----- steps -----------------------------------------------------------

    def _build_stage(self, stage: Stage) -> None:
        try:
            self._from(stage, stage.instructions[0])
            for ins in stage.instructions[1:]:
                if self.error is not None:  # another stage failed: the stages beside it stop too
                    raise _DependencyFailed()
                self._dispatch(stage, ins)
        except BaseException as exc:
            with self._lock:
                if self.error is None:
                    self.error = exc
            raise

    def stopping(self) -> bool:
        """The client went away, or another stage failed: running steps stop."""
        return self.cancelled.is_set() or self.error is not None

    def _dispatch(self, stage: Stage, ins: Instruction, numbered: bool = True) -> None:
        header = f"Step {self._next_step()}/{self.total} : {ins.original}\n" if numbered else ""
        if ins.keyword == "RUN":
            self._run(stage, ins, header)
        elif ins.keyword in ("COPY", "ADD"):
            self._copy(stage, ins, header)
        else:
            self.say(header)
            if ins.keyword == "ARG":
                names = self._declare_arg(ins, stage.args, self.meta_args, stage)
                created_by, config = f"{NOP} ARG {' '.join(names)}", dict(stage.config)
            else:
                created_by, config = metadata.apply(stage, ins, self.lexer(stage), self.df.escape)
            key = step_key(stage.key, created_by)
            if not self._cached(stage, key, created_by, config):
                self._commit(stage, created_by, config, None, key)

    def _next_step(self) -> int:
        with self._lock:
            self.step_no += 1
            return self.step_no

    def lexer(self, stage: Stage) -> Lexer:
        env = {k: v for k, v in stage.args.items() if v is not None}
        env.update(env_dict(stage.config.get("Env")))
        return Lexer(env, self.df.escape)

    def _declare_arg(self, ins: Instruction, into: dict[str, str | None], meta: dict[str, str | None],
                     stage: Stage | None = None) -> list[str]:
        lexer = self.lexer(stage) if stage else self._meta_lexer()
        shown = []
        for name, default in key_values(ins, self.df.escape):
            value = lexer.word(default) if default is not None else meta.get(name) if stage else None
            if name in self.options.build_args and self.options.build_args[name] is not None:
                value = self.options.build_args[name]
            into[name] = value
            self.consumed.add(name)
            shown.append(name if default is None else f"{name}={lexer.word(default)}")
        return shown

    def _from(self, stage: Stage, ins: Instruction) -> None:
        self.say(f"Step {self._next_step()}/{self.total} : {ins.original}\n")
        ref = self._meta_lexer().word(ins.text.split()[0])
        parent = self.stage_named(ref, stage.index)
        if parent is not None:
            stage.raw, stage.image_id, stage.key = copy.deepcopy(parent.raw), parent.image_id, parent.key
        elif ref.lower() == "scratch":
            stage.raw = {"architecture": mt.ARCH, "os": mt.OS, "config": {},
                         "rootfs": {"type": "layers", "diff_ids": []}, "history": []}
            stage.key = "scratch"
        else:
            image = self.base_image(ref)
            stage.raw = {k: copy.deepcopy(v) for k, v in image.raw.items()
                         if k not in ("container", "container_config")}
            stage.image_id, stage.key = image.id, image.id
        self.say(f" ---> {stage.image_id.removeprefix('sha256:')[:12] or 'scratch'}\n")
        triggers = stage.config.pop("OnBuild", None) or []
        if triggers:
            self.say(f"# Executing {len(triggers)} build trigger{'s' if len(triggers) > 1 else ''}\n")
            for trigger in triggers:
                for step in parse(trigger).instructions:
                    self._dispatch(stage, step, numbered=False)

    def base_image(self, ref: str) -> Any:
        if self.options.pull:
            try:
                return self.images.pull(ref, None, None)
            except CoracleError as exc:
                try:
                    image = self.images.resolve(ref)
                except NotFound:
                    raise exc from None
                self.say(f"[Warning] could not pull {ref} ({exc}); using the local image\n")
                return image
        try:
            return self.images.resolve(ref)
        except NotFound:
            self.say(f"Pulling {ref}\n")
            return self.images.pull(ref, None, None)

    def _cached(self, stage: Stage, key: str, created_by: str, config: dict[str, Any]) -> bool:
        """A cache hit for this step: the stage moves to the image made before."""
        if self.options.no_cache:
            return False
        with self.images.store.tx():  # the look-ups of one step read in one transaction
            image_id = self.builder.cache.lookup(key)
            image = self._image(image_id) if image_id else None
        if image is not None:
            with self._lock:
                self.hits.append(key)
        else:
            image_id = self._from_cache_sources(stage, key, created_by, config)
            if image_id is None:
                return False
            image = self.images.resolve(image_id)
        stage.raw, stage.image_id, stage.key = image.raw, image.id, key  # decoded for this look-up: ours
        self.say(f" ---> Using cache\n ---> {image.short_id}\n")
        return True

    def _image(self, image_id: str) -> Any:
        try:
            return self.images.resolve(image_id)
        except NotFound:
            return None  # pruned since: the step runs again

    def _from_cache_sources(self, stage: Stage, key: str, created_by: str, config: dict[str, Any]) -> str | None:
        """`cachefrom`: an image (pulled, loaded, built elsewhere) whose history and layers continue
        the stage's by exactly this step; the step's image is that image's next entry and layer."""
        history = stage.raw.get("history") or []
        layers = list((stage.raw.get("rootfs") or {}).get("diff_ids") or [])
        for source in self.cache_sources:
            theirs = source.raw.get("history") or []
            if len(theirs) <= len(history) or source.layers[:len(layers)] != layers or \
                    [h.get("created_by") for h in theirs[:len(history)]] != [h.get("created_by") for h in history]:
                continue
            step = theirs[len(history)]
            layer = [] if step.get("empty_layer") else source.layers[len(layers):len(layers) + 1]
            if step.get("created_by") != created_by or not step.get("empty_layer") and not layer:
                continue
            raw = {**stage.raw, "created": step.get("created") or now_rfc3339(), "config": config,
                   "rootfs": {"type": "layers", "diff_ids": layers + layer}, "history": [*history, step]}
            image = self.images.add_image(config_bytes(raw), [], parent=stage.image_id, intermediate=True)
            self.builder.cache.record(key, image.id, stage.image_id, created_by, 0)
            return image.id
        return None

    def _commit(self, stage: Stage, created_by: str, config: dict[str, Any], diff_id: str | None, key: str) -> None:
        """The step's image (and its cache record); the stage moves on to it. No diff id (or an
        empty layer) makes an `empty_layer` history entry, as BuildKit does for a RUN that changed nothing."""
        if diff_id == EMPTY_DIFF_ID:
            diff_id = None
        now = now_rfc3339()
        raw = {k: v for k, v in stage.raw.items() if k not in ("container", "container_config")}
        diff_ids = list((raw.get("rootfs") or {}).get("diff_ids") or []) + ([diff_id] if diff_id else [])
        entry: dict[str, Any] = {"created": now, "created_by": created_by}
        if diff_id is None:
            entry["empty_layer"] = True
        raw.update(created=now, config=config, rootfs={"type": "layers", "diff_ids": diff_ids},
                   history=[*(raw.get("history") or []), entry])
        image = self.images.add_image(config_bytes(raw), [], parent=stage.image_id, intermediate=True)
        size = (self.images.store.get("image-layer", diff_id) or {}).get("Size", 0) if diff_id else 0
        self.builder.cache.record(key, image.id, stage.image_id, created_by, size)
        stage.raw, stage.image_id, stage.key = raw, image.id, key
        self.say(f" ---> {image.short_id}\n")

    def materialized(self, stage: Stage) -> str:
        """An image of the stage as it is now (a step container needs one; scratch has none yet)."""
        if not stage.image_id:
            stage.image_id = self.images.add_image(config_bytes(stage.raw), [], intermediate=True).id
        return stage.image_id

    def _host_config(self, **extra: Any) -> dict[str, Any]:
        return {"NetworkMode": str(NetworkMode.parse(self.options.network_mode)),
                "ExtraHosts": self.options.extra_hosts,
                "ShmSize": self.options.shm_size or None, **self.options.resources, **extra}

    # ----- RUN -----------------------------------------------------------------

    def _run(self, stage: Stage, ins: Instruction, header: str) -> None:
        self.say(header)
        if ins.flag("security") not in (None, "sandbox"):
            raise BuildError("RUN --security=insecure is not supported: RUN steps are ordinary confined containers")
        config = stage.config
        shell = config.get("Shell") or DEFAULT_SHELL
        argv = ins.json_args()
        if argv is None:
            text = ins.text
            if ins.heredocs:
                rest = re.sub(r"<<-?(?:\"\w+\"|'\w+'|\w+)", "", text).strip()
                if not rest and len(ins.heredocs) == 1:
                    text = ins.heredocs[0].content
                else:
                    text += "\n" + "".join(h.content + h.name + "\n" for h in ins.heredocs)
            argv = [*shell, text]
        args = {k: v for k, v in sorted(stage.args.items()) if v is not None}
        proxies = {k: v for k, v in self.options.build_args.items() if k in PROXY_ARGS and v is not None}
        env = env_dict(config.get("Env"))
        shown = {k: v for k, v in args.items() if k not in env}
        created_by = " ".join(argv)
        if shown:
            created_by = f"|{len(shown)} " + " ".join(f"{k}={v}" for k, v in shown.items()) + " " + created_by
        mounts = RunMounts(self, stage, ins)
        key = step_key(stage.key, created_by, mounts.key())
        if self._cached(stage, key, created_by, stage.config):
            return
        run_env = [f"{k}={v}" for k, v in {**proxies, **shown, **env}.items()]
        body = {"Cmd": argv, "Entrypoint": [""], "Env": run_env, "User": config.get("User") or "",
                "WorkingDir": config.get("WorkingDir") or ""}
        with mounts.prepared() as host_mounts, self.images.assembling():
            host_config = self._host_config(Mounts=host_mounts)
            if ins.flag("network"):
                host_config["NetworkMode"] = {"default": host_config["NetworkMode"], "none": "none",
                                              "host": "host"}.get(ins.flag("network") or "", "invalid")
                if host_config["NetworkMode"] == "invalid":
                    raise BuildError(f"RUN --network={ins.flag('network')} is not supported")
            with step_container(self.engine, self.materialized(stage), body, host_config, self.id, self.ledger,
                                self._keep) as c:
                self.say(f" ---> Running in {c.id[:12]}\n")
                code = c.run(self.emit, self.stopping)
                if code:
                    raise RunFailed(f"The command '{' '.join(argv)}' returned a non-zero code: {code}", code)
                diff_id = self.images.pack_layer(c.upper_dir, skip=mounts.targets)
            if self.options.remove:
                self.say(f" ---> Removed intermediate container {c.id[:12]}\n")
            self._commit(stage, created_by, copy.deepcopy(config), diff_id, key)

    def _keep(self, error: BaseException | None) -> bool:
        """Whether a RUN's container stays after the step: Docker's `rm` and `forcerm`."""
        if error is None:
            return not self.options.remove
        return isinstance(error, RunFailed) and not self.options.force_remove

    # ----- COPY / ADD ------------------------------------------------------------

    def _copy(self, stage: Stage, ins: Instruction, header: str) -> None:
        self.say(header)
        for flag in ("parents", "exclude", "checksum", "keep-git-dir"):
            if flag in ins.flags:
                raise BuildError(f"{ins.keyword} --{flag} is not supported by this builder")
        lexer = self.lexer(stage)
        as_json = ins.json_args()
        words = [lexer.word(w) for w in as_json] if as_json is not None else lexer.words(ins.text)
        if len(words) < 2:
            raise BuildError(f"{ins.keyword} requires at least two arguments, but only one was provided. "
                             "Destination could not be determined")
        *sources, dest = words
        workdir = stage.config.get("WorkingDir") or "/"
        dest_path = posixpath.join(workdir, dest)
        wants_dir = dest.endswith("/") or dest in (".", "..") or dest.endswith("/.")
        chown_flag = ins.flag("chown")
        chown = lexer.word(chown_flag) if chown_flag else ""
        chmod = copy_add.parse_chmod(ins.flag("chmod"))
        source_from = ins.flag("from")
        pieces: list[copy_add.Piece] = []
        names: list[str] = []
        from_image = ""
        if source_from:
            ref = lexer.word(source_from)
            other = self.stage_named(ref, stage.index)
            from_image = self.materialized(other) if other is not None else self.base_image(ref).id
            digest = step_key(from_image, "\0".join(sources))
            label = "multi:" if len(sources) > 1 else "file:"
        else:
            pieces, names = self._pieces(ins, lexer, sources)
            digest = step_key("", "\0".join(p.label + p.digest for p in pieces))
            label = "multi:" if len(pieces) > 1 else pieces[0].label
        created_by = f"{NOP}{ins.keyword} {label}{digest} in {dest_path} "
        key = step_key(stage.key, created_by, f"chown={chown} chmod={chmod}")
        if self._cached(stage, key, created_by, stage.config):
            return
        with self.images.assembling():
            with step_container(self.engine, self.materialized(stage), {"Cmd": ["true"], "Entrypoint": [""]},
                                {"NetworkMode": "none"}, self.id, self.ledger) as c:
                owner = self._owner(c.id, chown) if chown else None
                many = len(sources) > 1 or len(pieces) > 1
                known_dir = wants_dir or many or any(p.is_dir for p in pieces)
                # the archive helper makes missing parents itself: a look costs a helper process,
                # needed only to tell a file target from an existing directory, or to own a new one
                existing = self._stat(c.id, dest_path) if not known_dir or chown else {"mode": copy_add.GO_DIR}
                is_dir = existing is not None and bool(existing["mode"] & copy_add.GO_DIR)
                with self._source_from(from_image, sources) as exported:
                    if exported is not None:
                        pieces = exported
                        names = [posixpath.basename(s.rstrip("/")) for s in sources]
                    into_dir = known_dir or is_dir or any(p.is_dir for p in pieces)
                    placement = copy_add.Placement(dest_path, into_dir, create_dir=existing is None, chmod=chmod,
                                                owner=owner, names=names)
                    with tempfile.TemporaryFile(dir=self.scratch) as f:
                        copy_add.write_tar(f, pieces, placement)
                        f.seek(0)
                        file_access.extract(self.engine, c.id, "/", f)
                diff_id = self.images.pack_layer(c.upper_dir)
            self._commit(stage, created_by, copy.deepcopy(stage.config), diff_id, key)

    def _pieces(self, ins: Instruction, lexer: Lexer, sources: list[str]) -> tuple[list[copy_add.Piece], list[str]]:
        """The sources of a COPY/ADD from the context, heredocs or URLs, and the name each file gets."""
        heredocs = iter(ins.heredocs)
        pieces: list[copy_add.Piece] = []
        names: list[str] = []
        for src in sources:
            if src.startswith("<<") and ins.heredocs:
                doc = next(heredocs)
                pieces.append(copy_add.heredoc_piece(lexer.expand(doc.content) if doc.expand else doc.content))
                names.append(doc.name)
            elif re.match(r"^https?://", src):
                if ins.keyword == "COPY":
                    raise BuildError(f"COPY does not fetch URLs ({src}); use ADD or RUN wget")
                piece, name = copy_add.url_piece(src, tempfile.mkdtemp(dir=self.scratch))
                pieces.append(piece)
                names.append(name)
            else:
                for found in self.context.sources(src):
                    archived = copy_add.archive_piece(self.context, found) if ins.keyword == "ADD" else None
                    pieces.append(archived or copy_add.context_piece(self.context, found))
                    names.append(posixpath.basename(found.rel))
        if not pieces:
            raise BuildError(f"{ins.keyword} failed: no source files were specified")
        return pieces, names

    def _owner(self, cid: str, chown: str) -> tuple[int, int]:
        """--chown as numbers; names come from the image's /etc files, read by the archive helper."""
        user, _, group = chown.partition(":")
        passwd = self._read_text(cid, "/etc/passwd") if not user.isdigit() else ""
        groups = self._read_text(cid, "/etc/group") if group and not group.isdigit() else ""
        return copy_add.parse_chown(chown, passwd, groups)

    def _read_text(self, cid: str, path: str, limit: int = 1 << 20) -> str:
        """A small file of the container's image, streamed out by the confined archive helper."""
        if self._stat(cid, path) is None:
            return ""
        _, helper = file_access.export(self.engine, cid, path)
        try:
            with tarfile.open(fileobj=helper.stdout, mode="r|") as tar:
                for member in tar:
                    data = tar.extractfile(member) if member.isreg() else None
                    return data.read(limit).decode(errors="replace") if data else ""
            return ""
        finally:
            helper.close()

    def _stat(self, cid: str, path: str) -> dict[str, Any] | None:
        try:
            return file_access.stat(self.engine, cid, path)
        except NotFound:
            return None

    @contextmanager
    def _source_from(self, image_id: str, sources: list[str]) -> Iterator[list[copy_add.Piece] | None]:
        """COPY --from: each source streamed out of a container of that image by the archive helper."""
        if not image_id:
            yield None
            return
        with step_container(self.engine, image_id, {"Cmd": ["true"], "Entrypoint": [""]},
                            {"NetworkMode": "none"}, self.id, self.ledger) as src:
            helpers: list[Helper] = []
            pieces: list[copy_add.Piece] = []
            try:
                for path in sources:
                    if any(ch in path for ch in "*?["):
                        raise BuildError(f"COPY --from: wildcards are not supported ({path})")
                    found = self._stat(src.id, path)
                    if found is None:
                        raise BuildError(f"COPY --from: {path} not found in the source image")
                    is_dir = bool(found["mode"] & copy_add.GO_DIR)
                    _, helper = file_access.export(self.engine, src.id, path.rstrip("/") + "/." if is_dir else path)
                    helpers.append(helper)
                    pieces.append(copy_add.exported_piece(helper.stdout, is_dir))
                yield pieces
            finally:
                for helper in helpers:
                    helper.close()


class _DependencyFailed(CoracleError):
    """A stage this one needs failed (its own error is the one reported)."""
