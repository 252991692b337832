"""The image content store: content-addressed blobs, unpacked layers, tags in SQLite.

What moves images in and out of it (registries, `docker load`/`save`) is the
image service (images/service.py) built on it; this module imports neither.

On disk (under `<data-root>/images`):

    blobs/sha256/<hex>   configs and layer tars (plain or gzip), named by digest
    layers/<diff hex>/   each layer unpacked once, in overlayfs form, shared by
                         every image and container that uses it (read-only lowerdir)
    tmp/                 staging; emptied when the store opens

An unpacked layer depends only on its own tar, so it is keyed by its diff id
(sha256 of the uncompressed tar) rather than by the chain of layers below it.
In SQLite: one `image` document per image id (the parsed config plus what Docker
keeps beside it), one `image-layer` document per diff id (which blob holds it),
and the `image_tags` table (name -> image id; a name has exactly one image).

Order of writes for any new image: blobs, then layers (tmp dir + rename), then
the config blob, then the records in one transaction. A crash at any point
leaves either nothing trusted, or complete verified content nothing points to,
which remove/prune collect.
"""

from __future__ import annotations

import builtins
import json
import os
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, UTC
from pathlib import Path
from typing import Any, BinaryIO
from collections.abc import Callable, Iterable, Iterator

from coracle.errors import Conflict, InvalidParameter, NotFound, SystemError_
from coracle.events import EventBus
from coracle.images import builtin
from coracle.images import mediatypes as mt
from coracle.images.blobs import BlobStore, DigestMismatch, digest_of, gzip_chunks, hex_of, read_chunks
from coracle.images.changes import apply as apply_changes
from coracle.images.layers import HashingReader, SizeBudget, decompressed, pack, unpack
from coracle.images.reference import HEX64, parse, try_parse
from coracle.runtime.fdtree import remove_tree
from coracle.store import Store

IMAGE = "image"
LAYER = "image-layer"
EPOCH = "0001-01-01T00:00:00Z"
DEFAULT_MAX_IMAGE_SIZE = 16 << 30  # unpacked bytes per import, load or pull (coracled --max-image-size)

SCHEMA = """
CREATE TABLE IF NOT EXISTS image_tags (
    name TEXT PRIMARY KEY,
    image_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS image_tags_by_image ON image_tags(image_id);
"""


@dataclass
class Image:
    id: str                 # "sha256:<hex>" of the config blob
    config: dict            # the config's "config" section (Env, Cmd, Entrypoint, ...)
    repo_tags: list[str]
    layers: list[str]       # diff ids, lowest first
    created: str
    size: int
    repo_digests: list[str] = field(default_factory=list)
    parent: str = ""
    raw: dict = field(default_factory=dict)   # the whole config blob, parsed

    @property
    def short_id(self) -> str:
        return self.id.removeprefix("sha256:")[:12]


def unix_time(stamp: str) -> int:
    """RFC 3339 (with up to nanoseconds, as Go writes it) -> unix seconds."""
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)?", stamp or "")
    if not m:
        return 0
    when = datetime.fromisoformat(m.group(1) + ("+00:00" if m.group(2) in (None, "Z") else m.group(2)))
    return max(0, int(when.timestamp()))


