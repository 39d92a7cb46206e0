#!/usr/bin/env bash
# Install everything, then run the main job end to end against two loopback registries.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
