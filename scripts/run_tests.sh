#!/usr/bin/env bash
# The project's test command: builds a Python 3.12 virtual environment in .venv (once), installs
# the project with its test extra into it, and runs the default suite (CPU, no slow tests).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "$(scripts/find_python312.sh)" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test,plot]"
exec .venv/bin/python -m pytest -m "not slow and not gpu" -n 2 "$@"