def config_bytes(raw: dict[str, Any]) -> bytes:
    return json.dumps(raw, separators=(",", ":"), sort_keys=True).encode()


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ImageStore:
    def __init__(self, root: str | Path, store: Store, insecure_registries: Iterable[str] = (),
                 max_image_size: int = DEFAULT_MAX_IMAGE_SIZE) -> None:
        self.root = Path(root)
        self.events: EventBus | None = None  # where image events go (the daemon's bus)
        self.max_image_size = max_image_size  # unpacked bytes one import, load or pull may produce
        self.insecure = frozenset(insecure_registries)  # spoken to over plain http
        self.store = store
        self.blobs = BlobStore(self.root)
        self.layers_dir = self.root / "layers"
        self.layers_dir.mkdir(parents=True, exist_ok=True)
        self.blobs.clear_temp()
        store.schema(SCHEMA)
        self._lock = threading.RLock()
        self._assembling = 0   # imports/loads/pulls under way: no garbage is collected meanwhile

    # ----- lookup --------------------------------------------------------

    def resolve(self, ref: str) -> Image:
        """An image by name[:tag], name@digest, full id or unique id prefix (as Docker)."""
        if not isinstance(ref, str) or not ref:
            raise InvalidParameter("an image reference is required")
        if ref.startswith("sha256:"):
            found = self._by_id_prefix(ref.removeprefix("sha256:"), ref)
            if found:
                return found
            raise NotFound(f"No such image: {ref}")
        parsed = try_parse(ref)
        if parsed is not None:
            image_id = self.tag_target(parsed.canonical)
            if image_id is None and parsed.digest:
                image_id = self._digest_target(parsed.canonical)
            if image_id is not None:
                return self._image(image_id)
        if re.fullmatch(r"[0-9a-f]{1,64}", ref):
            found = self._by_id_prefix(ref, ref)
            if found:
                return found
        if parsed is not None and not parsed.digest and parsed.tagged == builtin.NAME:
            return self.ensure_builtin()
        raise NotFound(f"No such image: {ref}")

    def _by_id_prefix(self, prefix: str, ref: str) -> Image | None:
        if HEX64.match(prefix):
            doc = self.store.get(IMAGE, "sha256:" + prefix)
            return self._from_doc(doc) if doc else None
        matches = [d for d in self.store.all(IMAGE) if d["Id"].removeprefix("sha256:").startswith(prefix)]
        if len(matches) > 1:
            raise InvalidParameter(f"image id prefix {ref!r} is ambiguous: it matches {len(matches)} images")
        return self._from_doc(matches[0]) if matches else None

    def tag_target(self, name: str) -> str | None:
        rows = self.store.execute("SELECT image_id FROM image_tags WHERE name = ?", (name,))
        return rows[0][0] if rows else None

    def _digest_target(self, name_at_digest: str) -> str | None:
        for doc in self.store.all(IMAGE):
            if name_at_digest in doc.get("RepoDigests", []):
                return doc["Id"]
        return None

    def _tags_of(self, image_id: str) -> list[str]:
        rows = self.store.execute("SELECT name FROM image_tags WHERE image_id = ? ORDER BY name", (image_id,))
        return [r[0] for r in rows]

    def _image(self, image_id: str) -> Image:
        doc = self.store.get(IMAGE, image_id)
        if doc is None:
            raise NotFound(f"No such image: {image_id}")
        return self._from_doc(doc)

    def _from_doc(self, doc: dict[str, Any], tags: list[str] | None = None) -> Image:
        raw = doc["Config"]
        return Image(
            id=doc["Id"], config=raw.get("config") or {},
            repo_tags=self._tags_of(doc["Id"]) if tags is None else tags,
            layers=list((raw.get("rootfs") or {}).get("diff_ids") or []),
            created=raw.get("created") or EPOCH, size=doc.get("Size", 0),
            repo_digests=list(doc.get("RepoDigests", [])), parent=doc.get("Parent", ""), raw=raw,
        )

    def list(self) -> list[Image]:
        tags: dict[str, builtins.list[str]] = {}
        for name, image_id in self.store.execute("SELECT name, image_id FROM image_tags ORDER BY name"):
            tags.setdefault(image_id, []).append(name)
        images = [self._from_doc(d, tags.get(d["Id"], [])) for d in self.store.all(IMAGE)
                  if not d.get("Intermediate") or d["Id"] in tags]
        return sorted(images, key=lambda i: unix_time(i.created), reverse=True)

    # ----- Docker shapes -------------------------------------------------

    def inspect(self, ref: str) -> dict[str, Any]:
        """GET /images/{name}/json."""
        image = self.resolve(ref)
        raw, dirs = image.raw, self.layer_dirs(image)
        config = {
            "Hostname": "", "Domainname": "", "User": "", "AttachStdin": False, "AttachStdout": False,
            "AttachStderr": False, "Tty": False, "OpenStdin": False, "StdinOnce": False,
            "Env": None, "Cmd": None, "Image": "", "Volumes": None, "WorkingDir": "",
            "Entrypoint": None, "OnBuild": None, "Labels": None, **image.config,
        }
        doc = self.store.get(IMAGE, image.id) or {}
        return {
            "Id": image.id, "RepoTags": image.repo_tags, "RepoDigests": image.repo_digests,
            "Parent": image.parent, "Comment": raw.get("comment", ""), "Created": image.created,
            "DockerVersion": raw.get("docker_version", ""), "Author": raw.get("author", ""),
            "Config": config, "Architecture": raw.get("architecture", "amd64"),
            "Variant": raw.get("variant", ""), "Os": raw.get("os", "linux"),
            "Size": image.size, "VirtualSize": image.size,
            "GraphDriver": {"Name": "overlay2", "Data": {
                "LowerDir": ":".join(reversed(dirs[:-1])), "UpperDir": dirs[-1] if dirs else "",
                "MergedDir": "", "WorkDir": ""}},
            "RootFS": {"Type": "layers", "Layers": image.layers},
            "Metadata": {"LastTagTime": doc.get("LastTagTime", EPOCH)},
        }

    def summary(self, image: Image) -> dict[str, Any]:
        """One element of GET /images/json."""
        return {
            "Id": image.id, "ParentId": image.parent, "RepoTags": image.repo_tags,
            "RepoDigests": image.repo_digests, "Created": unix_time(image.created),
            "Size": image.size, "VirtualSize": image.size, "SharedSize": -1,
            "Labels": image.config.get("Labels") or {}, "Containers": -1,
        }

    # ----- the built-in image -------------------------------------------

    def ensure_builtin(self) -> Image:
        """busybox:latest from the host's static busybox (made once, then an ordinary image)."""
        with self._lock:
            image_id = self.tag_target(builtin.NAME)
            if image_id is not None:
                return self._image(image_id)
            data, mtime = builtin.layer_tar()
            diff_id = digest_of(data)
            with self.assembling():
                blob = self.blobs.put(data, diff_id)
                self.add_layer(diff_id, blob, compressed=False)
                return self.add_image(builtin.config_blob(diff_id, mtime), [builtin.NAME])

    # ----- adding content ------------------------------------------------

    @contextmanager
    def assembling(self) -> Iterator[SizeBudget]:
        """Mark an image being assembled: its blobs and layers exist before any record
        points to them, so garbage collection waits until no assembly is under way.

        Yields the operation's unpacking budget. A failed assembly leaves nothing
        behind: what it stored and no image references is collected at once."""
        with self._lock:
            self._assembling += 1
        try:
            yield SizeBudget(self.max_image_size)
        except BaseException:
            with self._lock:
                self._assembling -= 1
            self.collect_garbage()
            raise
        with self._lock:
            self._assembling -= 1

    def ingest_layer(self, f: BinaryIO, blob_digest: str | None = None, diff_id: str | None = None,
                     budget: SizeBudget | None = None) -> str:
        """Store a layer tar (plain or gzip) read from f as a plain blob and unpack it.

        blob_digest is what the bytes of f must hash to, diff_id what the tar inside
        must hash to; either is checked when given. Returns the diff id.
        """
        outer = HashingReader(f)
        tar = decompressed(outer)
        got = self.blobs.write(read_chunks(budget.meter(tar, charge=False) if budget else tar), diff_id)
        outer.drain()
        if blob_digest is not None and outer.digest != blob_digest:
            raise DigestMismatch(f"layer blob digest {outer.digest} does not match the expected {blob_digest}")
        self.add_layer(got, got, compressed=False, budget=budget)
        return got

    def layer_path(self, diff_id: str) -> Path:
        return self.layers_dir / hex_of(diff_id)

    def has_layer(self, diff_id: str) -> bool:
        return self.store.get(LAYER, diff_id) is not None and self.layer_path(diff_id).is_dir()

    def add_layer(self, diff_id: str, blob: str, compressed: bool, budget: SizeBudget | None = None
                  ) -> dict[str, Any]:
        """Record that `blob` holds layer `diff_id` and make sure it is unpacked.

        The blob must already be in the store (verified). Unpacking happens in a
        staging directory that is renamed into place only after the tar's own
        digest matched diff_id.
        """
        doc = self.store.get(LAYER, diff_id)
        final = self.layer_path(diff_id)
        if doc is None or not final.is_dir():
            size = self._unpack_blob(diff_id, blob, final, budget)
            doc = {"DiffID": diff_id, "Blob": blob, "Compressed": compressed, "Size": size,
                   "Gzip": blob if compressed else (doc or {}).get("Gzip")}
            self.store.put(LAYER, diff_id, doc)
        elif compressed and not doc.get("Gzip"):
            doc["Gzip"] = blob
            self.store.put(LAYER, diff_id, doc)
        return doc

    def _unpack_blob(self, diff_id: str, blob: str, final: Path, budget: SizeBudget | None) -> int:
        staging = self.blobs.temp_path("layer")
        staging.mkdir()
        try:
            with self.blobs.open(blob) as f:
                got, size = unpack(f, str(staging), budget)
            if got != diff_id:
                raise InvalidParameter(f"layer content {got} does not match its diff id {diff_id}")
            try:
                os.rename(staging, final)
            except OSError:
                if not final.is_dir():
                    raise
            return size
        finally:
            if staging.exists():
                remove_tree(str(staging), ignore_errors=True)

    def add_image(self, config: bytes, tags: builtins.list[str], repo_digests: builtins.list[str] | None = None,
                  parent: str = "", intermediate: bool = False) -> Image:
        """Register an image whose layers are all present; config is the exact blob bytes.

        An intermediate image is one step of a build: it belongs to the build
        cache, so image listings, `system df` images and `image prune` leave it
        out until a build (or a tag) makes it a final image.
        """
        try:
            raw = json.loads(config)
        except ValueError:
            raise InvalidParameter("the image config is not valid JSON") from None
        if not isinstance(raw, dict):
            raise InvalidParameter("the image config is not a JSON object")
        rootfs = raw.get("rootfs") or {}
        diff_ids = rootfs.get("diff_ids") or []
        if not isinstance(diff_ids, list):
            raise InvalidParameter("the image config's rootfs.diff_ids is not a list")
        size = 0
        for diff_id in diff_ids:
            layer = self.store.get(LAYER, diff_id)
            if layer is None or not self.layer_path(diff_id).is_dir():
                raise SystemError_(f"layer {diff_id} of the image is missing from the store")
            size += layer.get("Size", 0)
        image_id = self.blobs.put(config)
        with self._lock, self.store.tx():
            existing = self.store.get(IMAGE, image_id)
            doc = existing or {"Id": image_id, "RepoDigests": [], "Parent": parent}
            doc["Config"], doc["Size"] = raw, size
            doc["Intermediate"] = (intermediate and not tags
                                   and (existing is None or existing.get("Intermediate", False)))
            for d in repo_digests or []:
                if d not in doc["RepoDigests"]:
                    doc["RepoDigests"].append(d)
            if tags:
                doc["LastTagTime"] = now_rfc3339()
            self.store.put(IMAGE, image_id, doc)
            for name in tags:
                self._set_tag(name, image_id)
        return self._image(image_id)

    def _set_tag(self, name: str, image_id: str) -> None:
        self.store.execute(
            "INSERT INTO image_tags(name, image_id) VALUES (?, ?)"
            " ON CONFLICT(name) DO UPDATE SET image_id = excluded.image_id", (name, image_id))

    # ----- tags and removal ----------------------------------------------

    def tag(self, ref: str, repo: str, tag: str = "latest") -> None:
        image = self.resolve(ref)
        target = parse(f"{repo}:{tag or 'latest'}")
        if target.digest:
            raise InvalidParameter("refusing to create a tag with a digest reference")
        with self._lock, self.store.tx():
            self._set_tag(target.tagged, image.id)
            doc = self.store.get(IMAGE, image.id)
            if doc is not None:
                doc["LastTagTime"] = now_rfc3339()
                doc["Intermediate"] = False
                self.store.put(IMAGE, image.id, doc)
        self.announce("tag", image, target.tagged)

    def announce(self, action: str, image: Image, name: str | None = None) -> None:
        """Docker's image event, wherever the change came from: the image's ID as the actor, the
        name it concerns (the ID itself for untag, delete, import, load and save) and its labels."""
        if self.events is not None:
            labels = (image.config or {}).get("Labels") or {}
            self.events.publish("image", action, image.id, {**labels, "name": name or image.id})

    def remove(self, ref: str, force: bool = False,
               in_use: Callable[[str], bool] | None = None) -> builtins.list[dict[str, str]]:
        """DELETE /images/{name}: untag, and delete the image once nothing names or uses it."""
        with self._lock:
            image = self.resolve(ref)
            parsed = try_parse(ref)
            by_name = None
            if (parsed is not None and not ref.startswith("sha256:")
                    and (parsed.canonical in image.repo_tags or parsed.canonical in image.repo_digests)):
                by_name = parsed.canonical
            names = image.repo_tags + image.repo_digests
            if by_name and [t for t in image.repo_tags if t != by_name]:
                self._untag(image.id, by_name)  # other tags keep the image
                self.announce("untag", image)
                return [{"Untagged": by_name}]
            if not by_name and len(image.repo_tags) > 1 and not force:
                raise Conflict(f"conflict: unable to delete {image.short_id} (must be forced) - "
                               "image is referenced in multiple repositories")
            used = bool(in_use and in_use(image.id))
            if used and not force:
                if by_name:
                    raise Conflict(f'conflict: unable to remove repository reference "{ref}" (must force) - '
                                   f"a container is using its referenced image {image.short_id}")
                raise Conflict(f"conflict: unable to delete {image.short_id} (must be forced) - "
                               "image is being used by a container")
            ordered = [by_name, *[n for n in names if n != by_name]] if by_name else names
            for n in ordered:
                self._untag(image.id, n)
                self.announce("untag", image)
            result = [{"Untagged": n} for n in ordered]
            if used:
                return result  # forced: the names go, the image stays for its containers
            return result + self._delete(image)

    def _untag(self, image_id: str, name: str) -> None:
        with self.store.tx():
            self.store.execute("DELETE FROM image_tags WHERE name = ? AND image_id = ?", (name, image_id))
            doc = self.store.get(IMAGE, image_id)
            if doc is not None and name in doc.get("RepoDigests", []):
                doc["RepoDigests"].remove(name)
                self.store.put(IMAGE, image_id, doc)

    def _delete(self, image: Image) -> builtins.list[dict[str, str]]:
        """Drop the image record, then whatever content nothing references any more."""
        with self.store.tx():
            self.store.delete(IMAGE, image.id)
            self.store.execute("DELETE FROM image_tags WHERE image_id = ?", (image.id,))
        self.announce("delete", image)
        freed = self.collect_garbage()
        return [{"Deleted": image.id}] + [{"Deleted": d} for d in image.layers if d in freed]

    def collect_garbage(self) -> set[str]:
        """Remove layers and blobs no image references; returns the freed layers' diff ids.

        Skipped while an image is being assembled (its content is not referenced
        yet); a later removal or prune catches up.
        """
        doomed: builtins.list[Path] = []
        with self._lock:
            if self._assembling:
                return set()
            docs = self.store.all(IMAGE)
            used = {d for doc in docs for d in (doc["Config"].get("rootfs") or {}).get("diff_ids") or []}
            keep_blobs = {doc["Id"] for doc in docs}
            freed = set()
            for layer in self.store.all(LAYER):
                if layer["DiffID"] in used:
                    keep_blobs.update(b for b in (layer.get("Blob"), layer.get("Gzip")) if b)
                else:
                    self.store.delete(LAYER, layer["DiffID"])
                    freed.add(layer["DiffID"])
            keep_dirs = {hex_of(d) for d in used} | {"empty"}
            for entry in self.layers_dir.iterdir():
                if entry.name.split("-")[0] not in keep_dirs:  # "<hex>-2": a repeated layer's copy
                    doomed.append(self.blobs.temp_path("gone"))
                    os.rename(entry, doomed[-1])  # never half-deleted under a trusted name
            for blob in set(self.blobs.digests()) - keep_blobs:
                self.blobs.delete(blob)
        for path in doomed:
            remove_tree(str(path), ignore_errors=True)
        return freed

    # ----- import, commit, load, save ------------------------------------

    def import_tar(self, fileobj: BinaryIO, repo_tag: str | None = None, changes: builtins.list[str] | None = None,
                   message: str = "") -> Image:
        """`docker import`: a root filesystem tarball (plain or gzip) as a one-layer image."""
        tags = [parse(repo_tag).tagged] if repo_tag else []
        config = apply_changes({}, list(changes or []))
        with self.assembling() as budget:
            diff_id = self.ingest_layer(fileobj, budget=budget)
            created = now_rfc3339()
            raw = {"architecture": mt.ARCH, "os": mt.OS, "created": created, "config": config,
                   "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                   "history": [{"created": created, "comment": message or "Imported from -"}]}
            if message:
                raw["comment"] = message
            image = self.add_image(config_bytes(raw), tags)
        self.announce("import", image)
        return image

    def commit(self, upper_dir: str, base: Image, config: dict[str, Any], repo_tag: str | None = None,
               comment: str = "", author: str = "") -> Image:
        """A container's overlay upper directory as a new top layer over base, with `config`
        (images.changes.commit_config) as the new image's config."""
        tags = [parse(repo_tag).tagged] if repo_tag else []
        with self.assembling():
            diff_id = self.pack_layer(upper_dir)
            created = now_rfc3339()
            raw = {k: v for k, v in base.raw.items() if k not in ("container", "container_config")}
            raw.update(created=created, config=config,
                       rootfs={"type": "layers", "diff_ids": [*base.layers, diff_id]},
                       history=[*(base.raw.get("history") or []),
                                {"created": created, "author": author, "comment": comment, "created_by": ""}])
            raw.update({k: v for k, v in (("author", author), ("comment", comment)) if v})
            return self.add_image(config_bytes(raw), tags, parent=base.id)

    def pack_layer(self, upper_dir: str, skip: Iterable[str] = ()) -> str:
        """A container's overlay upper directory (whiteouts and opaque dirs as OCI
        entries) stored as a layer; returns its diff id. Call inside `assembling()`.
        `skip`: mount points (absolute paths) left out when they are empty."""
        staged = self.blobs.temp_path("commit")
        try:
            with open(staged, "w+b") as f:
                pack(upper_dir, f, frozenset(p.strip("/") for p in skip))
                f.seek(0)
                return self.ingest_layer(f)
        finally:
            staged.unlink(missing_ok=True)

    def forget_intermediates(self, image_ids: Iterable[str], in_use: Callable[[str], bool]) -> None:
        """Drop build-step images that are still intermediate (no tag, not a build's
        result) and that no container uses; then the content nothing references."""
        with self._lock:
            for image_id in image_ids:
                doc = self.store.get(IMAGE, image_id)
                if doc and doc.get("Intermediate") and not self._tags_of(image_id) and not in_use(image_id):
                    self.store.delete(IMAGE, image_id)
            self.collect_garbage()

    def gzip_blob(self, diff_id: str) -> str:
        """The digest of a gzip blob of this layer (what registries are sent), made once."""
        with self.assembling():
            doc = self.store.get(LAYER, diff_id)
            if doc is None:
                raise NotFound(f"layer {diff_id} is not in the store")
            if doc.get("Gzip") and self.blobs.has(doc["Gzip"]):
                return doc["Gzip"]
            with self.blobs.open(doc["Blob"]) as src:
                digest = self.blobs.write(gzip_chunks(src))
            doc["Gzip"] = digest
            self.store.put(LAYER, diff_id, doc)
            return digest

    def add_repo_digest(self, image_id: str, name_at_digest: str) -> None:
        with self._lock, self.store.tx():
            doc = self.store.get(IMAGE, image_id)
            if doc is not None and name_at_digest not in doc["RepoDigests"]:
                doc["RepoDigests"].append(name_at_digest)
                self.store.put(IMAGE, image_id, doc)

    # ----- history, prune, df ----------------------------------------------

    def history(self, ref: str) -> builtins.list[dict[str, Any]]:
        """GET /images/{name}/history: newest first, layer sizes on the steps that made them."""
        image = self.resolve(ref)
        steps = image.raw.get("history") or [{"created": image.created} for _ in image.layers]
        sizes = [(self.store.get(LAYER, d) or {}).get("Size", 0) for d in image.layers]
        out = []
        for step in steps:
            size = 0 if step.get("empty_layer") or not sizes else sizes.pop(0)
            out.append({"Id": "<missing>", "Created": unix_time(step.get("created", "")),
                        "CreatedBy": step.get("created_by", ""), "Tags": None, "Size": size,
                        "Comment": step.get("comment", "")})
        out.reverse()
        if out:
            out[0].update(Id=image.id, Tags=image.repo_tags or None)
        return out

    def prune(self, dangling_only: bool = True, in_use: Callable[[str], bool] | None = None) -> dict[str, Any]:
        """POST /images/prune: untagged images (or, with dangling_only off, every image)
        that no container uses; then any content left unreferenced."""
        deleted: builtins.list[dict[str, str]] = []
        reclaimed = 0
        with self._lock:
            for image in self.list():
                if (dangling_only and image.repo_tags) or (in_use and in_use(image.id)):
                    continue
                before = self._content_size()
                deleted += [{"Untagged": t} for t in image.repo_tags + image.repo_digests]
                with self.store.tx():
                    self.store.delete(IMAGE, image.id)
                    self.store.execute("DELETE FROM image_tags WHERE image_id = ?", (image.id,))
                for _ in image.repo_tags + image.repo_digests:
                    self.announce("untag", image)
                self.announce("delete", image)
                freed = self.collect_garbage()
                deleted += [{"Deleted": image.id}] + [{"Deleted": d} for d in image.layers if d in freed]
                reclaimed += before - self._content_size()
            self.collect_garbage()
        return {"ImagesDeleted": deleted or None, "SpaceReclaimed": max(reclaimed, 0)}

    def _content_size(self) -> int:
        return sum(doc.get("Size", 0) for doc in self.store.all(LAYER))

    def disk_usage(self, containers: Callable[[str], int]) -> dict[str, Any]:
        """For GET /system/df: the images, with how many containers (in any state) use each and
        their SharedSize, and the bytes of all layers.

        As Docker counts it, a layer is shared when more than one listed image has it at the same
        place in its stack (the same chain of layers below it); SharedSize is the sum of those."""
        listed = self.list()
        chains = [[tuple(image.layers[:n + 1]) for n in range(len(image.layers))] for image in listed]
        users: dict[tuple[str, ...], int] = {}
        for image_chains in chains:
            for chain in image_chains:
                users[chain] = users.get(chain, 0) + 1
        sizes = {d: (self.store.get(LAYER, d) or {}).get("Size", 0) for image in listed for d in image.layers}
        images = []
        for image, image_chains in zip(listed, chains, strict=True):
            entry = self.summary(image)
            entry["Containers"] = containers(image.id)
            entry["SharedSize"] = sum(sizes[chain[-1]] for chain in image_chains if users[chain] > 1)
            images.append(entry)
        return {"LayersSize": self._content_size(), "Images": images}

    # ----- for the runtime -----------------------------------------------

    def layer_dirs(self, image: Image) -> builtins.list[str]:
        """Unpacked layer directories, lowest first (overlay lowerdir is their reverse).

        A layer directory that went missing is unpacked again from its blob.
        An image without layers gets one shared empty directory (overlay needs a lowerdir).
        """
        if not image.layers:
            empty = self.layers_dir / "empty"
            empty.mkdir(exist_ok=True)
            return [str(empty)]
        dirs = []
        for n, diff_id in enumerate(image.layers):
            path = self.layer_path(diff_id)
            if not path.is_dir():
                doc = self.store.get(LAYER, diff_id)
                if doc is None or not self.blobs.has(doc["Blob"]):
                    raise SystemError_(f"layer {diff_id} of image {image.short_id} is missing; "
                                       "remove the image and pull or load it again")
                with self._lock:
                    self.add_layer(diff_id, doc["Blob"], doc["Compressed"])
            repeats = image.layers[:n].count(diff_id)
            if repeats:
                path = self._repeated_layer(diff_id, repeats)
            dirs.append(str(path))
        return dirs

    def _repeated_layer(self, diff_id: str, repeats: int) -> Path:
        """A second (third...) unpacked copy of a layer an image holds more than once: overlayfs
        refuses one directory twice in a lowerdir, and layers in between may change the same paths."""
        path = self.layers_dir / f"{hex_of(diff_id)}-{repeats + 1}"
        if not path.is_dir():
            doc = self.store.get(LAYER, diff_id)
            with self._lock:
                # a layer an image lists always has its record
                self._unpack_blob(diff_id, doc["Blob"], path, None)  # type: ignore[index]
        return path

    def open_layer_blob(self, diff_id: str) -> tuple[BinaryIO, dict[str, Any]]:
        doc = self.store.get(LAYER, diff_id)
        if doc is None:
            raise NotFound(f"layer {diff_id} is not in the store")
        return self.blobs.open(doc["Blob"]), doc
