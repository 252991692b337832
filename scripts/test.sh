#!/bin/bash
# Install everything the tests need, then run them (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh --test
bash scripts/lint.sh  # ruff, then mypy: the tree is clean, and stays so
exec .venv/bin/python -m pytest -q "$@"
