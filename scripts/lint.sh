#!/bin/bash
# Lint and type-check (ruff, then mypy on the targets in pyproject.toml), with
# the pinned tools of .venv:  .venv/bin/pip install -e '.[lint]'
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
.venv/bin/ruff check src tests || status=1
.venv/bin/mypy || status=1
exit $status
