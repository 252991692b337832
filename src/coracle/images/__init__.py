"""Images: a content-addressed store, the built-in busybox, import/load/save, registry pull/push."""

from coracle.images.store import Image, ImageStore

__all__ = ["Image", "ImageStore"]
