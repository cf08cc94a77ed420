#!/usr/bin/env bash
# Makes .venv (Python 3.12) hold the project, installed editable with the extras given as the
# first argument ("" for none, "test,plot" for the tests). Installs only when pyproject.toml or
# the extras changed since the last install: a stamp in .venv records what was installed.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
if [ ! -x .venv/bin/python ]; then
  "$(scripts/find_python312.sh)" -m venv .venv
fi
digest="$(.venv/bin/python -c 'import hashlib, sys; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest())')"
stamp=".venv/.sharedsparse-install${extras:+-$extras}"
if [ "$(cat "$stamp" 2>/dev/null)" = "$digest" ]; then
  exit 0
fi
echo "installing the project into .venv (pyproject.toml changed or first run) ..." >&2
# The build backend's notes go to a log, shown only when the install fails.
if ! { .venv/bin/python -m pip install --disable-pip-version-check --upgrade pip &&
       .venv/bin/python -m pip install --disable-pip-version-check -e ".${extras:+[$extras]}"; \
     } > .venv/install.log 2>&1; then
  cat .venv/install.log >&2
  exit 1
fi
# An install with extras holds the plain install too.
echo "$digest" > "$stamp"
echo "$digest" > .venv/.sharedsparse-install
