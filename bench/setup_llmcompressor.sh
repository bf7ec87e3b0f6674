#!/usr/bin/env bash
# The peer for bench/oneshot_vs_llmcompressor.py: llmcompressor 0.14.0 in its own venv (.venv-llmc), since it
# pins transformers <= 5.17 while compress runs on 5.23. torch is pinned first, so pip never pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv-llmc/bin/python ]; then
  "$PYTHON" -m venv .venv-llmc
fi
.venv-llmc/bin/pip install -q --upgrade pip
.venv-llmc/bin/pip install -q torch==2.13.0
.venv-llmc/bin/pip install -q llmcompressor==0.14.0 torch==2.13.0
.venv-llmc/bin/python -c "import llmcompressor, transformers; print('llmcompressor', llmcompressor.__version__, 'transformers', transformers.__version__)"
