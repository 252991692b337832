"""Persistent state of the daemon."""

from coracle.store.db import Store

__all__ = ["Store"]
