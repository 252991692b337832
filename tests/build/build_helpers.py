"""Helpers shared by the build tests (a module of its own: every test directory has a conftest)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from collections.abc import Callable

Docker = Callable[..., subprocess.CompletedProcess]


def write(root: Path, files: dict[str, str]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return root
