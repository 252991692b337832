"""Image builds from a Dockerfile: parser, build context, layer cache and the builder.

The parser (`dockerfile`, `words`) and `.dockerignore` matching (`ignore`) are
pure logic that the native CLI shares; the builder runs every RUN as a
container of this engine.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # the native CLI imports this package (for `ignore`): typing would cost its start
if TYPE_CHECKING:
    from typing import Any


def service(engine: Any, images: Any, root: str) -> tuple[Any, Any]:
    """The daemon's builder and build cache under root; what a killed build left is removed first."""
    from coracle.build.builder import Builder
    from coracle.build.cache import BuildCache

    cache = BuildCache(images.store, images, os.path.join(root, "cache-mounts"))
    builder = Builder(engine, images, cache, os.path.join(root, "work"))
    builder.clean_leftovers()
    return builder, cache
