#!/usr/bin/env bash
# Make .venv-build: a clean virtual environment with the latest pip, build and
# uv from the package index, i.e. the frontends users and cibuildwheel run
# (not this machine's own, possibly old, pip). Prints its Python.
#   PY=$(bash scripts/build-env.sh)          # reuse .venv-build if it is there
#   PY=$(bash scripts/build-env.sh --fresh)  # always start from an empty venv
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${PYTHON:-python3}
if [ "${1:-}" = "--fresh" ] || [ ! -x .venv-build/bin/python ]; then
  rm -rf .venv-build
  "$BASE" -m venv .venv-build >&2
  .venv-build/bin/python -m pip install -q --upgrade pip build uv >&2
fi
echo "$PWD/.venv-build/bin/python"
