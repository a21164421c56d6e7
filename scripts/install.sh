#!/usr/bin/env bash
# Install splatcast and its test dependencies into ./.venv (CPU torch from the pinned wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e '.[dev]'
