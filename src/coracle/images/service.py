"""The image service: the content store plus what moves images in and out of it.

Why a module of its own: pulling, pushing, loading and saving need the store,
and the store needs none of them; kept apart, the store imports neither
distribution.py nor save_load.py and no import cycle runs through it.
"""

from __future__ import annotations

from typing import Any, BinaryIO
from collections.abc import Callable

from coracle.images import distribution, save_load
from coracle.images.content import Image, ImageStore
from coracle.images.reference import try_parse
from coracle.images.registry import Credentials, Registry


class ImageService(ImageStore):
    """What the daemon and the API use: the store, registries, and image archives."""

    def load(self, fileobj: BinaryIO) -> list[str]:
        """`docker load`: a docker-archive or OCI layout tar (optionally compressed)."""
        loaded = save_load.load(self, fileobj)
        for ref in loaded:
            self.announce("load", self.resolve(ref))
        return loaded

    def save(self, refs: list[str], fileobj: BinaryIO) -> None:
        """`docker save`: one tar that is both a docker-archive and an OCI layout."""
        save_load.save(self, refs, fileobj)
        for ref in refs:
            self.announce("save", self.resolve(ref))

    # ----- registries ------------------------------------------------------

    def pull(self, ref: str, auth: dict | None = None,
             progress: Callable[[dict[str, Any]], None] | None = None) -> Image:
        """`docker pull` from a v2 registry; progress gets Docker's JSON progress messages."""
        image = distribution.pull(self, ref, auth, progress, self.insecure)
        self._announce_pull(image, ref)
        return image

    def _announce_pull(self, image: Image, ref: str, all_tags: bool = False) -> None:
        """Docker's pull event: the reference pulled as the actor (`busybox:latest`, `name@sha256:…`, the
        bare repository for `pull -a`), not the image ID; the image's labels and the repository as
        attributes (moby's distribution.Pull logs FamiliarString(ref) with FamiliarName)."""
        parsed = try_parse(ref)
        name = parsed.name if parsed else ref
        actor = name if all_tags or parsed is None else parsed.canonical
        if self.events is not None:
            labels = (image.config or {}).get("Labels") or {}
            self.events.publish("image", "pull", actor, {**labels, "name": name})

    def pull_all_tags(self, name: str, auth: dict | None = None,
                      progress: Callable[[dict[str, Any]], None] | None = None) -> Image:
        """`docker pull -a`: every tag of the repository; returns the last image pulled."""
        image = distribution.pull_all_tags(self, name, auth, progress, self.insecure)[-1]
        self._announce_pull(image, name, all_tags=True)
        return image

    def describe(self, ref: str, auth: dict | None = None) -> dict[str, Any]:
        """GET /distribution/{name}/json."""
        return distribution.describe(ref, auth, self.insecure)

    def search(self, term: str, limit: int = 25, auth: dict | None = None,
               filters: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
        """GET /images/search."""
        return distribution.search(term, limit, auth, self.insecure, filters)

    def push(self, ref: str, auth: dict | None = None,
             progress: Callable[[dict[str, Any]], None] | None = None) -> str:
        """`docker push`; returns the manifest digest."""
        return distribution.push(self, ref, auth, progress, self.insecure)

    def login(self, body: dict[str, Any]) -> None:
        """POST /auth: check the credentials against the registry (nothing is stored)."""
        server = (body.get("serveraddress") or "docker.io").removeprefix("https://").removeprefix("http://")
        server = server.split("/")[0]
        host = "docker.io" if server in ("index.docker.io", "registry-1.docker.io") else server
        Registry(host, Credentials.from_auth(body), insecure=host in self.insecure).ping()
