#!/usr/bin/env bash
# Install splatcast and its test dependencies into ./.venv (CPU torch from the pinned wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e '.[dev]'
# Headless Chromium for the browser-viewer test (Debian package; the test skips without it).
if [ "$(id -u)" = 0 ] && ! command -v chromium >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null \
        || echo "chromium not installed: the browser test will skip" >&2
fi
# redis-server and nginx for the scale-out tests (Debian packages; the tests start their own instances on
# free loopback ports and skip without them). The system services are not used.
if [ "$(id -u)" = 0 ] && ! { command -v redis-server >/dev/null && [ -x /usr/sbin/nginx ]; }; then
    (apt-get update -qq && apt-get install -y -qq redis-server nginx-light) >/dev/null \
        || echo "redis-server or nginx not installed: the scale-out tests will skip" >&2
fi
