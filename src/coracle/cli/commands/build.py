"""`coracle build`: send a context to POST /build and show its progress.

The context is the directory (minus what its `.dockerignore` leaves out, with
the same rules the daemon applies), tarred to a temporary file and streamed.
Progress reads Docker's classic build stream and shows one line per step with
its cache hit or elapsed time; on a terminal the running step's timer ticks,
otherwise (or with `--progress plain`) lines are only ever appended.
"""

from __future__ import annotations

import _thread
import os
import sys
import time

from coracle.cli import contexttar, wirejson
from coracle.cli.commands import CommandError, parser
from coracle.cli.main import Cli

TYPE_CHECKING = False  # typing is for checkers only: it costs start-up time
if TYPE_CHECKING:
    from typing import IO, Any
    from collections.abc import Iterator

_NOISE = (" ---> Running in ", " ---> Removed intermediate container ")


def _step(text: str) -> tuple[str, str, str] | None:
    """`Step 2/5 : RUN make` -> ("2", "5", "RUN make"), else None (string work: no `re` at start-up)."""
    if not text.startswith("Step "):
        return None
    counts, sep, rest = text[5:].partition(" : ")
    number, slash, total = counts.partition("/")
    return (number, total, rest) if sep and slash and number.isdigit() and total.isdigit() else None


def _noise(text: str) -> bool:
    """The classic builder's container and image id lines, which the step lines already say."""
    line = text.rstrip("\n")
    if line.startswith(_NOISE):
        return True
    short = line.removeprefix(" ---> ")
    return short != line and len(short) == 12 and all(c in "0123456789abcdef" for c in short)


def _context_entries(root: str, dockerfile: bytes | None, dockerfile_name: str
                     ) -> Iterator[tuple[str, str | None, os.stat_result, bytes | None]]:
    """The directory's entries (ignored paths left out), then an outside Dockerfile under its own name."""
    rules = None
    try:
        with open(os.path.join(root, ".dockerignore"), errors="replace") as f:
            text = f.read()
    except OSError:
        text = ""
    if text.strip():  # the pattern engine loads only for a context that has rules
        from coracle.build.ignore import IgnoreRules

        rules = IgnoreRules(text)
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        for name in sorted(dirnames + filenames):
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if rules is None or rel in ("Dockerfile", ".dockerignore", dockerfile_name) or not rules.ignored(rel):
                path = os.path.join(dirpath, name)
                yield rel, path, os.lstat(path), None
        if rules is not None:
            below = [(d, d if rel_dir == "." else f"{rel_dir}/{d}") for d in dirnames]
            dirnames[:] = [d for d, rel in below if not rules.ignored(rel) or rules.may_keep_below(rel)]
    if dockerfile is not None:
        info = os.stat_result((0o100644, 0, 0, 1, 0, 0, len(dockerfile), 0, int(time.time()), 0))
        yield dockerfile_name, None, info, dockerfile


def _body(chunks: Iterator[bytes]) -> bytes | Iterator[bytes]:
    """A small context whole (one write, with its length), a larger one as a chunked stream."""
    first = next(chunks)
    try:
        second = next(chunks)
    except StopIteration:
        return first

    def rest() -> Iterator[bytes]:
        yield first
        yield second
        yield from chunks

    return rest()


def _stdin_context() -> Any:
    """`build -`: a context tar from stdin (passed on as it comes), or a Dockerfile alone."""
    import io
    import tarfile
    import tempfile

    body = tempfile.TemporaryFile()  # noqa: SIM115  (the caller sends and closes it)
    while chunk := sys.stdin.buffer.read(1 << 20):
        body.write(chunk)
    body.seek(0)
    if not tarfile.is_tarfile(body):
        body.seek(0)
        data = body.read()
        body.seek(0)
        body.truncate()
        with tarfile.open(fileobj=body, mode="w") as tar:
            info = tarfile.TarInfo("Dockerfile")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    body.seek(0)
    return body


