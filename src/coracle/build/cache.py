"""The build cache: which image a build step made from which parent, kept as its own records.

A step's key is Docker's rule made explicit: the key of the step before it
(so, ultimately, the base image), the instruction as it will appear in the
history (build args a RUN sees are part of that text), and for COPY/ADD the
checksum of the files' contents. A record points to the intermediate image the
step made; intermediate images are not listed as images, and `builder prune`
drops the records and every intermediate image only they kept alive.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from datetime import datetime, UTC
from typing import Any
from collections.abc import Callable

from coracle.disk import usage as disk_usage
from coracle.images.content import ImageStore, now_rfc3339
from coracle.store import Store

KIND = "build-cache"


def step_key(parent: str, created_by: str, extra: str = "") -> str:
    return hashlib.sha256(f"{parent}\n{created_by}\n{extra}".encode()).hexdigest()


class BuildCache:
    def __init__(self, store: Store, images: ImageStore, mounts_dir: str) -> None:
        self.store, self.images = store, images
        self.mounts_dir = mounts_dir  # RUN --mount=type=cache directories, kept between builds

    def lookup(self, key: str) -> str | None:
        """The image a step with this key made before (the caller checks that it still exists).
        A read only: what a hit changes (last use, use count) is written once per build by `used`."""
        doc = self.store.get(KIND, key)
        return str(doc["Image"]) if doc is not None else None

    def used(self, keys: list[str]) -> None:
        """Count the cache hits of one build, in one transaction."""
        if not keys:
            return
        now = now_rfc3339()
        with self.store.tx():
            for key in keys:
                doc = self.store.get(KIND, key)
                if doc is not None:
                    doc["LastUsedAt"] = now
                    doc["UsageCount"] = doc.get("UsageCount", 0) + 1
                    self.store.put(KIND, key, doc)

    def record(self, key: str, image_id: str, parent: str, created_by: str, size: int) -> None:
        now = now_rfc3339()
        self.store.put(KIND, key, {"ID": key, "Image": image_id, "Parent": parent, "Description": created_by,
                                   "Size": size, "CreatedAt": now, "LastUsedAt": now, "UsageCount": 1})

    def mount_dir(self, cache_id: str) -> str:
        """The persistent directory behind `RUN --mount=type=cache,id=...`."""
        path = os.path.join(self.mounts_dir, hashlib.sha256(cache_id.encode()).hexdigest()[:32])
        os.makedirs(path, exist_ok=True)
        return path

    def usage(self) -> list[dict[str, Any]]:
        """Docker's BuildCache entries for GET /system/df."""
        out = [{"ID": d["ID"][:25], "Parent": d["Parent"], "Type": "regular", "Description": d["Description"],
                "InUse": False, "Shared": False, "Size": d.get("Size", 0), "CreatedAt": d["CreatedAt"],
                "LastUsedAt": d.get("LastUsedAt"), "UsageCount": d.get("UsageCount", 0)}
               for d in self.store.all(KIND)]
        for name in sorted(os.listdir(self.mounts_dir)) if os.path.isdir(self.mounts_dir) else []:
            path = os.path.join(self.mounts_dir, name)
            stamp = datetime.fromtimestamp(os.stat(path).st_mtime, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            out.append({"ID": name[:25], "Parent": "", "Type": "exec.cachemount", "Description": "cache mount",
                        "InUse": False, "Shared": False, "Size": disk_usage(path), "CreatedAt": stamp,
                        "LastUsedAt": stamp, "UsageCount": 1})
        return out

    def prune(self, in_use: Callable[[str], bool]) -> dict[str, Any]:
        """POST /build/prune: every cache record and cache mount; the intermediate images only they kept."""
        entries = self.usage()
        docs = self.store.all(KIND)
        for doc in docs:
            self.store.delete(KIND, doc["ID"])
        self.images.forget_intermediates([d["Image"] for d in docs], in_use)
        if os.path.isdir(self.mounts_dir):
            for name in os.listdir(self.mounts_dir):
                shutil.rmtree(os.path.join(self.mounts_dir, name), ignore_errors=True)
        return {"CachesDeleted": [e["ID"] for e in entries] or None,
                "SpaceReclaimed": sum(e["Size"] for e in entries)}
