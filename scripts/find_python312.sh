#!/usr/bin/env bash
# Prints the path of a Python 3.12 interpreter: `python3.12` on PATH if it runs, else one that
# pyenv installed. Exits 1 when there is none.
set -u
for candidate in python3.12 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 \
                 /usr/local/bin/python3.12 /usr/bin/python3.12; do
  if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1; then
    command -v "$candidate"
    exit 0
  fi
done
echo "no Python 3.12 interpreter found (tried python3.12 on PATH and pyenv's versions)" >&2
exit 1
