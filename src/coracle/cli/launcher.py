"""Writes the `coracle` launcher: the CLI's start path without `site`.

Why: `coracle` starts for every command, and a console script made by pip runs
the interpreter with `site`, which scans the virtualenv's site-packages and
executes every `.pth` file in it (an editable install adds one or a finder)
before a line of coracle runs: 10-15 ms of a 40 ms `coracle ps`. The CLI needs
nothing but the standard library and its own package, so the launcher runs the
interpreter with `-I -S` (isolated: no site, no user site, no PYTHON*
variables, no script directory on sys.path) and puts the one directory that
holds the `coracle` package first on sys.path.

Bytecode: `-I` also ignores PYTHONDONTWRITEBYTECODE, so the first run writes
the package's bytecode where it may (scripts/install.sh compiles it ahead of
time as well), whether the install is editable or not.

    python -m coracle.cli.launcher PATH    # scripts/install.sh: PATH = .venv/bin/coracle
"""

from __future__ import annotations

import os
import sys

TEMPLATE = """#!{python} -IS
# coracle's command line, started without site (see coracle/cli/launcher.py); written by
# `python -m coracle.cli.launcher`, so it follows this install's interpreter and package path.
import sys
sys.path.insert(0, {path!r})
from coracle.cli.main import main
main()
"""


def package_root() -> str:
    """The directory holding the `coracle` package (src/ of an editable install, else site-packages)."""
    import coracle

    return os.path.dirname(os.path.dirname(os.path.abspath(coracle.__file__)))


def write(target: str, python: str = sys.executable, root: str | None = None) -> None:
    """Write the launcher at `target` (atomically: a running `coracle` keeps its old file) for the
    package under `root` (default: this one)."""
    text = TEMPLATE.format(python=python, path=root or package_root())
    tmp = f"{target}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o755)
    os.replace(tmp, target)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m coracle.cli.launcher PATH")
    write(sys.argv[1])
