"""`docker pull` and `docker push` over the distribution API.

Pull: manifest (Docker schema 2 or OCI; an index or manifest list is narrowed
to linux/amd64), config, then the layers in parallel threads. Every blob is
streamed into the blob store under a temporary name and renamed only once its
digest matched; each layer is unpacked and checked against its diff id before
its directory gets its final name; the image record comes last. So a pull that
dies half-way leaves nothing that a later pull or run would trust wrongly, and
the next pull reuses whatever complete blobs and layers it finds.

Progress is reported in Docker's JSON message shapes so the docker CLI draws
its own progress bars.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, BinaryIO
from collections.abc import Callable

from coracle.errors import InvalidParameter, NotFound
from coracle.faults import fault
from coracle.images import mediatypes as mt
from coracle.images.blobs import DigestMismatch, digest_of, hex_of
from coracle.images.layers import SizeBudget
from coracle.images.reference import Reference, parse
from coracle.images.registry import (RETRIES, Credentials, Interrupted, Registry, RegistryUnavailable,
                                     pull_scope, push_scope)

if TYPE_CHECKING:
    from coracle.images.content import Image, ImageStore

Progress = Callable[[dict[str, Any]], None]
PARALLEL = 3
MANIFEST_ACCEPT = ", ".join([mt.OCI_INDEX, mt.DOCKER_LIST, mt.OCI_MANIFEST, mt.DOCKER_MANIFEST])
MANIFEST_LIMIT = 4 << 20
REPORT_EVERY = 512 << 10
PAGE = 1000  # entries per page of tag lists and catalogs (the registry's usual maximum)


class _Reporter:
    """Serialises progress callbacks from several threads and thins out byte counts."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.lock = threading.Lock()

    def __call__(self, status: str, id_: str | None = None, current: int | None = None,
                 total: int | None = None, **extra: Any) -> None:
        if self.progress is None:
            return
        msg: dict[str, Any] = {"status": status, **extra}
        if id_ is not None:
            detail = {"current": current, "total": total} if current is not None else {}
            msg.update(progressDetail={k: v for k, v in detail.items() if v is not None}, id=id_)
        with self.lock:
            self.progress(msg)


def _short(digest: str) -> str:
    return hex_of(digest)[:12]


def fetch_manifest(reg: Registry, ref: Reference, reference: str) -> tuple[bytes, str, str]:
    """A manifest or index by tag or digest: (its bytes, media type, digest), checked against a digest asked for."""
    resp = reg.request("GET", f"/v2/{ref.repository}/manifests/{reference}", pull_scope(ref.repository),
                       headers={"Accept": MANIFEST_ACCEPT})
    body = resp.read()
    if len(body) > MANIFEST_LIMIT:
        raise InvalidParameter(f"the manifest of {ref.name} is implausibly large")
    digest = digest_of(body)
    if reference.startswith("sha256:") and digest != reference:
        raise DigestMismatch(f"manifest {reference} of {ref.name} does not match its digest ({digest})")
    media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
    try:
        parsed = json.loads(body)
    except ValueError:
        raise InvalidParameter(f"the manifest of {ref.name} is not JSON") from None
    media_type = parsed.get("mediaType") or media_type
    return body, media_type, digest


