#!/usr/bin/env bash
# Set up .venv with railstack installed (non-editable) and serve configs/ on port ${PORT:-8080}.
# The main model is any OpenAI-compatible endpoint: MAIN_MODEL_BASE_URL (default
# http://127.0.0.1:8000/v1, as in the configs; unset and with nothing there, `railstack serve`
# starts its loopback stand-in there, labelled as such). Requests pick a config with
# guardrails.config_id; without one they get ${1:-default}.
set -euo pipefail
cd "$(dirname "$0")/.."
export NEMO_GUARDRAILS_NO_USAGE_STATS=1
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q torch==2.13.0
# The extras the shipped configs need: configs/seed's sentence encoder, configs/guardrails-ai's validators,
# ONNX Runtime for Prompt Guard and the NLI model on a CPU.
.venv/bin/python -m pip install -q '.[embeddings,guardrails-ai,onnx]'
configs=$(.venv/bin/python -c 'import railstack.paths as p; print(p.configs_root())')
# `railstack serve` always puts railstack's HTTP layer in front of NeMo's server.
exec .venv/bin/railstack serve "$configs" --default-config-id "${1:-default}" --port "${PORT:-8080}"
