"""A space reserve on the data root's filesystem.

Why: when a container (or anything else) fills the disk, SQLite cannot append
to its WAL and every state change fails with "database or disk is full" --
including the stop, kill and rm that would remove the cause. The daemon keeps
a preallocated file of RESERVE_BYTES next to the database; the store deletes
it on the first SQLITE_FULL and retries, which gives the next state changes
their room. `refill()` (called periodically) makes it again once the
filesystem has twice that much free, so the reserve is back for the next time.
"""

from __future__ import annotations

import logging
import os
import threading
import contextlib

log = logging.getLogger("coracle.store")

RESERVE_BYTES = 4 << 20


class Reserve:
    def __init__(self, path: str, size: int = RESERVE_BYTES) -> None:
        self.path, self.size = path, size
        self._lock = threading.Lock()

    def held(self) -> bool:
        return os.path.exists(self.path)

    def release(self) -> bool:
        """Give the reserved space back to the filesystem; False if there was none to give."""
        with self._lock:
            try:
                os.unlink(self.path)
                return True
            except FileNotFoundError:
                return False

    def refill(self) -> bool:
        """Make (or keep) the reserve when the filesystem has room for it twice; True if it is held."""
        with self._lock:
            if os.path.exists(self.path):
                return True
            st = os.statvfs(os.path.dirname(self.path))
            if st.f_bavail * st.f_frsize < 2 * self.size:
                return False
            tmp = self.path + ".tmp"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
                try:
                    os.posix_fallocate(fd, 0, self.size)
                finally:
                    os.close(fd)
                os.replace(tmp, self.path)
            except OSError as exc:
                log.warning("cannot make the space reserve %s: %s", self.path, exc)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                return False
            return True