def pull(store: ImageStore, text: str, auth: dict | None, progress: Progress | None,
         insecure: frozenset[str] = frozenset()) -> Image:
    ref = parse(text)
    if not ref.tag and not ref.digest:
        ref = ref.with_tag("latest")
    report = _Reporter(progress)
    reg = Registry(ref.registry, Credentials.from_auth(auth), insecure=ref.registry in insecure)
    report(f"Pulling from {ref.repository}", ref.tag or ref.digest)
    try:
        body, media_type, top_digest = fetch_manifest(reg, ref, ref.digest or ref.tag or "latest")
    except NotFound:
        raise NotFound(f"manifest for {ref.canonical} not found: manifest unknown") from None
    manifest = json.loads(body)
    if media_type in mt.INDEXES or "manifests" in manifest:
        chosen = mt.choose_platform(manifest.get("manifests") or [])
        body, media_type, _ = fetch_manifest(reg, ref, chosen["digest"])
        manifest = json.loads(body)
    if media_type not in mt.MANIFESTS and manifest.get("schemaVersion") != 2:
        raise InvalidParameter(f"{ref.canonical}: manifest type {media_type or 'schema 1'} is not supported")
    scope = pull_scope(ref.repository)
    with store.assembling() as budget:
        config = fetch_blob(reg, ref.repository, manifest["config"]["digest"], scope)
        try:
            diff_ids = json.loads(config)["rootfs"]["diff_ids"]
        except (ValueError, KeyError, TypeError):
            raise InvalidParameter(f"{ref.canonical}: the image config has no rootfs.diff_ids") from None
        layers = manifest.get("layers") or []
        if len(layers) != len(diff_ids):
            raise InvalidParameter(f"{ref.canonical}: {len(layers)} layers for {len(diff_ids)} diff ids")
        up_to_date = store.tag_target(ref.tagged) == digest_of(config) if ref.tag else False
        for layer in layers:
            report("Pulling fs layer", _short(layer["digest"]))
        abort = threading.Event()
        _parallel([functools.partial(_pull_layer, store, reg, ref.repository, scope, layer, diff_id, report, abort,
                                     budget)
                   for layer, diff_id in zip(layers, diff_ids, strict=False)], abort)
        image = store.add_image(config, [ref.tagged] if ref.tag else [],
                                repo_digests=[f"{ref.name}@{top_digest}"])
    report(f"Digest: {top_digest}")
    report(f"Status: {'Image is up to date' if up_to_date else 'Downloaded newer image'} for {ref.canonical}")
    return image


def pull_all_tags(store: ImageStore, text: str, auth: dict | None, progress: Progress | None,
                  insecure: frozenset[str] = frozenset()) -> list[Image]:
    """`docker pull -a NAME`: every tag the registry lists for the repository."""
    ref = parse(text)
    if ref.tag or ref.digest:
        raise InvalidParameter("tag can't be used with --all-tags/-a")
    reg = Registry(ref.registry, Credentials.from_auth(auth), insecure=ref.registry in insecure)
    tags = list_tags(reg, ref)
    if not tags:
        raise NotFound(f"repository {ref.name} has no tags")
    return [pull(store, f"{ref.name}:{tag}", auth, progress, insecure) for tag in tags]


def list_tags(reg: Registry, ref: Reference) -> list[str]:
    """The repository's tags."""
    try:
        return sorted(set(_paged(reg, f"/v2/{ref.repository}/tags/list", pull_scope(ref.repository), "tags")))
    except NotFound:
        raise NotFound(f"repository {ref.name} not found: does not exist or no pull access") from None


def _paged(reg: Registry, path: str, scope: str, key: str) -> list[str]:
    """A list the registry hands out in pages (Link: <next>; rel="next"), concatenated."""
    items: list[str] = []
    url: str | None = f"{path}?n={PAGE}"
    while url:
        resp = reg.request("GET", url, scope)
        try:
            items += json.loads(resp.read()).get(key) or []
        except (ValueError, AttributeError):
            raise InvalidParameter(f"the registry's answer to {path} is not a JSON list of {key}") from None
        link = resp.headers.get("Link", "")
        url = link.split(";")[0].strip().strip("<>") if 'rel="next"' in link else None
    return items


def describe(text: str, auth: dict | None, insecure: frozenset[str] = frozenset()) -> dict[str, Any]:
    """GET /distribution/{name}/json: the manifest's descriptor and the platforms it offers."""
    ref = parse(text)
    if not ref.tag and not ref.digest:
        ref = ref.with_tag("latest")
    reg = Registry(ref.registry, Credentials.from_auth(auth), insecure=ref.registry in insecure)
    try:
        body, media_type, digest = fetch_manifest(reg, ref, ref.digest or ref.tag or "latest")
    except NotFound:
        raise NotFound(f"manifest for {ref.canonical} not found: manifest unknown") from None
    manifest = json.loads(body)
    if "manifests" in manifest:
        platforms = [m.get("platform") or {} for m in manifest["manifests"]]
    else:
        config = json.loads(fetch_blob(reg, ref.repository, manifest["config"]["digest"],
                                         pull_scope(ref.repository)))
        platforms = [{k: config[k] for k in ("architecture", "os", "variant") if config.get(k)}]
    return {"Descriptor": {"mediaType": media_type, "digest": digest, "size": len(body)},
            "Platforms": [{"architecture": p.get("architecture", ""), "os": p.get("os", ""),
                           **({"variant": p["variant"]} if p.get("variant") else {})} for p in platforms]}


