#!/usr/bin/env bash
# Set up .venv (CPU torch) and run the whole test suite. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export NEMO_GUARDRAILS_NO_USAGE_STATS=1
# The Redis tests start a real redis-server (Debian's package) on loopback.
if ! command -v redis-server >/dev/null; then
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo apt-get update -qq && $sudo apt-get install -y -qq redis-server >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e '.[dev,redis,embeddings,tracing,guardrails-ai,onnx]'
# The benign corpora of scripts/benign_sources.py: data files only, so none of its (heavy) dependencies.
.venv/bin/python -m pip install -q --no-deps inspect-evals==0.26.0
exec .venv/bin/python -m pytest "$@"