def _pairs(items: list[str], flag: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for item in items:
        key, eq, value = item.partition("=")
        out[key] = value if eq else os.environ.get(key)
        if not key:
            raise CommandError(f"invalid {flag}: {item!r}", 125)
    return out


def _secrets(specs: list[str]) -> dict[str, str]:
    """--secret id=ID,src=FILE | id=ID,env=VAR -> the header the daemon reads (never part of the context)."""
    if not specs:
        return {}
    import base64

    out = {}
    for spec in specs:
        fields = dict(f.partition("=")[::2] for f in spec.split(","))
        sid = fields.get("id")
        if not sid:
            raise CommandError(f"invalid --secret {spec!r}: id is required", 125)
        if fields.get("env"):
            value = os.environ.get(fields["env"], "").encode()
        else:
            path = fields.get("src") or fields.get("source") or ""
            try:
                with open(os.path.expanduser(path), "rb") as f:
                    value = f.read()
            except OSError as exc:
                raise CommandError(f"failed to read secret {sid} from {path!r}: {exc.strerror}", 1) from None
        out[sid] = base64.b64encode(value).decode()
    return {"X-Coracle-Build-Secrets": base64.b64encode(wirejson.dumps(out).encode()).decode()} if out else {}


class Progress:
    """One line per step: `[2/5] RUN make  1.2s` or `[3/5] COPY . /src  CACHED`; RUN output indented below."""

    def __init__(self, out: IO[str], live: bool) -> None:
        self.out, self.live = out, live
        self.header = ""
        self.started = 0.0
        self.cached = False
        self.on_header_line = False   # the cursor is still at the end of the running step's line
        self.lock = _thread.allocate_lock()
        self.ticking = False
        self.build_start = time.monotonic()
        if live:
            _thread.start_new_thread(self._tick, ())

    def _tick(self) -> None:
        while not self.ticking:
            time.sleep(0.1)
            with self.lock:
                if self.header and self.on_header_line:
                    self.out.write(f"\r\x1b[K{self.header}  {time.monotonic() - self.started:.1f}s")
                    self.out.flush()

    def _close_step(self) -> None:
        if not self.header:
            return
        status = "CACHED" if self.cached else f"{time.monotonic() - self.started:.1f}s"
        if self.on_header_line:
            self.out.write(("\r\x1b[K" + self.header if self.live else "") + f"  {status}\n")
        else:
            self.out.write(f"{self.header}  {status}\n" if self.live else f"  done {status}\n")
        self.header, self.on_header_line, self.cached = "", False, False

    def message(self, msg: dict[str, Any]) -> None:
        text = msg.get("stream")
        if text is None:
            return
        with self.lock:
            step = _step(text.rstrip("\n"))
            if step:
                self._close_step()
                self.header = f"[{step[0]}/{step[1]}] {step[2].strip()}"
                self.started, self.on_header_line = time.monotonic(), True
                self.out.write(self.header)
            elif text.startswith(" ---> Using cache"):
                self.cached = True
            elif _noise(text) or not text.strip():
                return
            elif text.startswith(("Successfully built", "Successfully tagged")):
                self._close_step()
                self.out.write(text)
            else:
                if self.on_header_line:
                    self.out.write("\n")
                    self.on_header_line = False
                self.out.write("".join(f"    {line}\n" for line in text.rstrip("\n").split("\n")))
            self.out.flush()

    def finish(self, failed: bool = False) -> None:
        self.ticking = True
        with self.lock:
            if failed and self.header:
                self.out.write(("\n" if self.on_header_line else "") + f"{self.header}  ERROR\n")
                self.header = ""
            self._close_step()
            self.out.write(f"Build finished in {time.monotonic() - self.build_start:.1f}s\n" if not failed else "")
            self.out.flush()


def build(cli: Cli, name: str, args: list[str]) -> int:
    p = parser(name, "[OPTIONS] PATH | -", "Build an image from a Dockerfile")
    p.add_argument("-t", "--tag", action="append", default=[], help="name and optionally a tag (name:tag)")
    p.add_argument("-f", "--file", help="name of the Dockerfile (default: PATH/Dockerfile)")
    p.add_argument("--build-arg", action="append", default=[], help="set build-time variables")
    p.add_argument("--target", help="set the target build stage to build")
    p.add_argument("--no-cache", action="store_true", help="do not use cache when building the image")
    p.add_argument("--pull", action="store_true", help="always attempt to pull a newer version of the image")
    p.add_argument("--label", action="append", default=[], help="set metadata for an image")
    p.add_argument("--cache-from", action="append", default=[], help="images to consider as cache sources")
    p.add_argument("--rm", nargs="?", const="true", default="true", help="remove intermediate containers after a "
                   "successful build (default true)")
    p.add_argument("--force-rm", action="store_true", help="always remove intermediate containers")
    p.add_argument("--network", help="networking mode for the RUN instructions during build")
    p.add_argument("--add-host", action="append", default=[], help="add a custom host-to-IP mapping (host:ip)")
    p.add_argument("--shm-size", type=int, help="size of /dev/shm in bytes")
    p.add_argument("--platform", help="set platform (linux/amd64 only)")
    p.add_argument("--secret", action="append", default=[], help="secret for RUN --mount=type=secret: id=ID,src=FILE")
    p.add_argument("-q", "--quiet", action="store_true", help="suppress the build output and print image ID on success")
    p.add_argument("--progress", choices=("auto", "plain", "tty"), default="auto", help="type of progress output")
    p.add_argument("path")
    opts = p.parse_args(args)
    dockerfile_name = "Dockerfile"
    outside: bytes | None = None
    if opts.path != "-" and not os.path.isdir(opts.path):
        raise CommandError(f'unable to prepare context: path "{opts.path}" not found', 1)
    if opts.file == "-":
        outside, dockerfile_name = sys.stdin.buffer.read(), ".dockerfile.stdin"
    elif opts.file:
        in_context = opts.path != "-" and os.path.realpath(opts.file).startswith(os.path.realpath(opts.path) + os.sep)
        if in_context:
            dockerfile_name = os.path.relpath(os.path.realpath(opts.file), os.path.realpath(opts.path))
        else:
            try:
                with open(opts.file, "rb") as f:
                    outside = f.read()
            except OSError as exc:
                raise CommandError(f"unable to prepare context: {exc.strerror}: {opts.file}", 1) from None
            dockerfile_name = ".dockerfile." + os.urandom(6).hex()
    query: dict[str, Any] = {
        "t": opts.tag or None, "dockerfile": dockerfile_name, "target": opts.target,
        "buildargs": wirejson.dumps(_pairs(opts.build_arg, "--build-arg")) if opts.build_arg else None,
        "labels": wirejson.dumps(_pairs(opts.label, "--label")) if opts.label else None,
        "cachefrom": wirejson.dumps(opts.cache_from) if opts.cache_from else None,
        "nocache": 1 if opts.no_cache else None, "pull": 1 if opts.pull else None,
        "rm": 0 if opts.rm.lower() in ("false", "0") else None, "forcerm": 1 if opts.force_rm else None,
        "networkmode": opts.network, "extrahosts": ",".join(opts.add_host) or None,
        "shmsize": opts.shm_size, "platform": opts.platform, "q": 1 if opts.quiet else None,
    }
    body: Any = None
    try:
        body = _stdin_context() if opts.path == "-" else \
            _body(contexttar.stream(_context_entries(opts.path, outside, dockerfile_name)))
        stream = cli.client.json_stream("POST", "/build", query, body, headers=_secrets(opts.secret),
                                        content_type="application/x-tar")
    except contexttar.ContextChanged as exc:
        raise CommandError(f"unable to send the context: {exc}", 1) from None
    finally:
        if hasattr(body, "close"):
            body.close()
    live = opts.progress == "tty" or opts.progress == "auto" and sys.stdout.isatty()
    progress = None if opts.quiet else Progress(sys.stdout, live)
    image_id = ""
    try:
        for msg in stream:
            if msg.get("error"):
                if progress:
                    progress.finish(failed=True)
                    progress = None
                detail = msg.get("errorDetail") or {}
                raise CommandError(msg["error"], int(detail.get("code") or 1))
            if msg.get("aux", {}).get("ID"):
                image_id = msg["aux"]["ID"]
            if progress:
                progress.message(msg)
            elif opts.quiet and msg.get("stream", "").startswith("sha256:"):
                image_id = msg["stream"].strip()
    finally:
        if progress:
            progress.finish()
    if opts.quiet:
        cli.out(image_id + "\n")
    return 0


def prune(cli: Cli, name: str, args: list[str]) -> int:
    from coracle.cli.units import human_size

    p = parser(name, "[OPTIONS]", "Remove build cache")
    p.add_argument("-a", "--all", action="store_true", help="remove all unused build cache (the default here)")
    p.add_argument("-f", "--force", action="store_true", help="do not prompt for confirmation")
    opts = p.parse_args(args)
    if not opts.force:
        from coracle.cli.commands import confirm

        if not confirm("WARNING! This will remove all build cache. Are you sure you want to continue?"):
            return 0
    result = cli.client.post("/build/prune") or {}
    for entry in result.get("CachesDeleted") or []:
        cli.out(f"Deleted: {entry}\n")
    cli.out(f"Total reclaimed space: {human_size(result.get('SpaceReclaimed', 0))}\n")
    return 0