def search(term: str, limit: int, auth: dict | None, insecure: frozenset[str] = frozenset(),
           filters: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    """`docker search`: on a named registry, the repositories of its catalog that contain the term,
    kept when they pass the filters (is-official, is-automated, stars: checked first, as Docker does).

    Docker Hub's search index lives outside the distribution API; without a
    registry in the term there is no index this daemon can reach, and the
    error says how to search a registry instead.
    """
    keep = _search_filter(filters or {})
    if "/" not in term or not _looks_like_host(term.split("/", 1)[0]):
        raise RegistryUnavailable(
            f"cannot search {term!r}: no search index is reachable from this daemon "
            "(name a registry to search its catalog, e.g. localhost:5000/NAME)")
    host, _, word = term.partition("/")
    reg = Registry(host, Credentials.from_auth(auth), insecure=host in insecure)
    try:
        catalog = _paged(reg, "/v2/_catalog", "registry:catalog:*", "repositories")
    except NotFound:
        raise RegistryUnavailable(f"registry {host} offers no catalog to search") from None
    names = [r for r in catalog if word.lower() in r.lower()]
    found = [{"name": f"{host}/{r}", "description": "", "star_count": 0, "is_official": False,
              "is_automated": False} for r in sorted(names)]
    return [r for r in found if keep(r)][:limit or 25]


def _search_filter(filters: dict[str, list[str]]) -> Callable[[dict[str, Any]], bool]:
    """Docker's search filters as a predicate; unknown keys and bad values are refused."""
    for key in filters:
        if key not in ("is-automated", "is-official", "stars"):
            raise InvalidParameter(f"invalid filter '{key}'")
    wanted: dict[str, bool] = {}
    for key in ("is-automated", "is-official"):
        for value in filters.get(key, []):
            if value.lower() not in ("true", "1", "false", "0"):
                raise InvalidParameter(f"invalid filter '{key}={value}'")
            wanted[key.replace("-", "_")] = value.lower() in ("true", "1")
    stars = 0
    for value in filters.get("stars", []):
        try:
            stars = max(stars, int(value))
        except ValueError:
            raise InvalidParameter(f"invalid filter 'stars={value}'") from None
    return lambda r: all(r[k] == v for k, v in wanted.items()) and r["star_count"] >= stars


def _looks_like_host(part: str) -> bool:
    return "." in part or ":" in part or part == "localhost"


def _parallel(jobs: list[Callable[[], None]], abort: threading.Event) -> None:
    """Run jobs on a few threads; the first failure stops the others and is raised."""
    if not jobs:
        return
    with ThreadPoolExecutor(max_workers=min(PARALLEL, len(jobs))) as pool:
        futures = [pool.submit(job) for job in jobs]
        error: BaseException | None = None
        for future in futures:
            try:
                future.result()
            except BaseException as exc:  # noqa: BLE001 - re-raised below, after the others stop
                abort.set()
                error = error or exc
    if error is not None:
        raise error


def fetch_blob(reg: Registry, repository: str, digest: str, scope: str) -> bytes:
    """A small blob (an image config) in memory, checked against its digest."""
    data = reg.request("GET", f"/v2/{repository}/blobs/{digest}", scope).read()
    if digest_of(data) != digest:
        raise DigestMismatch(f"blob {digest} from {reg.host} does not match its digest")
    return data


def _pull_layer(store: ImageStore, reg: Registry, repository: str, scope: str, layer: dict[str, Any],
                diff_id: str, report: _Reporter, abort: threading.Event, budget: SizeBudget) -> None:
    digest, total = layer["digest"], layer.get("size")
    short = _short(digest)
    if store.has_layer(diff_id):
        report("Already exists", short)
        return
    if "zstd" in layer.get("mediaType", ""):
        raise InvalidParameter(f"layer {digest} is zstd-compressed, which is not supported")
    if not store.blobs.has(digest):
        _download(store, reg, f"/v2/{repository}/blobs/{digest}", scope, digest, total, short, report, abort)
    fault("pull-after-blob")
    report("Download complete", short)
    report("Extracting", short)
    with store.blobs.open(digest) as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    store.add_layer(diff_id, digest, compressed=gzipped, budget=budget)
    report("Pull complete", short)


def _download(store: ImageStore, reg: Registry, path: str, scope: str, digest: str, total: int | None,
              short: str, report: _Reporter, abort: threading.Event) -> None:
    for attempt in range(RETRIES):
        done = [0, 0]  # bytes so far, bytes at the last report

        def counted(n: int, done: list[int] = done) -> None:
            if abort.is_set():
                raise Interrupted("pull cancelled")
            done[0] += n
            if done[0] - done[1] >= REPORT_EVERY or done[0] == total:
                done[1] = done[0]
                report("Downloading", short, done[0], total)

        try:
            resp = reg.request("GET", path, scope)
            store.blobs.write(resp.chunks(), expected=digest, on_chunk=counted)
            report("Verifying Checksum", short)
            return
        except Interrupted:
            if abort.is_set() or attempt + 1 == RETRIES:
                raise
            report("Retrying", short)
            time.sleep(0.2 * 2 ** attempt)


# ----- push -------------------------------------------------------------


class _Counting:
    """A file reader that reports upload progress and closes the file at its end."""

    def __init__(self, f: BinaryIO, on_read: Callable[[int], None]) -> None:
        self.f, self.on_read = f, on_read

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        if data:
            self.on_read(len(data))
        else:
            self.f.close()
        return data


def push(store: ImageStore, text: str, auth: dict | None, progress: Progress | None,
         insecure: frozenset[str] = frozenset()) -> str:
    """Push name[:tag]; returns the manifest digest (also recorded as a RepoDigest)."""
    ref = parse(text)
    if ref.digest:
        raise InvalidParameter("cannot push a digest reference; push a tag")
    ref = ref.with_tag(ref.tag or "latest")
    try:
        image = store.resolve(ref.tagged)
    except NotFound:
        raise NotFound(f"An image does not exist locally with the tag: {ref.name}") from None
    report = _Reporter(progress)
    reg = Registry(ref.registry, Credentials.from_auth(auth), insecure=ref.registry in insecure)
    scope = push_scope(ref.repository)
    report(f"The push refers to repository [{ref.registry}/{ref.repository}]"
           if ref.registry == "docker.io" else f"The push refers to repository [{ref.name}]")
    with store.assembling():
        blobs = [store.gzip_blob(diff_id) for diff_id in image.layers]
        for digest in blobs:
            report("Preparing", _short(digest))
        abort = threading.Event()
        _parallel([functools.partial(_push_blob, store, reg, ref.repository, scope, digest, report, abort)
                   for digest in blobs], abort)
        _push_blob(store, reg, ref.repository, scope, image.id, None, abort)
        manifest = {
            "schemaVersion": 2, "mediaType": mt.DOCKER_MANIFEST,
            "config": {"mediaType": mt.DOCKER_CONFIG, "size": store.blobs.size(image.id), "digest": image.id},
            "layers": [{"mediaType": mt.DOCKER_LAYER_GZIP, "size": store.blobs.size(d), "digest": d} for d in blobs],
        }
    body = json.dumps(manifest, indent=3).encode()
    reg.request("PUT", f"/v2/{ref.repository}/manifests/{ref.tag}", scope,
                headers={"Content-Type": mt.DOCKER_MANIFEST, "Content-Length": str(len(body))},
                body=body, ok=(200, 201)).read()
    digest = digest_of(body)
    store.add_repo_digest(image.id, f"{ref.name}@{digest}")
    report(f"{ref.tag}: digest: {digest} size: {len(body)}")
    if progress is not None:
        progress({"progressDetail": {}, "aux": {"Tag": ref.tag, "Digest": digest, "Size": len(body)}})
    return digest


def _push_blob(store: ImageStore, reg: Registry, repository: str, scope: str, digest: str,
               report: _Reporter | None, abort: threading.Event) -> None:
    short = _short(digest)
    try:
        reg.request("HEAD", f"/v2/{repository}/blobs/{digest}", scope).close()
        if report:
            report("Layer already exists", short)
        return
    except NotFound:
        pass
    resp = reg.request("POST", f"/v2/{repository}/blobs/uploads/", scope, headers={"Content-Length": "0"},
                       ok=(202,))
    location = resp.headers.get("Location", "")
    resp.read()
    if not location:
        raise InvalidParameter(f"{reg.host} started an upload without a Location")
    size = store.blobs.size(digest)
    sent = [0, 0]

    def on_read(n: int) -> None:
        if abort.is_set():
            raise Interrupted("push cancelled")
        sent[0] += n
        if report and (sent[0] - sent[1] >= REPORT_EVERY or sent[0] == size):
            sent[1] = sent[0]
            report("Pushing", short, sent[0], size)

    url = location + ("&" if "?" in location else "?") + f"digest={digest}"
    reg.request("PUT", url, scope, headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                body=lambda: _Counting(store.blobs.open(digest), on_read), ok=(201, 204)).read()
    if report:
        report("Pushed", short)
