#!/usr/bin/env bash
# Installs what the dashboard's browser test needs, only where it is missing (safe to run again):
# Debian's chromium and chromium-driver, and Playwright for Python (pinned in requirements-dev.txt)
# into the project's .venv when that exists (otherwise `make test` installs it from that file).
# Playwright drives the system chromium; no browser build is ever downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "chromium is missing: run as root, or: apt-get install -y chromium chromium-driver" >&2
    exit 1
  fi
  echo "installing Debian's chromium and chromium-driver for the browser test"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
fi

PY=.venv/bin/python
if [ -x "$PY" ] && ! "$PY" -c "import playwright.sync_api" >/dev/null 2>&1; then
  pin="$(grep -E '^playwright==' requirements-dev.txt)"
  echo "installing $pin into .venv"
  "$PY" -m pip install --quiet "$pin"
fi
