"""Disk usage as Docker reports it (SizeRw, build cache sizes): apparent bytes of the files under a path.

The trees measured here (a container's writable layer above all) belong to
containers, so they are walked by descriptor: a directory swapped for a
symlink while it is measured is never followed out of the tree.
"""

from __future__ import annotations

import os
import stat

from coracle.runtime.fdtree import walk


def usage(path: str) -> int:
    try:
        top = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    try:
        return sum(e.stat.st_size for e in walk(top) if stat.S_ISREG(e.stat.st_mode))
    finally:
        os.close(top)
