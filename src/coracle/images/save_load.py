"""`docker load` / `docker save` archives.

Two layouts are read: the docker-archive (manifest.json naming a config and
layer tars, old `<id>/layer.tar` or new `blobs/sha256/<hex>` paths) and the OCI
image layout (oci-layout, index.json, blobs/sha256). What `save` writes is both
at once, as Docker 25+ does, so Docker, Podman, containerd and coracle can all
load it. Every blob read is checked against its digest before it is trusted.
"""

from __future__ import annotations

import io
import json
import posixpath
import shutil
import tarfile
from typing import TYPE_CHECKING, Any, BinaryIO

from coracle.errors import InvalidParameter
from coracle.images import mediatypes as mt
from coracle.images.blobs import DigestMismatch, digest_of, hex_of
from coracle.images.layers import SizeBudget, compression, decompressed
from coracle.images.reference import parse, try_parse

if TYPE_CHECKING:
    from coracle.images.content import Image, ImageStore

OCI_LAYOUT = {"imageLayoutVersion": "1.0.0"}


class _Archive:
    """Random access to the members of a (possibly compressed) tar archive."""

    def __init__(self, f: BinaryIO) -> None:
        try:
            self.tar = tarfile.open(fileobj=f, mode="r:*")  # noqa: SIM115  (read member by member later)
            self.members = {posixpath.normpath(m.name.lstrip("/")): m for m in self.tar.getmembers()}
        except (tarfile.TarError, EOFError) as exc:
            raise InvalidParameter(f"the archive is not a valid tar file: {exc}") from None

    def has(self, name: str) -> bool:
        return posixpath.normpath(name) in self.members

    def open(self, name: str) -> BinaryIO:
        member = self.members.get(posixpath.normpath(name.lstrip("/")))
        if member is None:
            raise InvalidParameter(f"the archive has no {name!r}")
        f = self.tar.extractfile(member)
        if f is None:
            raise InvalidParameter(f"{name!r} in the archive is not a file")
        return f  # type: ignore[return-value]  # a tar member: read-only bytes

    def read(self, name: str, limit: int = 64 << 20) -> bytes:
        data = self.open(name).read(limit + 1)
        if len(data) > limit:
            raise InvalidParameter(f"{name!r} in the archive is too large")
        return data

    def json(self, name: str) -> Any:
        try:
            return json.loads(self.read(name))
        except ValueError:
            raise InvalidParameter(f"{name!r} in the archive is not valid JSON") from None

    def blob(self, digest: str) -> str:
        return f"blobs/sha256/{hex_of(digest)}"


def load(store: ImageStore, f: BinaryIO) -> list[str]:
    """Load every image in the archive; returns `name:tag` for tagged ones, ids for others."""
    with store.assembling() as budget:
        tar = _seekable(store, f, budget)
        try:
            archive = _Archive(tar)
            if archive.has("manifest.json"):
                return _load_docker(store, archive, budget)
            if archive.has("index.json") and archive.has("oci-layout"):
                return _load_oci(store, archive, budget)
            raise InvalidParameter("the archive has neither manifest.json (docker save) nor index.json (OCI layout)")
        finally:
            if tar is not f:
                tar.close()


def _seekable(store: ImageStore, f: BinaryIO, budget: SizeBudget) -> BinaryIO:
    """Random access needs a seekable file: spool a stream (a pipe, a socket) or a compressed
    archive first, uncompressed and within the budget (read through tarfile's own
    decompressors, an archive that expands without end would be decompressed again at
    every seek, and with no bound)."""
    try:
        if f.seekable():
            head = f.read(6)
            f.seek(0)
            if not compression(head):
                return f
    except (AttributeError, OSError):
        pass
    path = store.blobs.temp_path("load")
    out = open(path, "w+b")  # noqa: SIM115  (the seekable copy is returned)
    path.unlink()
    try:
        shutil.copyfileobj(budget.meter(decompressed(f), charge=False), out, 1 << 20)
    except BaseException:
        out.close()
        raise
    out.seek(0)
    return out


def _tags(names: list[str]) -> list[str]:
    tags = []
    for name in names or []:
        ref = try_parse(name)
        if ref is None or ref.digest:
            raise InvalidParameter(f"invalid image name {name!r} in the archive")
        tags.append(ref.tagged)
    return tags


def _load_docker(store: ImageStore, archive: _Archive, budget: SizeBudget) -> list[str]:
    manifest = archive.json("manifest.json")
    if not isinstance(manifest, list):
        raise InvalidParameter("manifest.json is not a list")
    loaded: list[str] = []
    for entry in manifest:
        config = archive.read(entry["Config"])
        diff_ids = _diff_ids(config)
        layers = entry.get("Layers") or []
        if len(layers) != len(diff_ids):
            raise InvalidParameter(f"{entry['Config']}: {len(layers)} layers for {len(diff_ids)} diff ids")
        for path, diff_id in zip(layers, diff_ids, strict=False):
            if not store.has_layer(diff_id):
                store.ingest_layer(archive.open(path), diff_id=diff_id, budget=budget)
        tags = _tags(entry.get("RepoTags") or [])
        image = store.add_image(config, tags)
        loaded.extend(tags or [image.id])
    return loaded


def _diff_ids(config: bytes) -> list[str]:
    try:
        diff_ids = json.loads(config)["rootfs"]["diff_ids"]
    except (ValueError, KeyError, TypeError):
        raise InvalidParameter("an image config in the archive has no rootfs.diff_ids") from None
    if not isinstance(diff_ids, list):
        raise InvalidParameter("an image config's rootfs.diff_ids is not a list")
    return diff_ids


