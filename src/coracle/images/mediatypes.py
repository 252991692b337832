"""Media types and annotations of Docker and OCI images, and platform choice."""

from __future__ import annotations

from typing import Any

from coracle.errors import NotFound

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

MANIFESTS = (DOCKER_MANIFEST, OCI_MANIFEST)
INDEXES = (DOCKER_LIST, OCI_INDEX)

CONTAINERD_NAME = "io.containerd.image.name"
OCI_REF_NAME = "org.opencontainers.image.ref.name"

ARCH, OS = "amd64", "linux"


def choose_platform(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    """The linux/amd64 entry of an image index (attestation manifests are skipped)."""
    for descriptor in manifests:
        platform = descriptor.get("platform") or {}
        if platform.get("os") == OS and platform.get("architecture") == ARCH:
            return descriptor
    found = sorted({f"{(d.get('platform') or {}).get('os')}/{(d.get('platform') or {}).get('architecture')}"
                    for d in manifests})
    raise NotFound(f"no matching manifest for {OS}/{ARCH} in the manifest list entries (has: {', '.join(found)})")
