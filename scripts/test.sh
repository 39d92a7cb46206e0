#!/usr/bin/env bash
# The whole test suite: lint, types, then pytest against real loopback registries.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests bench scripts
.venv/bin/mypy
.venv/bin/lint-imports
.venv/bin/pytest -q "$@"
