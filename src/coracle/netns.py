"""Entering a network namespace from one thread: how the daemon configures a
container's (or a test host's) interfaces and opens sockets inside it.

Neutral ground: the network layer, the resolver and the tests use it, and none
of them should depend on the runtime for it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from coracle.runtime.syscalls import CLONE_NEWNET, setns

__all__ = ["netns"]


@contextmanager
def netns(path: str) -> Iterator[None]:
    """Run the block with the calling thread inside the network namespace at `path`.

    Sockets opened inside the block (netlink, DNS) stay bound to that namespace
    after the thread returns to its own, which is how the daemon configures a
    container's interfaces without forking. Network namespaces, unlike mount or
    user namespaces, may be entered by a single thread of a threaded process.
    """
    own = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
    target = os.open(path, os.O_RDONLY)
    try:
        setns(target, CLONE_NEWNET)
        try:
            yield
        finally:
            setns(own, CLONE_NEWNET)
    finally:
        os.close(target)
        os.close(own)
