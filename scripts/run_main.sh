#!/usr/bin/env bash
# The project's main job: builds a Python 3.12 virtual environment in .venv and installs the
# project into it (both only when pyproject.toml changed: scripts/ensure_venv.sh), then answers a
# long-context question with dense and SharePrefill prefill (`sharedsparse-prefill`). With no
# arguments it uses the built-in model and question; arguments go to `sharedsparse-prefill`
# (see `scripts/run_main.sh --help` and docs/usage.md).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure_venv.sh ""
exec .venv/bin/sharedsparse-prefill "$@"
