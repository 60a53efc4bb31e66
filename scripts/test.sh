#!/usr/bin/env bash
# Runs every test: the Rust unit and integration tests, then the official OpenAI Python SDK
# against `quantized demo` (installed into target/sdk-venv on first use).
# Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --all-targets

if ! command -v python3 >/dev/null; then
    echo "python3 not found: skipping the OpenAI SDK check" >&2
    exit 0
fi
venv=target/sdk-venv
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import openai" 2>/dev/null; then
    echo "installing the openai package into $venv ..."
    "$venv/bin/pip" install --quiet --disable-pip-version-check openai
fi
"$venv/bin/python" scripts/sdk_check.py target/debug/quantized
