"""Images: the content store, the built-in busybox, and the service that imports, loads, saves, pulls and pushes."""

from coracle.images.content import Image, ImageStore
from coracle.images.service import ImageService

__all__ = ["Image", "ImageService", "ImageStore"]
