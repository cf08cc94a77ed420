#!/usr/bin/env bash
# The project's test command: builds a Python 3.12 virtual environment in .venv and installs the
# project with its test and plot extras into it (both only when pyproject.toml changed:
# scripts/ensure_venv.sh), then runs the default suite (CPU, no slow tests). Extra arguments go
# to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure_venv.sh test,plot
exec .venv/bin/python -m pytest -m "not slow and not gpu" -n 2 "$@"
