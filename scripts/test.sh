#!/bin/bash
# Install everything the tests need, then run them (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh --test
exec .venv/bin/python -m pytest -q "$@"