def _verified(archive: _Archive, descriptor: dict[str, Any]) -> bytes:
    data = archive.read(archive.blob(descriptor["digest"]))
    if digest_of(data) != descriptor["digest"]:
        raise DigestMismatch(f"blob {descriptor['digest']} in the archive does not match its digest")
    return data


def _load_oci(store: ImageStore, archive: _Archive, budget: SizeBudget) -> list[str]:
    index = archive.json("index.json")
    loaded: list[str] = []
    for descriptor in index.get("manifests") or []:
        manifest_bytes = _verified(archive, descriptor)
        manifest = json.loads(manifest_bytes)
        if descriptor.get("mediaType") in mt.INDEXES or manifest.get("manifests"):
            chosen = mt.choose_platform(manifest.get("manifests") or [])
            manifest = json.loads(_verified(archive, chosen))
        config = _verified(archive, manifest["config"])
        diff_ids = _diff_ids(config)
        layers = manifest.get("layers") or []
        if len(layers) != len(diff_ids):
            raise InvalidParameter(
                f"manifest {descriptor['digest']}: {len(layers)} layers for {len(diff_ids)} diff ids")
        for layer, diff_id in zip(layers, diff_ids, strict=False):
            if not store.has_layer(diff_id):
                store.ingest_layer(archive.open(archive.blob(layer["digest"])),
                                   blob_digest=layer["digest"], diff_id=diff_id, budget=budget)
        tags = _tags(_oci_names(descriptor.get("annotations") or {}))
        image = store.add_image(config, tags)
        loaded.extend(tags or [image.id])
    return loaded


def _oci_names(annotations: dict[str, str]) -> list[str]:
    """containerd's full name, else ref.name when it is a full reference (not a bare tag)."""
    full = annotations.get(mt.CONTAINERD_NAME)
    if full:
        return [full]
    ref_name = annotations.get(mt.OCI_REF_NAME, "")
    if ref_name and ("/" in ref_name or ":" in ref_name) and try_parse(ref_name):
        return [ref_name]
    return []


def save(store: ImageStore, refs: list[str], out: BinaryIO) -> None:
    """Write the images as a tar that is both a docker-archive and an OCI image layout.

    out may be a pipe: the tar is streamed, each blob read from the store once.
    """
    chosen: dict[str, tuple[Image, list[str]]] = {}
    for ref in refs:
        image = store.resolve(ref)
        tags = chosen.setdefault(image.id, (image, []))[1]
        parsed = try_parse(ref)
        if parsed is not None and not parsed.digest and parsed.tagged in image.repo_tags and parsed.tagged not in tags:
            tags.append(parsed.tagged)
    written: set[str] = set()
    manifest_json: list[dict[str, Any]] = []
    index_manifests: list[dict[str, Any]] = []
    repositories: dict[str, dict[str, str]] = {}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        def put_blob(digest: str) -> None:
            if digest in written:
                return
            written.add(digest)
            path = store.blobs.path(digest)
            info = tarfile.TarInfo(f"blobs/sha256/{hex_of(digest)}")
            info.size, info.mode = path.stat().st_size, 0o444
            with open(path, "rb") as data:
                tf.addfile(info, data)

        def put_bytes(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o444
            tf.addfile(info, io.BytesIO(data))

        def put_json(name: str, value: Any) -> None:
            put_bytes(name, json.dumps(value, separators=(",", ":")).encode())

        for image, tags in chosen.values():
            put_blob(image.id)
            layer_descriptors = []
            for diff_id in image.layers:
                _, layer = store.open_layer_blob(diff_id)
                layer_descriptors.append({
                    "mediaType": mt.OCI_LAYER_GZIP if layer["Compressed"] else mt.OCI_LAYER,
                    "digest": layer["Blob"], "size": store.blobs.size(layer["Blob"])})
                put_blob(layer["Blob"])
            manifest = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                        "config": {"mediaType": mt.OCI_CONFIG, "digest": image.id,
                                   "size": store.blobs.size(image.id)},
                        "layers": layer_descriptors}
            manifest_bytes = json.dumps(manifest, separators=(",", ":")).encode()
            manifest_digest = digest_of(manifest_bytes)
            if manifest_digest not in written:
                written.add(manifest_digest)
                put_bytes(f"blobs/sha256/{hex_of(manifest_digest)}", manifest_bytes)
            descriptor = {"mediaType": mt.OCI_MANIFEST, "digest": manifest_digest, "size": len(manifest_bytes)}
            for tag in tags or [""]:
                annotations = {}
                if tag:
                    named = parse(tag)
                    assert named.tag is not None  # every name in `tags` was made name:tag above
                    annotations = {mt.CONTAINERD_NAME: f"{named.registry}/{named.repository}:{named.tag}",
                                   mt.OCI_REF_NAME: named.tag}
                    top = hex_of(image.layers[-1]) if image.layers else ""
                    repositories.setdefault(named.name, {})[named.tag] = top
                index_manifests.append({**descriptor, **({"annotations": annotations} if annotations else {})})
            manifest_json.append({"Config": f"blobs/sha256/{hex_of(image.id)}", "RepoTags": tags or None,
                                  "Layers": [f"blobs/sha256/{hex_of(d['digest'])}" for d in layer_descriptors]})
        put_json("index.json", {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": index_manifests})
        put_json("manifest.json", manifest_json)
        put_json("oci-layout", OCI_LAYOUT)
        if repositories:
            put_json("repositories", repositories)
