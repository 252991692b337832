"""Engine API routes for images: list, inspect, pull/import, load/save, tag, rmi, prune, commit."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import tempfile
import threading
from typing import Any
from collections.abc import Callable

from coracle.api.filters import labels_match, parse as parse_filters, values
from coracle.api.http import Request, Response, Router, decode_json
from coracle.api.backend import ContainerImages, ImageBackend
from coracle.errors import InvalidParameter

thread = asyncio.to_thread


def _auth(req: Request) -> dict | None:
    header = req.headers.get("X-Registry-Auth")
    if not header:
        return None
    try:
        padded = header + "=" * (-len(header) % 4)
        return decode_json(base64.urlsafe_b64decode(padded), "invalid X-Registry-Auth header: ") or None
    except ValueError:
        raise InvalidParameter("invalid X-Registry-Auth header") from None


async def spool(req: Request) -> str:
    """The request body (a tar stream) into a temporary file; returns its path."""
    fd, path = tempfile.mkstemp(prefix="coracle-upload-")
    with os.fdopen(fd, "wb") as f:
        async for chunk in req.stream():
            await thread(f.write, chunk)
    return path


PROGRESS_GATHER = 0.05  # seconds progress messages are gathered before a write (a display needs no more)


async def with_progress(stream: Any, work: Callable[[Callable[[dict[str, Any]], None]], Any]) -> Any:
    """Run work(progress) in a thread and stream its progress messages as Docker does.

    Once the stream has begun, an error travels inside it ({"errorDetail": ...},
    with the error's `code` when it has one) and None is returned; otherwise
    the work's result. Messages sent while the loop has not yet taken the last
    ones go out together, and a wake-up waits PROGRESS_GATHER for more (or the work's
    end) before it writes: a build whose steps are all cached (~5 ms of work) is sent in
    one write instead of passing the interpreter lock back and forth with the loop for
    every step, which cost more than the steps themselves.
    """
    loop = asyncio.get_running_loop()
    pending: list[dict[str, Any]] = []
    lock = threading.Lock()
    ready = asyncio.Event()

    def progress(message: dict[str, Any]) -> None:
        with lock:
            pending.append(message)
            first = len(pending) == 1
        if first:
            loop.call_soon_threadsafe(ready.set)

    async def flush() -> None:
        with lock:
            batch = pending[:]
            pending.clear()
            ready.clear()
        if batch:
            await stream.write(b"".join(json.dumps(m).encode() + b"\r\n" for m in batch))

    task = asyncio.ensure_future(thread(work, progress))
    waiter: asyncio.Future | None = None
    try:
        while not task.done():
            waiter = waiter or asyncio.ensure_future(ready.wait())
            await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
            if waiter.done():
                waiter = None
                await asyncio.wait({task}, timeout=PROGRESS_GATHER)
            await flush()
        await flush()  # what the work sent before ending (same loop, in order)
    finally:
        if waiter is not None:
            waiter.cancel()
    try:
        return task.result()
    except Exception as exc:
        detail: dict[str, Any] = {"message": str(exc)}
        code = getattr(exc, "code", None)
        if code:
            detail["code"] = code
        await stream.write(json.dumps({"errorDetail": detail, "error": str(exc)}).encode() + b"\r\n")
        return None


class ImageRouter:
    """Image routes; containers are consulted for the images in use and for commit."""

    def __init__(self, containers: ContainerImages, images: ImageBackend) -> None:
        self.containers, self.images = containers, images

    def register(self, router: Router) -> None:
        router.add("GET", "/images/json", self.list_)
        router.add("GET", "/images/search", self.search)
        router.add("GET", "/distribution/{name*}/json", self.distribution_info)
        router.add("POST", "/images/create", self.create, stream_body=True)
        router.add("POST", "/images/load", self.load, stream_body=True)
        router.add("GET", "/images/get", self.save)
        router.add("POST", "/images/prune", self.prune)
        router.add("GET", "/images/{name*}/json", self.inspect)
        router.add("GET", "/images/{name*}/history", self.history)
        router.add("GET", "/images/{name*}/get", self.save)
        router.add("POST", "/images/{name*}/tag", self.tag)
        router.add("POST", "/images/{name*}/push", self.push)
        router.add("DELETE", "/images/{name*}", self.remove)
        router.add("POST", "/commit", self.commit)
        router.add("POST", "/auth", self.auth)

    def in_use(self, image_id: str) -> bool:
        """Some container (in any state) uses the image: rmi and prune keep it."""
        return any(c.image_id == image_id for c in self.containers.containers())

    async def list_(self, req: Request) -> Response:
        found = await thread(self.images.list)
        filters = parse_filters(req.qjson("filters"))
        out = [self.images.summary(i) for i in found]
        if filters.get("dangling"):
            dangling = "true" in [w.lower() for w in filters["dangling"]]
            out = [o for o in out if (not o["RepoTags"] or o["RepoTags"] == ["<none>:<none>"]) == dangling]
        if filters.get("reference"):
            import fnmatch

            refs = filters["reference"]

            def matching(names: list[str] | None) -> list[str]:
                return [t for t in names or [] if any(fnmatch.fnmatch(t, r) or fnmatch.fnmatch(t, r + ":*")
                                                      or fnmatch.fnmatch(t, r + "@*") for r in refs)]

            # As Docker: only the matching names of each image are listed (`images REPO`).
            out = [{**o, "RepoTags": matching(o["RepoTags"]), "RepoDigests": matching(o.get("RepoDigests"))}
                   for o in out if matching(o["RepoTags"])]
        if filters.get("label"):
            out = [o for o in out if labels_match(o.get("Labels") or {}, values(filters, "label"))]
        return Response.json(out)

    async def inspect(self, req: Request, name: str) -> Response:
        return Response.json(await thread(self.images.inspect, name))

    async def history(self, req: Request, name: str) -> Response:
        return Response.json(await thread(self.images.history, name))

    async def create(self, req: Request) -> Any:
        """`docker pull` (fromImage) or `docker import` (fromSrc=-): both stream JSON progress."""
        from_image, from_src = req.q("fromImage"), req.q("fromSrc")
        tag = req.q("tag") or ""

        if from_src:
            if from_src != "-":
                raise InvalidParameter("only fromSrc=- (the request body) is supported")
            path = await spool(req)
            repo = req.q("repo") or ""
            ref = f"{repo}:{tag}" if repo and tag else repo or None
            changes = req.query.get("changes", [])

            async def produce_import(stream: Any) -> None:
                try:
                    with await thread(open, path, "rb") as f:
                        image = await thread(self.images.import_tar, f, ref, changes, req.q("message") or "")
                finally:
                    os.unlink(path)
                await stream.write(json.dumps({"status": image.id}).encode() + b"\r\n")

            return Response.stream(produce_import, content_type="application/json")

        if not from_image:
            raise InvalidParameter("fromImage or fromSrc is required")
        ref = from_image
        if tag and ":" not in from_image.rsplit("/", 1)[-1] and "@" not in from_image:
            # the docker CLI sends a digest as the tag
            ref = f"{from_image}@{tag}" if tag.startswith("sha256:") else f"{from_image}:{tag}"
        auth = _auth(req)
        # No tag and no digest is how clients ask for every tag (`pull -a`), as Docker reads it.
        pull = self.images.pull if tag or ":" in from_image.rsplit("/", 1)[-1] or "@" in from_image \
            else self.images.pull_all_tags

        async def produce_pull(stream: Any) -> None:
            await with_progress(stream, lambda progress: pull(ref, auth, progress))

        return Response.stream(produce_pull, content_type="application/json")

    async def push(self, req: Request, name: str) -> Any:
        tag = req.q("tag")
        ref = f"{name}:{tag}" if tag else name
        auth = _auth(req)

        async def produce(stream: Any) -> None:
            await with_progress(stream, lambda progress: self.images.push(ref, auth, progress))

        return Response.stream(produce, content_type="application/json")

    async def load(self, req: Request) -> Any:
        path = await spool(req)

        async def produce(stream: Any) -> None:
            try:
                with await thread(open, path, "rb") as f:
                    loaded = await thread(self.images.load, f)
            finally:
                os.unlink(path)
            for ref in loaded:
                text = f"Loaded image: {ref}\n" if not ref.startswith("sha256:") else f"Loaded image ID: {ref}\n"
                await stream.write(json.dumps({"stream": text}).encode() + b"\r\n")

        return Response.stream(produce, content_type="application/json")

    async def save(self, req: Request, name: str | None = None) -> Any:
        refs = [name] if name else req.query.get("names", [])
        if not refs:
            raise InvalidParameter("no image names given")
        for ref in refs:
            await thread(self.images.resolve, ref)

        async def produce(stream: Any) -> None:
            loop = asyncio.get_running_loop()
            rfd, wfd = os.pipe()
            reader = os.fdopen(rfd, "rb")
            writer = os.fdopen(wfd, "wb")

            def write_all() -> None:
                try:
                    self.images.save(refs, writer)
                finally:
                    writer.close()

            task = loop.run_in_executor(None, write_all)
            while chunk := await thread(reader.read, 1 << 20):
                await stream.write(chunk)
            reader.close()
            await task

        return Response.stream(produce, content_type="application/x-tar")

    async def tag(self, req: Request, name: str) -> Response:
        repo = req.q("repo")
        if not repo:
            raise InvalidParameter("repository name is required")
        await thread(self.images.tag, name, repo, req.q("tag") or "latest")
        return Response.empty(201)

    async def remove(self, req: Request, name: str) -> Response:
        return Response.json(await thread(self.images.remove, name, req.qbool("force"), self.in_use))

    async def prune(self, req: Request) -> Response:
        filters = parse_filters(req.qjson("filters"))
        dangling = filters.get("dangling")
        only_dangling = True
        if dangling:
            only_dangling = "false" not in [v.lower() for v in dangling]
        return Response.json(await thread(self.images.prune, only_dangling, self.in_use))

    async def commit(self, req: Request) -> Response:
        container = req.q("container")
        c = self.containers.container(container or "")
        body = req.json() if req.body else {}
        repo, tag_ = req.q("repo"), req.q("tag") or "latest"
        image = await thread(self.containers.commit, c.id, pause=req.qbool("pause", True),
                             repo_tag=f"{repo}:{tag_}" if repo else None, changes=req.query.get("changes", []),
                             comment=req.q("comment") or "", author=req.q("author") or "", config=body or None)
        return Response.json({"Id": image.id}, status=201)

    async def distribution_info(self, req: Request, name: str) -> Response:
        return Response.json(await thread(self.images.describe, name, _auth(req)))

    async def search(self, req: Request) -> Response:
        term = req.q("term")
        if not term:
            raise InvalidParameter("term is required")
        try:
            limit = int(req.q("limit") or 25)
        except ValueError:
            raise InvalidParameter("limit must be a number") from None
        return Response.json(await thread(self.images.search, term, limit, _auth(req),
                                          parse_filters(req.qjson("filters"))))

    async def auth(self, req: Request) -> Response:
        body = req.json()
        await thread(self.images.login, body)
        return Response.json({"Status": "Login Succeeded", "IdentityToken": ""})
