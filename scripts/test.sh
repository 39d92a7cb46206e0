#!/usr/bin/env bash
# The whole test suite: lint, types, the single-file build, then pytest against real loopback
# registries (tests/test_binary.py runs that file in an empty environment).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests bench scripts
.venv/bin/ruff format --check src tests bench scripts
.venv/bin/mypy
.venv/bin/lint-imports
bash scripts/build-binary.sh
TRANSSHIP_BINARY="$PWD/dist/transship" .venv/bin/pytest -q "$@"
