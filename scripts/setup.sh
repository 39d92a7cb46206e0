#!/usr/bin/env bash
# Install what transship and its tests need on a fresh Debian machine: the CNCF registry,
# skopeo, htpasswd (apt) and a .venv with transship and its test tools. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for pkg in docker-registry skopeo apache2-utils binutils; do  # binutils: objdump for the single-file build
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/transship --version >/dev/null
