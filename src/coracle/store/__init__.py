"""Persistent state of the daemon."""

from coracle.store.db import DamagedStore, Store, is_full
from coracle.store.recovery import open_state, snapshot_path
from coracle.store.reserve import Reserve

__all__ = ["DamagedStore", "Reserve", "Store", "is_full", "open_state", "snapshot_path"]
