#!/usr/bin/env bash
# The project's main job: builds a Python 3.12 virtual environment in .venv (once), installs the
# project into it, and answers a long-context question with dense and SharePrefill prefill
# (scripts/prefill.py). With no arguments it uses the built-in model and question; arguments
# go to scripts/prefill.py (see `scripts/run_main.sh --help` and docs/usage.md).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "$(scripts/find_python312.sh)" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
exec .venv/bin/python scripts/prefill.py "$@"
