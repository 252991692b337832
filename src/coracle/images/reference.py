"""Image references: `busybox`, `busybox:1.36`, `localhost:5000/x:1`, `repo@sha256:...`.

Docker's grammar: the first path component is a registry host when it contains
a `.` or a `:` or is `localhost`; otherwise the image lives on Docker Hub, where
one-component names sit under `library/`. Locally, names are kept in their short
("familiar") form so that `busybox`, `busybox:latest` and
`docker.io/library/busybox:latest` all name the same tag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from coracle.errors import InvalidParameter

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z")
_TAG = re.compile(r"[\w][\w.-]{0,127}\Z")
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}\Z")
_HOST = re.compile(r"(?:[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?\Z")
HEX64 = re.compile(r"[0-9a-f]{64}\Z")


@dataclass(frozen=True)
class Reference:
    registry: str          # "docker.io", "localhost:5000"
    repository: str        # "library/busybox", "x"
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """The familiar repository name: `busybox`, `user/app`, `localhost:5000/x`."""
        if self.registry == DEFAULT_REGISTRY:
            return self.repository.removeprefix("library/")
        return f"{self.registry}/{self.repository}"

    @property
    def tagged(self) -> str:
        """`name:tag`, with `latest` when no tag (nor digest) was given."""
        return f"{self.name}:{self.tag or DEFAULT_TAG}"

    @property
    def canonical(self) -> str:
        """What this reference pins: `name@digest` when it has one, else `name:tag`."""
        return f"{self.name}@{self.digest}" if self.digest else self.tagged

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.registry, self.repository, tag, None)


def parse(ref: str) -> Reference:
    """Parse a reference; InvalidParameter when it cannot be one."""
    text = ref
    digest = None
    if "@" in text:
        text, digest = text.split("@", 1)
        if not _DIGEST.match(digest):
            raise InvalidParameter(f"invalid reference format: {ref!r} has a malformed digest")
    tag = None
    last = text.rsplit("/", 1)[-1]
    if ":" in last:
        text, tag = text.rsplit(":", 1)
        if not _TAG.match(tag):
            raise InvalidParameter(f"invalid reference format: {ref!r} has a malformed tag")
    parts = text.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        registry, path = parts[0], parts[1:]
        if not _HOST.match(registry):
            raise InvalidParameter(f"invalid reference format: {ref!r} has a malformed registry")
    else:
        registry, path = DEFAULT_REGISTRY, parts
    if registry in ("index.docker.io", "registry-1.docker.io"):
        registry = DEFAULT_REGISTRY
    if not path or not all(_COMPONENT.match(p) for p in path):
        if any(c.isupper() for c in text):
            raise InvalidParameter(f"invalid reference format: repository name ({text}) must be lowercase")
        raise InvalidParameter(f"invalid reference format: {ref!r}")
    if registry == DEFAULT_REGISTRY and len(path) == 1:
        path = ["library", *path]
    repository = "/".join(path)
    if len(repository) > 255:
        raise InvalidParameter(f"invalid reference format: repository name {repository!r} is too long")
    return Reference(registry, repository, tag, digest)


def try_parse(ref: str) -> Reference | None:
    try:
        return parse(ref)
    except InvalidParameter:
        return None


def is_loopback_registry(host: str) -> bool:
    """Plain-http registries Docker trusts without configuration: those on this machine."""
    bare = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    bare = bare.strip("[]")
    return bare == "localhost" or bare.startswith("127.") or bare == "::1"
