#!/usr/bin/env bash
# Installs what the browser tests (tests/browser/) need, so that nothing downloads at test
# time: Debian's chromium and the Python playwright driver (its bundled node driver only; the
# tests launch /usr/bin/chromium, so `playwright install` is never run). Idempotent.
set -euo pipefail
PY=${PYTHON:-python3}
PLAYWRIGHT_PIN=${PLAYWRIGHT_PIN:-playwright==1.65.2}

if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update
  $SUDO apt-get install -y --no-install-recommends chromium fonts-dejavu-core
fi

if ! "$PY" -c "import playwright.sync_api" >/dev/null 2>&1; then
  "$PY" -m pip install --quiet --disable-pip-version-check "$PLAYWRIGHT_PIN"
fi

chromium --version
"$PY" -c "import importlib.metadata as m; print('playwright', m.version('playwright'))"
